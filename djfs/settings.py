"""Configuration, with DataJoint's conventions.

Sources, later ones winning: built-in defaults, a JSON file (``$DJ_CONFIG`` or ``dj_local_conf.json`` in the
working directory), environment variables (``DJ_HOST``, ``DJ_PORT``, ``DJ_USER``, ``DJ_PASS``), then
assignments in Python (``djfs.config['database.host'] = ...``).

Every key is validated when set, so a typo or a bad value fails where it was made, with the key named.
Secrets are masked in every ``repr`` and every message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from .errors import DjfsError

CONFIG_ENV = "DJ_CONFIG"
LOCAL_CONFIG = "dj_local_conf.json"
MASK = "********"

#: store suffix of named stores: ``external-location-raw`` configures the store of ``external-raw``
STORE_NAME = r"[a-z][a-z0-9_]{0,31}"
_STORE_KEY = re.compile(rf"^external-(location|account|token)(?:-({STORE_NAME}))?$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


class ConfigError(DjfsError, ValueError):
    """A configuration key or value is wrong."""


def parse_size(value: int | str) -> int:
    """Bytes from ``1073741824``, ``"10GiB"``, ``"500 MB"``; raises ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string such as '10GiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size can't be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = (match.group(2) or "").lower().rstrip("b")
            return int(float(match.group(1)) * _UNITS[unit])
    raise ValueError(f"{value!r} is not a size (use bytes or a string such as '10GiB')")


def _port(value: Any) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError("a port is a number from 1 to 65535")
    return port


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _optional_string(value: Any) -> str | None:
    return None if value is None else _string(value)


def _count(minimum: int) -> Callable[[Any], int]:
    def validate(value: Any) -> int:
        if isinstance(value, bool) or int(value) != value or int(value) < minimum:
            raise ValueError(f"must be a whole number >= {minimum}")
        return int(value)
    return validate


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError("must be true or false")


def _positive_float(value: Any) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


def _location(value: Any) -> str | None:
    if value is None:
        return None
    value = _string(value)
    if not re.match(r"^(file|s3|s3\+http|s3\+https)://", value):
        raise ValueError("must start with file://, s3://, s3+http:// or s3+https://")
    return value


#: DataJoint 0.12-0.14's ``stores``: protocol -> (required keys, optional keys), as ``Config.get_store_spec``
DATAJOINT_STORE_NAME = re.compile(r"^[a-z][-\w]*$")
STORE_KEYS = {
    "file": (("protocol", "location"), ("subfolding", "stage")),
    "s3": (("protocol", "endpoint", "bucket", "access_key", "secret_key", "location"),
           ("secure", "subfolding", "stage", "proxy_server")),
}
DEFAULT_SUBFOLDING = (2, 2)


def store_spec(name: str, spec: Any) -> dict[str, Any]:
    """One store of DataJoint's ``stores``, checked as DataJoint checks it (protocol, required and allowed keys)
    and typed; ``subfolding`` defaults to (2, 2), ``secure`` to False. Errors name the key, never a secret."""
    where = f"stores[{name!r}]"
    if not isinstance(name, str) or not DATAJOINT_STORE_NAME.match(name):
        raise ValueError(f"store name {str(name)[:60]!r} must match [a-z][-\\w]* (as in blob@<store>)")
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a mapping of protocol, location, ...")
    protocol = str(spec.get("protocol", "")).lower()
    if protocol not in STORE_KEYS:
        raise ValueError(f"missing or invalid protocol in {where}: use 'file' or 's3'")
    required, optional = STORE_KEYS[protocol]
    missing = [key for key in required if key not in spec]
    if missing:
        raise ValueError(f"{where} is missing {missing[0]!r}")
    unknown = [key for key in spec if key not in required and key not in optional]
    if unknown:
        raise ValueError(f"invalid key {str(unknown[0])[:60]!r} in {where}")
    result: dict[str, Any] = {"protocol": protocol}
    for key in required[1:] + ("stage", "proxy_server"):
        if spec.get(key) is not None:
            if not isinstance(spec[key], str):
                raise ValueError(f"{where}[{key!r}] must be a string")
            result[key] = spec[key]
    folds = spec.get("subfolding", DEFAULT_SUBFOLDING)
    if folds is None:
        folds = ()
    if (not isinstance(folds, (list, tuple)) or
            not all(isinstance(f, int) and not isinstance(f, bool) and 0 < f <= 32 for f in folds)
            or sum(folds) > 32):
        raise ValueError(f"{where}['subfolding'] must be a list of positive lengths (e.g. [2, 2])")
    result["subfolding"] = tuple(folds)
    if protocol == "s3":
        result["secure"] = _bool(spec.get("secure", False))
    return result


