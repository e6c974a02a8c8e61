"""External stores: where the objects of ``external`` attributes live, one small class per backend.

``open_store(location, folder, account, token)`` turns DataJoint's settings (``external-location``,
``external-account``, ``external-token`` and the schema's folder or bucket) into a ``Store``.

Location syntax
---------------

``file:///abs/path``
    A folder in a (possibly shared) file system.  Objects go to ``/abs/path/<folder>/ab/cd/<hash>``.  The path
    must be absolute; the host part must be empty or ``localhost``; ``%xx`` escapes are decoded; no query.
    ``account`` and ``token`` must not be given.

``s3://HOST[:PORT][/PREFIX][?region=REGION]``  (also spelled ``s3+https://``)
    An S3 service over HTTPS at ``https://HOST[:PORT]``; the bucket is ``<folder>``; object keys are
    ``PREFIX/ab/cd/<hash>`` (no prefix: ``ab/cd/<hash>``).  Example: ``s3://s3.us-east-2.amazonaws.com/lab``.

``s3+http://HOST:PORT[/PREFIX][?region=REGION]``
    The same over plain HTTP, for a local MinIO or moto server.

``s3:///[PREFIX][?region=REGION]``  (empty host)
    boto3's default AWS endpoint, which honours ``AWS_ENDPOINT_URL`` and the region of the AWS configuration.

For S3, ``account`` is the access key id and ``token`` the secret key; when neither is given, boto3's standard
credential chain applies (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles).
Credentials never go into a location (``s3://key:secret@host`` is refused) and never into a message.
``folder`` must be a valid S3 bucket name for S3, and a single path component for files.

Stores are cached per (location, folder, account, credentials, options) and per process, so a process keeps
one boto3 client (and its connection pool) per store however often the store is opened.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path, PureWindowsPath
from urllib.parse import parse_qsl, unquote, urlsplit

from cachetools import LRUCache

from ..errors import StoreError
from .base import MAX_KEY_LENGTH, NAME_KEYS, ObjectInfo, Store, is_valid_key, validate_key, validate_prefix
from .file import FileStore
from .s3 import S3Store, validate_bucket

__all__ = ["Store", "ObjectInfo", "FileStore", "S3Store", "open_store", "parse_location", "validate_key",
           "validate_prefix", "is_valid_key", "validate_bucket", "validate_folder", "clear_store_cache",
           "open_datajoint_store", "datajoint_prefix",
           "MAX_KEY_LENGTH", "configured_store", "store_settings"]

_SCHEMES = {"file": None, "s3": "https", "s3+https": "https", "s3+http": "http"}
_cache: LRUCache = LRUCache(maxsize=64)
_cache_lock = threading.Lock()
_SALT = secrets.token_bytes(16)


class LocationError(StoreError, ValueError):
    """An ``external-location`` (or folder) that can't name a store; the message says what is wrong."""


def validate_folder(folder: object) -> str:
    """A folder of a file store: one non-empty path component, no '..', no NUL."""
    if (not isinstance(folder, str) or not folder or "/" in folder or "\\" in folder or "\0" in folder
            or ".." in folder or folder == "."):
        raise LocationError(f"invalid folder name {repr(folder)[:80]}: a folder is one path component, "
                            "without '/', '\\\\', '..' or NUL")
    return folder