def _stores(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of store name -> store settings")
    return {name: store_spec(name, spec) for name, spec in value.items()}


def _verify_policy(value: Any) -> str:
    if value in ("always", "remote"):  # the names of earlier versions: both hash-checked something
        return "hash"
    if value not in ("hash", "size"):
        raise ValueError("must be 'hash' (check every read from a store against the content hash, and every "
                         "cache read against its block checksums) or 'size' (check sizes only)")
    return value


#: key -> (default, validator); keys follow DataJoint's names where DataJoint has one.
SCHEMA: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "database.host": ("localhost", _string),
    "database.port": (3306, _port),
    "database.user": (None, _optional_string),
    "database.password": (None, _optional_string),
    "database.reconnect": (True, _bool),
    "connection.init_function": (None, _optional_string),
    "cache-location": (None, _optional_string),
    "cache-size": ("10GiB", parse_size),
    "progress": (True, _bool),
    "store-timeout": (30.0, _positive_float),
    "store-retries": (3, _count(0)),
    "transfer-threads": (8, _count(1)),
    "safemode": (True, _bool),
    "verify-reads": ("hash", _verify_policy),
    "stores": ({}, _stores),
    "loglevel": (None, lambda v: _level(v)),
    "fetch_format": ("array", lambda v: _choice(v, ("array", "frame"))),
    "display.limit": (12, _count(1)),
}

#: DataJoint 0.14's keys djfs has no use for: accepted (a ``dj_local_conf.json`` written by DataJoint loads),
#: kept as given, and named in one warning. Keys in ``SCHEMA`` are DataJoint's too but used.
DATAJOINT_KEYS = {"connection.charset", "database.use_tls", "display.width", "display.show_tuple_count",
                  "enable_python_native_blobs", "add_hidden_timestamp", "filepath_checksum_size_limit",
                  "filepath_checksum_size_limit_insert", "cache", "custom", "query_cache", "plugin",
                  "database.prefix", "download_path"}


def _choice(value: Any, choices: tuple) -> Any:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(map(repr, choices))}")
    return value


def _level(value: Any) -> str | None:
    """A logging level name; setting it sets the level of djfs's loggers, as DataJoint's does for its own."""
    if value is None:
        return None
    value = _choice(str(value).upper(), ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    logging.getLogger("djfs").setLevel(value)
    return value


SECRET_KEYS = re.compile(r"(password|token|secret)", re.IGNORECASE)
ENVIRONMENT = {"DJ_HOST": "database.host", "DJ_PORT": "database.port",
               "DJ_USER": "database.user", "DJ_PASS": "database.password"}


def _validator(key: str) -> tuple[Any, Callable[[Any], Any]]:
    if key in SCHEMA:
        return SCHEMA[key]
    if key in DATAJOINT_KEYS:
        return None, lambda value: value
    if _STORE_KEY.match(key):
        return None, (_location if key.startswith("external-location") else _optional_string)
    raise ConfigError(f"unknown configuration key {key!r}; known keys: {', '.join(sorted(SCHEMA))}, "
                      "external-location[-<store>], external-account[-<store>], external-token[-<store>]")


def is_secret(key: str) -> bool:
    return bool(SECRET_KEYS.search(key))


def _masked(key: str, value: Any) -> Any:
    """``value`` with secrets masked, also inside nested settings (DataJoint's ``stores`` hold ``secret_key``)."""
    if is_secret(key) and value is not None:
        return MASK
    if isinstance(value, dict):
        return {k: _masked(str(k), v) for k, v in value.items()}
    return value


class Config(MutableMapping):
    """A validated mapping of settings; ``repr`` and errors never show a secret."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self._values: dict[str, Any] = {key: (validate(default) if default is not None else None)
                                       for key, (default, validate) in SCHEMA.items()}
        for key, value in (values or {}).items():
            self[key] = value

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            _validator(key)  # unknown keys raise; known but unset store keys read as None
            return None
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._set(key, value)
        self._warn_ignored([key])

    def _warn_ignored(self, keys: list[str]) -> None:
        """One warning naming the DataJoint keys djfs ignores, each named once per configuration."""
        warned = self.__dict__.setdefault("_warned", set())
        ignored = sorted(k for k in keys if k in DATAJOINT_KEYS and k not in SCHEMA and k not in warned)
        if ignored:
            warned.update(ignored)
            warnings.warn(f"djfs ignores these DataJoint settings (djfs has no such feature): {', '.join(ignored)}",
                          stacklevel=3)

    def _set(self, key: str, value: Any) -> None:
        _, validate = _validator(key)
        try:
            self._values[key] = validate(value)
        except (TypeError, ValueError) as error:
            shown = MASK if is_secret(key) else repr(value)
            if key == "stores":  # a mapping holding secrets: the error names the store and key instead
                raise ConfigError(f"bad configuration key 'stores': {error}") from None
            raise ConfigError(f"bad value {shown} for configuration key {key!r}: {error}") from None

    def __delitem__(self, key: str) -> None:
        default, validate = _validator(key)
        self._values[key] = validate(default) if default is not None else None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def masked(self) -> dict[str, Any]:
        return {key: _masked(key, value) for key, value in self._values.items()}

    def __repr__(self) -> str:
        return f"Config({self.masked()!r})"

    __str__ = __repr__

    def load(self, path: str | os.PathLike) -> None:
        """Merge a DataJoint-style JSON file (flat keys, as ``dj_local_conf.json``)."""
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"can't read configuration file {os.fspath(path)!r}: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"configuration file {os.fspath(path)!r} must hold a JSON object")
        for key, value in values.items():
            self._set(key, value)
        self._warn_ignored(list(values))

    def load_environment(self, environ: dict[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        for variable, key in ENVIRONMENT.items():
            if environ.get(variable):
                try:
                    self[key] = environ[variable]
                except ConfigError as error:
                    raise ConfigError(f"environment variable {variable}: {error}") from None

    @contextmanager
    def override(self, **values: Any) -> Iterator["Config"]:
        """Temporarily set keys (``config.override(**{'cache-size': '1GiB'})``), restored on exit."""
        saved = dict(self._values)
        try:
            for key, value in values.items():
                self[key] = value
            yield self
        finally:
            self._values = saved

    def store_spec(self, store: str = "") -> dict[str, str | None]:
        """The location, account and token of the default store ('') or a named one."""
        suffix = f"-{store}" if store else ""
        return {part: self[f"external-{part}{suffix}"] for part in ("location", "account", "token")}


class LazyConfig(Config):
    """``djfs.config``: read from the file and the environment on first use, not when djfs is imported, so an
    import never fails over a configuration file and a command can report its problem in one line."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    @property
    def _values(self) -> dict[str, Any]:
        if self._loaded is None:
            self._loaded = {}  # a failing load leaves the built-in defaults, and raises again next time
            try:
                loaded = load_default()
            except ConfigError:
                self._loaded = None
                raise
            self._loaded = loaded._values
            self.__dict__["_warned"] = loaded.__dict__.get("_warned", set())
        return self._loaded

    @_values.setter
    def _values(self, values: dict[str, Any]) -> None:
        self._loaded = values


def load_default() -> Config:
    config = Config()
    path = os.environ.get(CONFIG_ENV) or (LOCAL_CONFIG if Path(LOCAL_CONFIG).exists() else None)
    if path:
        config.load(path)
    config.load_environment()
    return config