def parse_location(location: str, folder: str) -> dict:
    """Split a location into the constructor arguments of its store (see the module docstring).

    Returns ``{"kind": "file", "root": Path}`` or ``{"kind": "s3", "bucket", "prefix", "endpoint_url",
    "region"}``; raises ``LocationError`` naming the problem (never echoing a credential).
    """
    if not isinstance(location, str) or "://" not in location:
        raise LocationError(f"external location {str(location)[:100]!r} has no scheme: use file:///path, "
                            "s3://host/prefix, s3+http://host:port/prefix or s3:///prefix")
    scheme = location.split("://", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise LocationError(f"unknown scheme {scheme!r} in external location: use file://, s3://, s3+https:// "
                            "or s3+http://")
    try:
        parts = urlsplit(location)
        port = parts.port
    except ValueError as error:
        raise LocationError(f"malformed external location: {error}") from None
    if "@" in parts.netloc:
        raise LocationError("credentials don't belong in external-location: set external-account and "
                            "external-token instead")
    if parts.fragment:
        raise LocationError("external location can't have a '#fragment'")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise LocationError(f"file location names host {parts.netloc!r}: use file:///absolute/path "
                                "(mount a share, then name its local path)")
        if parts.query:
            raise LocationError("a file location takes no '?query'")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise LocationError("a file location needs an absolute path: file:///absolute/path")
        if "\0" in path or "/../" in path + "/" or "/./" in path + "/":
            raise LocationError("a file location's path can't contain NUL, '.' or '..' components")
        return {"kind": "file", "root": Path(os.path.normpath(path)) / validate_folder(folder)}
    # S3
    try:
        bucket = validate_bucket(folder)
    except ValueError as error:
        raise LocationError(str(error)) from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    unknown = set(query) - {"region"}
    if unknown:
        raise LocationError(f"unknown option(s) {', '.join(sorted(unknown))} in S3 location: only ?region=")
    region = query.get("region") or None
    prefix = parts.path.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except ValueError:
            raise LocationError(f"invalid key prefix {prefix[:100]!r} in S3 location: '/'-separated segments "
                                "of [A-Za-z0-9_-]") from None
    if not parts.hostname:
        if scheme != "s3" or port is not None:
            raise LocationError(f"{scheme}:// needs a host; only s3:/// (no host) means the default AWS endpoint")
        endpoint_url = None
    else:
        host = parts.hostname
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        endpoint_url = f"{_SCHEMES[scheme]}://{host}" + (f":{port}" if port is not None else "")
    return {"kind": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": endpoint_url, "region": region}


def open_store(location: str, folder: str, account: str | None = None, token: str | None = None, *,
               timeout: float = 30.0, retries: int = 3, max_concurrency: int = 8) -> Store:
    """The store for a location and a schema's folder (bucket); the same instance per process and arguments."""
    key = (location, folder, _fingerprint(account), _fingerprint(token), float(timeout), int(retries),
           int(max_concurrency), os.getpid())
    with _cache_lock:
        store = _cache.get(key)
    if store is not None:
        return store
    spec = parse_location(location, folder)
    if spec["kind"] == "file":
        if account is not None or token is not None:
            raise LocationError("a file location takes no external-account or external-token")
        store = FileStore(spec["root"])
    else:
        if (account is None) != (token is None):
            raise LocationError("an S3 store needs both external-account (access key id) and external-token "
                                "(secret key), or neither (boto3's credential chain)")
        store = S3Store(spec["bucket"], spec["prefix"], spec["endpoint_url"], spec["region"], account, token,
                        timeout=timeout, retries=retries, max_concurrency=max_concurrency)
    with _cache_lock:
        return _cache.setdefault(key, store)


def store_settings(config, name: str, schema: str | None = None) -> dict:
    """The settings of a configured store; a missing location is an error naming the setting."""
    spec = config.store_spec(name)
    if not spec["location"]:
        key = "external-location" + (f"-{name}" if name else "")
        needed = f" of schema {schema!r}" if schema else ""
        raise StoreError(f"configuration key {key!r} is not set: it is needed to store or read external "
                         f"objects{needed}")
    return spec


def configured_store(config, name: str, folder: str, schema: str | None = None) -> Store:
    """The default ('') or named store of djfs's configuration (``external-location[-<name>]`` …) for a folder
    or bucket; ``schema`` only names who needs it in the error for a missing setting."""
    spec = store_settings(config, name, schema)
    return open_store(spec["location"], folder, spec["account"], spec["token"],
                      timeout=config["store-timeout"], retries=config["store-retries"],
                      max_concurrency=config["transfer-threads"])


def datajoint_prefix(location: str) -> str:
    """The key prefix DataJoint 0.12-0.14 gives an S3 store's ``location``: the path de-rooted (a leading '/' or
    '\\', a Windows drive such as ``C:\\`` dropped) and '/'-separated (``'/dj\\raw'`` -> ``'dj/raw'``)."""
    parts = PureWindowsPath(location).parts
    if location and parts and ("\\" in parts[0] or ":" in parts[0]):
        parts = parts[1:]
    return "/".join(parts)


def open_datajoint_store(spec: dict, *, timeout: float = 30.0, retries: int = 3, max_concurrency: int = 8) -> Store:
    """The store of one of DataJoint's ``stores`` (a spec checked by ``settings.store_spec``), accepting DataJoint's
    object names as keys: ``file`` at ``location`` (relative to the working directory, as in DataJoint); ``s3`` at
    ``http[s]://<endpoint>`` (``secure``), bucket ``bucket``, keys under ``location`` de-rooted."""
    key = ("datajoint", spec["protocol"], spec.get("location"), spec.get("endpoint"), spec.get("bucket"),
           spec.get("secure"), _fingerprint(spec.get("access_key")), _fingerprint(spec.get("secret_key")),
           float(timeout), int(retries), int(max_concurrency), os.getpid())
    if spec["protocol"] == "file":
        key += (os.getcwd(),)
    with _cache_lock:
        store = _cache.get(key)
    if store is not None:
        return store
    if spec["protocol"] == "file":
        root = Path(spec["location"]).absolute()
        if not root.is_dir():
            raise LocationError(f"the location {os.fspath(root)!r} of a DataJoint file store is not a directory")
        store = FileStore(root, keys=NAME_KEYS)
    else:
        if spec.get("proxy_server"):
            raise LocationError("DataJoint's proxy_server is not supported: set HTTPS_PROXY/HTTP_PROXY instead")
        endpoint = spec["endpoint"]
        if "/" in endpoint or "@" in endpoint:
            raise LocationError(f"an S3 endpoint is host:port, not {endpoint[:100]!r}")
        try:
            store = S3Store(spec["bucket"], datajoint_prefix(spec["location"]),
                            f"{'https' if spec.get('secure') else 'http'}://{endpoint}", None,
                            spec["access_key"], spec["secret_key"], timeout=timeout, retries=retries,
                            max_concurrency=max_concurrency, keys=NAME_KEYS)
        except ValueError as error:
            raise LocationError(str(error)) from None
    with _cache_lock:
        return _cache.setdefault(key, store)


def _fingerprint(secret: str | None) -> str | None:
    """Tell credentials apart in the cache's keys without keeping them there (a cache's repr shows its keys)."""
    if secret is None:
        return None
    return hmac.new(_SALT, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def clear_store_cache() -> None:
    """Forget every cached store (tests; after changing credentials)."""
    with _cache_lock:
        _cache.clear()
