"""A store in an S3 bucket (AWS, MinIO, Ceph, moto …) through boto3.

* Every request has bounded time: ``timeout`` is botocore's connect and read timeout, ``retries`` the number of
  retries of botocore's *standard* mode (exponential backoff with jitter), so a dead endpoint fails with a
  ``StoreError`` after about ``(retries + 1) * timeout`` plus backoff instead of hanging a reader.
* A large object (``multipart_threshold``, 64 MiB by default) is uploaded in parts of ``part_size`` straight from
  the caller's chunk stream, at most ``max_concurrency`` parts in flight, so memory stays bounded whatever the
  object's size; any failure aborts the multipart upload, so no object (and no paid-for orphan parts) is left.
* A large object is read with parallel ranged GETs straight into the caller's buffer (``get_into``).
* Ranged GETs (the mount's ``open_range``: many small requests; the parts of ``get_into``) go out as presigned
  GETs through the client's own connection pool (its TLS settings, proxies and timeouts), skipping botocore's
  per-request pipeline (events, serialization, signing, parsing: ~2.3 ms of CPU per GET here, ~0.6 ms this way);
  the signed URL is never shown.  A key's URL serves its ranged GETs for ``PRESIGNED_REUSE`` seconds (signing
  was a sixth of the mount's Python time on random reads); a 403 on a reused URL is retried with a fresh one.
* Credentials are the explicit ones when given, else boto3's standard chain (``AWS_*`` variables, profiles,
  instance roles).  They are kept out of every message and ``repr``: errors name the bucket and the endpoint.
* The boto3 client is created on first use, and again in a forked child: no connection or thread exists before
  a FUSE daemon forks, and a child never shares its parent's sockets.  Every store's client comes from one boto3
  session per process (``_session``): a session loads botocore's S3 model and endpoint rules (0.2–0.5 s with the
  imports, on a loaded machine), its clients share them (a second client costs ~5 ms).  ``preload()`` does that
  loading ahead (the mount, before it answers its first read: a fresh daemon's first reads don't wait for it).
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from cachetools import TTLCache

from ..errors import CorruptObjectError, MissingObjectError, StoreError
from .base import STRICT_KEYS, Data, Filled, KeyRule, ObjectInfo, RangeStream, Store, as_chunks, check_size, validate_prefix

MiB = 1 << 20
PRESIGNED_SECONDS = 900   # validity of a presigned GET
PRESIGNED_REUSE = 60.0    # seconds a key's presigned GET serves further ranged GETs (the range is not signed)
PRESIGNED_KEPT = 1024     # presigned GETs a store keeps for reuse
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MIN_PART_SIZE = 5 * MiB  # S3 refuses smaller parts (except the last one)
MAX_PARTS = 10_000
_T = TypeVar("_T")

_session_lock = threading.Lock()
_session_of: tuple[int, Any] | None = None   # (pid, the boto3 session every store's client comes from)


def _new_session_lock() -> None:
    """In a forked child: a fresh lock (another thread of the parent may have held it at the fork)."""
    global _session_lock
    _session_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_session_lock)


def _session() -> Any:
    """The process's boto3 session (a new one in a forked child); call with ``_session_lock`` held: a session is
    not thread-safe, its clients are."""
    global _session_of
    if _session_of is None or _session_of[0] != os.getpid():
        try:
            import boto3
        except ImportError as error:  # pragma: no cover - boto3 is a dependency
            raise StoreError("the S3 store needs boto3: pip install boto3") from error
        _session_of = (os.getpid(), boto3.session.Session())
    return _session_of[1]


def preload() -> None:
    """Load what every S3 client needs (boto3, botocore's S3 model and endpoint rules) into the process's session,
    by building a client that is never used: no credentials are looked up, no connection is opened, no thread is
    started.  Then the first real client costs milliseconds."""
    from botocore.config import Config
    with _session_lock:
        _session().client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                          aws_access_key_id="preload", aws_secret_access_key="preload",
                          config=Config(s3={"addressing_style": "path"}))


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_AWS_HOST = re.compile(r"^(?:.+\.)?s3[.-](?:dualstack\.)?([a-z]{2}(?:-gov)?-[a-z]+-\d)\.amazonaws\.com$")


def validate_bucket(name: object) -> str:
    """Return ``name`` if it follows S3's bucket naming rules (the general-purpose bucket ones), else raise."""
    problem = None
    if not isinstance(name, str) or not _BUCKET.match(name):
        problem = "3 to 63 characters of lowercase letters, digits, '.' and '-', starting and ending with a " \
                  "letter or digit"
    elif ".." in name or ".-" in name or "-." in name:
        problem = "no '..', '.-' or '-.'"
    elif _IP_ADDRESS.match(name):
        problem = "not formatted as an IP address"
    elif name.startswith(("xn--", "sthree-")) or name.endswith(("-s3alias", "--ol-s3", "--x-s3")):
        problem = "no reserved prefix (xn--, sthree-) or suffix (-s3alias, --ol-s3, --x-s3)"
    if problem:
        raise ValueError(f"invalid S3 bucket name {repr(name)[:80]}: a bucket name has {problem}")
    return name  # type: ignore[return-value]


class _Secret:
    """A credential that never prints itself (``repr``, ``str``, ``vars()`` of the store, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'********'"

    __str__ = __repr__


class _ViewReader(io.RawIOBase):
    """A seekable file over a memoryview: botocore takes bytes or files, not views, and copying a part is waste."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), len(self._view) - self._position))
        memoryview(buffer).cast("B")[:count] = self._view[self._position:self._position + count]
        self._position += count
        return count


class _BodyError(Exception):
    """Reading a response body failed midway (botocore does not retry those): carries the original error."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class S3Store(Store):
    """Objects are ``s3://<bucket>/<prefix>/<key>``."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, timeout: float = 30.0,
                 retries: int = 3, max_concurrency: int = 8, *, multipart_threshold: int = 64 * MiB,
                 part_size: int = 16 * MiB, addressing_style: str | None = None,
                 keys: KeyRule = STRICT_KEYS) -> None:
        self.bucket = validate_bucket(bucket)
        self.keys = keys
        prefix = prefix.strip("/")
        self.prefix = keys.validate(prefix) if prefix else ""
        if endpoint_url is not None:
            parts = urlsplit(endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("an S3 endpoint is an http:// or https:// URL with a host")
            if parts.username or parts.password:
                raise ValueError("credentials don't belong in an S3 endpoint URL: pass them as account and token")
            endpoint_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.endpoint_url = endpoint_url
        self.region = region
        if (access_key is None) != (secret_key is None):
            raise ValueError("give both the S3 access key (account) and the secret key (token), or neither")
        self._access_key = _Secret(access_key) if access_key is not None else None
        self._secret_key = _Secret(secret_key) if secret_key is not None else None
        if not timeout > 0:
            raise ValueError("the S3 timeout must be a positive number of seconds")
        if retries < 0 or max_concurrency < 1:
            raise ValueError("S3 retries must be >= 0 and max_concurrency >= 1")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts must have at least {MIN_PART_SIZE} bytes")
        if multipart_threshold < part_size:
            raise ValueError("the multipart threshold must be at least one part")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.max_concurrency = int(max_concurrency)
        self.multipart_threshold = int(multipart_threshold)
        self.part_size = int(part_size)
        if addressing_style is None:
            # custom endpoints (MinIO, moto, Ceph, IP addresses) generally need path-style addressing
            host = (urlsplit(endpoint_url).hostname or "") if endpoint_url else ""
            addressing_style = "path" if endpoint_url and not host.endswith("amazonaws.com") else "auto"
        self.addressing_style = addressing_style
        self._lock = threading.Lock()
        self._urls: TTLCache = TTLCache(maxsize=PRESIGNED_KEPT, ttl=PRESIGNED_REUSE)  # key -> its presigned GET
        self._client_pid: int | None = None
        self._client_object: Any = None
        self._bucket_checked = False

    # -- plumbing -------------------------------------------------------------------------------------------

    def describe(self) -> str:
        where = self.endpoint_url or "the default AWS endpoint"
        path = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"s3://{path} at {where}"

    @property
    def _client(self) -> Any:
        client = self._client_object
        if client is not None and self._client_pid == os.getpid():
            return client
        with self._lock:
            if self._client_object is None or self._client_pid != os.getpid():
                self._client_object = self._make_client()
                self._client_pid = os.getpid()
            return self._client_object

    def _make_client(self) -> Any:
        try:
            from botocore.config import Config
        except ImportError as error:  # pragma: no cover - boto3 is a dependency
            raise StoreError("the S3 store needs boto3: pip install boto3") from error
        options: dict[str, Any] = dict(
            connect_timeout=self.timeout, read_timeout=self.timeout,
            retries={"max_attempts": self.retries, "mode": "standard"},
            max_pool_connections=max(10, 2 * self.max_concurrency),
            s3={"addressing_style": self.addressing_style},
            # integrity is checked by djfs's own hashes; the new default checksums break older S3-compatible servers
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        try:
            config = Config(**options)
        except TypeError:  # botocore < 1.36 has no checksum options
            del options["request_checksum_calculation"], options["response_checksum_validation"]
            config = Config(**options)
        credentials = {}
        if self._access_key is not None and self._secret_key is not None:
            credentials = dict(aws_access_key_id=self._access_key.reveal(),
                               aws_secret_access_key=self._secret_key.reveal())
        region = self.region or _region_of(self.endpoint_url)
        with _session_lock:
            return _session().client("s3", region_name=region, endpoint_url=self.endpoint_url, config=config,
                                     **credentials)

    def _key(self, key: str) -> str:
        self.keys.validate(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _scrub(self, text: str) -> str:
        for secret in (self._secret_key, self._access_key):
            if secret is not None and secret.reveal():
                text = text.replace(secret.reveal(), "********")
        return text

    def _error(self, action: str, key: str | None, error: BaseException) -> StoreError:
        """Translate a boto3/botocore/urllib3 error into ours: the bucket and endpoint named, secrets never."""
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        if isinstance(error, _BodyError):
            error = error.error
        what = f"{key!r} in {self.describe()}" if key is not None else self.describe()
        if isinstance(error, StoreError):
            return error
        if isinstance(error, ClientError):
            info = error.response.get("Error", {})
            code = str(info.get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound") and key is not None:
                return MissingObjectError(f"object {key!r} is missing from {self.describe()}")
            if code == "NoSuchBucket":
                return StoreError(f"can't {action} {what}: bucket {self.bucket!r} does not exist at "
                                  f"{self.endpoint_url or 'the default AWS endpoint'}")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
                return StoreError(f"can't {action} {what}: access denied ({code}); check the store's "
                                  "account and token (external-account, external-token) or AWS credentials")
            message = self._scrub(str(info.get("Message", "")))
            return StoreError(f"can't {action} {what}: S3 error {code or '?'} {message}".rstrip())
        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(f"can't {action} {what}: no S3 credentials found; set external-account and "
                              "external-token, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        reason = self._scrub(f"{type(error).__name__}: {error}")
        return StoreError(f"can't {action} {what}: {reason}")

    def _call(self, action: str, key: str | None, function: Callable[[], _T]) -> _T:
        """Run one request (or request and body read), translating errors; body reads are retried here."""
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return function()
            except _BodyError as error:
                if attempt + 1 < attempts:
                    continue
                raise self._error(action, key, error) from None
            except StoreError:
                raise
            except Exception as error:
                raise self._error(action, key, error) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _read_body(response: dict, into: memoryview | None = None, filled: Filled | None = None) -> bytes | int:
        """The whole body as bytes, or copied into ``into`` (returns the byte count, reporting each piece to
        ``filled``); errors become _BodyError."""
        body = response["Body"]
        try:
            if into is None:
                return body.read()
            plain = _plain_body(response)
            if plain is not None:
                return _read_plain_into(response, plain, into, filled)
            position = 0
            for chunk in body.iter_chunks(1 * MiB):
                end = position + len(chunk)
                if end > len(into):
                    raise CorruptObjectError("the store returned more bytes than asked for")
                into[position:end] = chunk
                if filled is not None:
                    filled(position, end)
                position = end
            return position
        except StoreError:
            raise
        except Exception as error:
            raise _BodyError(error) from None
        finally:
            body.close()

    def _check_bucket(self) -> None:
        """A HEAD of a missing key and of a key in a missing bucket both give 404: tell them apart once."""
        if self._bucket_checked:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            from botocore.exceptions import ClientError
            if isinstance(error, ClientError) and str(error.response.get("Error", {}).get("Code")) in (
                    "404", "NoSuchBucket", "NotFound"):
                raise StoreError(f"bucket {self.bucket!r} does not exist at "
                                 f"{self.endpoint_url or 'the default AWS endpoint'}") from None
            raise self._error("check", None, error) from None
        self._bucket_checked = True

    def _head(self, key: str) -> dict | None:
        """The object's metadata, or None when it is missing (in an existing bucket)."""
        from botocore.exceptions import ClientError
        full = self._key(key)
        try:
            return self._client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                self._check_bucket()
                return None
            raise self._error("stat", key, error) from None
        except Exception as error:
            raise self._error("stat", key, error) from None

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (tests, demos); stores never create buckets by themselves."""
        from botocore.exceptions import ClientError
        options: dict[str, Any] = {}
        if self.region and self.region != "us-east-1":
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(Bucket=self.bucket, **options)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise self._error("create", None, error) from None
        except Exception as error:
            raise self._error("create", None, error) from None
        self._bucket_checked = True

    # -- writing --------------------------------------------------------------------------------------------

    def put(self, key: str, data: Data, size: int | None = None) -> None:
        full = self._key(key)
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
            check_size(len(view), size, key, self)
            if len(view) < self.multipart_threshold:
                body = data if isinstance(data, (bytes, bytearray)) else _ViewReader(view)
                self._call("write", key, lambda: self._client.put_object(Bucket=self.bucket, Key=full, Body=body))
                return
            # the caller's buffer lives as long as this call: parts are views into it, never copies
            part_size = self._part_size(len(view))
            parts = (view[start:start + part_size] for start in range(0, len(view), part_size))
            self._put_multipart(key, full, parts, len(view))
            return
        # A stream: a producer may reuse its buffer for the next chunk, so chunks are copied as they arrive.
        # Up to the threshold they are buffered: a short stream is one PUT, a long one a multipart upload.
        chunks = as_chunks(data)
        pending = bytearray()
        for chunk in chunks:
            pending += chunk
            if len(pending) >= self.multipart_threshold:
                break
        else:
            check_size(len(pending), size, key, self)
            self._call("write", key, lambda: self._client.put_object(Bucket=self.bucket, Key=full, Body=pending))
            return
        self._put_multipart(key, full, _parts(pending, chunks, self._part_size(size)), size)

    def _part_size(self, size: int | None) -> int:
        if size is None:
            return self.part_size
        return max(self.part_size, -(-size // MAX_PARTS))

    def _put_multipart(self, key: str, full: str, parts: Iterator[memoryview], size: int | None) -> None:
        """Upload ``parts`` (all but the last at least MIN_PART_SIZE) as one object, or leave nothing."""
        client = self._client
        upload_id = self._call("write", key, lambda: client.create_multipart_upload(
            Bucket=self.bucket, Key=full)["UploadId"])
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="djfs-s3-put")
        in_flight = threading.BoundedSemaphore(self.max_concurrency)  # bounds memory to max_concurrency parts
        futures: list[Future] = []
        try:
            written = 0
            for number, part in enumerate(parts, 1):
                if number > MAX_PARTS:
                    raise StoreError(f"can't write {key!r} to {self.describe()}: more than {MAX_PARTS} parts; "
                                     "announce the size or raise the part size")
                written += len(part)
                if size is not None and written > size:
                    break  # check_size below reports it
                in_flight.acquire()
                failed = [future for future in futures if future.done() and future.exception()]
                if failed:
                    in_flight.release()
                    failed[0].result()
                future = pool.submit(self._upload_part, key, full, upload_id, number, part)
                future.add_done_callback(lambda _: in_flight.release())
                futures.append(future)
            check_size(written, size, key, self)
            wait(futures, return_when=FIRST_EXCEPTION)
            _raise_first_error(futures)
            uploaded = [future.result() for future in futures]
            self._call("write", key, lambda: client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": uploaded}))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            try:
                client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception:
                pass  # best effort: a bucket lifecycle rule should also expire incomplete uploads
            raise
        finally:
            pool.shutdown(wait=True)

    def _upload_part(self, key: str, full: str, upload_id: str, number: int, part: memoryview) -> dict:
        body = _ViewReader(part)
        response = self._call("write", key, lambda: self._client.upload_part(
            Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=body))
        return {"PartNumber": number, "ETag": response["ETag"]}

    # -- reading --------------------------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        full = self._key(key)
        return self._call("read", key, lambda: self._read_body(
            self._client.get_object(Bucket=self.bucket, Key=full)))  # type: ignore[return-value]

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        from botocore.exceptions import ClientError
        self._check_range(offset, length)
        full = self._key(key)
        if length == 0:
            if self._head(key) is None:
                raise self._missing(key)
            return b""

        def ranged() -> bytes:
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=full,
                                                   Range=f"bytes={offset}-{offset + length - 1}")
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # past the end (or an empty object)
                raise
            return self._read_body(response)  # type: ignore[return-value]

        return self._call("read", key, ranged)

    def prepare(self) -> None:
        self._client  # noqa: B018 - created on first use

    def open_range(self, key: str, offset: int = 0, length: int | None = None) -> RangeStream:
        """One GET for the whole range, read in exact pieces as the caller consumes it. From 0 to the end
        it is a plain GET: some servers copy the whole object for every ranged answer."""
        self._check_range(offset, length or 0)
        if length is None:
            ranged = {"Range": f"bytes={offset}-"} if offset else {}
        else:
            ranged = {"Range": f"bytes={offset}-{offset + length - 1}"}
        response = self._presigned_get(key, ranged)
        if response is None:  # a botocore without the parts used: its own pipeline
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._key(key), **ranged)
            except Exception as error:
                raise self._error("read", key, error) from None
        return _S3RangeStream(self, key, response)

    def _presigned_get(self, key: str, headers: dict[str, str]) -> dict | None:
        """A GET sent as a presigned URL through the client's connection pool, retried like botocore's standard
        mode (connection errors, 429 and 5xx answers); a response shaped like ``get_object``'s (``Body``,
        ``ContentEncoding``), or None when this botocore lacks the parts (then the caller uses ``get_object``).
        Errors never show the URL: it carries a signature."""
        from botocore.exceptions import BotoCoreError
        from botocore.response import StreamingBody

        client = self._client
        session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        if session is None or not hasattr(session, "send"):
            return None
        full = self._key(key)
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0, 0.05 * 2 ** attempt))
            try:
                response = self._send_presigned(client, session, full, headers, fresh=attempt > 0)
            except BotoCoreError as error:  # its message may hold the URL: only its kind is told
                problem = type(error).__name__
                continue
            except Exception as error:
                raise self._error("read", key, error) from None
            status = response.status_code
            if status in (200, 206):
                length = response.headers.get("Content-Length")
                body = StreamingBody(response.raw, int(length) if length is not None else None)
                return {"Body": body, "ContentEncoding": response.headers.get("Content-Encoding")}
            document = _error_document(response)
            if status == 404 and b"<Code>NoSuchBucket</Code>" in document:
                raise StoreError(f"can't read {key!r} in {self.describe()}: bucket {self.bucket!r} does not exist "
                                 f"at {self.endpoint_url or 'the default AWS endpoint'}")
            if status == 404:
                raise self._missing(key)
            if status == 403:
                raise StoreError(f"can't read {key!r} in {self.describe()}: access denied (403); check the store's "
                                 "account and token (external-account, external-token) or AWS credentials")
            problem = "it was replaced while it was read (412)" if status == 412 else f"HTTP status {status}"
            if status not in _RETRY_STATUS:
                break
        raise StoreError(f"can't read {key!r} in {self.describe()}: {problem}")

    def _send_presigned(self, client: Any, session: Any, full: str, headers: dict[str, str], fresh: bool) -> Any:
        """Send a presigned GET of bucket key ``full``; a 403 on a reused URL (signed with credentials rotated
        since) is sent once more, signed anew."""
        from botocore.awsrequest import AWSRequest
        while True:
            reused, url = self._presigned_url(client, full, fresh)
            request = AWSRequest(method="GET", url=url, headers=headers).prepare()
            request.stream_output = True
            response = session.send(request)
            if not (reused and response.status_code == 403):
                return response
            _error_document(response)
            fresh = True

    def _presigned_url(self, client: Any, full: str, fresh: bool) -> tuple[bool, str]:
        """(whether it is reused, a presigned GET of bucket key ``full``): the key's URL signed within the last
        ``PRESIGNED_REUSE`` seconds, unless ``fresh``; the range header is not part of what is signed."""
        if not fresh:
            with self._lock:
                url = self._urls.get(full)
            if url is not None:
                return True, url
        url = client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": full},
                                            ExpiresIn=PRESIGNED_SECONDS)
        with self._lock:
            self._urls[full] = url
        return False, url

    def get_into(self, key: str, buffer: memoryview, filled: Filled | None = None) -> None:
        view = memoryview(buffer).cast("B")
        full = self._key(key)
        if len(view) < self.multipart_threshold or self.max_concurrency == 1:
            def whole() -> None:
                response = self._client.get_object(Bucket=self.bucket, Key=full)
                self._check_length(key, response["ContentLength"], len(view))
                count = self._read_body(response, view, filled)
                self._check_length(key, count, len(view))
            self._call("read", key, whole)
            return
        head = self._head(key)
        if head is None:
            raise self._missing(key)
        self._check_length(key, head["ContentLength"], len(view))
        etag = head.get("ETag")

        def fill(start: int) -> None:
            end = min(start + self.part_size, len(view))
            options = {"IfMatch": etag} if etag else {}

            def ranged() -> None:
                response = self._presigned_get(key, {"Range": f"bytes={start}-{end - 1}",
                                                     **({"If-Match": etag} if etag else {})})
                if response is None:
                    response = self._client.get_object(Bucket=self.bucket, Key=full,
                                                       Range=f"bytes={start}-{end - 1}", **options)
                count = self._read_body(response, view[start:end])
                if count != end - start:
                    raise _BodyError(IOError(f"short read: {count} of {end - start} bytes"))
            self._call("read", key, ranged)
            if filled is not None:
                filled(start, end)

        with ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="djfs-s3-get") as pool:
            futures = [pool.submit(fill, start) for start in range(0, len(view), self.part_size)]
            wait(futures, return_when=FIRST_EXCEPTION)
            _raise_first_error(futures)
            for future in futures:
                future.result()

    def _check_length(self, key: str, stored: int, expected: int) -> None:
        if stored != expected:
            raise CorruptObjectError(f"object {key!r} in {self.describe()} has {stored} bytes, "
                                     f"{expected} were expected")

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise self._missing(key)
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def remove(self, key: str) -> None:
        full = self._key(key)
        try:
            self._call("remove", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=full))
        except MissingObjectError:
            pass

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self._call("list", None, lambda: iter(self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base + prefix)))
        while True:
            page = self._call("list", None, lambda: next(pages, None))
            if page is None:
                return
            for item in page.get("Contents", ()):
                key = item["Key"][len(base):]
                if self.keys.is_valid(key):
                    yield ObjectInfo(key, int(item["Size"]), item["LastModified"].timestamp())

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"


def _region_of(endpoint_url: str | None) -> str | None:
    """The signing region when none is configured: AWS's from its host name, us-east-1 for other services."""
    if endpoint_url is None:
        return None  # boto3's chain: AWS_REGION, AWS_DEFAULT_REGION, the profile, else the global endpoint
    host = urlsplit(endpoint_url).hostname or ""
    match = _AWS_HOST.match(host)
    if match:
        return match.group(1)
    if host.endswith("amazonaws.com"):
        return None
    return "us-east-1"  # what MinIO, Ceph and moto expect unless configured otherwise


def _error_document(response: Any) -> bytes:
    """The start of an answer that is not the object (an S3 error document), read so the connection is free
    again."""
    try:
        return response.raw.read(64 * 1024)
    except Exception:
        return b""
    finally:
        response.raw.release_conn()


def _plain_body(response: dict) -> Any:
    """The ``http.client`` response under botocore's body when its bytes arrive as they are (no content or
    transfer encoding): it can read straight into the caller's buffer.  None otherwise."""
    raw = getattr(response["Body"], "_raw_stream", None)
    plain = getattr(raw, "_fp", None)
    if response.get("ContentEncoding") or plain is None or getattr(plain, "chunked", True) \
            or not hasattr(plain, "readinto") or getattr(raw, "_fp_bytes_read", 1):
        return None
    return plain


def _read_plain_into(response: dict, plain: Any, into: memoryview, filled: Filled | None) -> int:
    """Read a plain body straight from the socket into ``into`` (one copy, where urllib3's reads make two),
    reporting each MiB to ``filled``; then hand the connection back to the pool, as urllib3 does at the end."""
    position = 0
    while position < len(into):
        count = plain.readinto(into[position:min(len(into), position + MiB)])
        if not count:
            break
        if filled is not None:
            filled(position, position + count)
        position += count
    if position == len(into) and plain.length:  # http.client knows the announced length
        raise CorruptObjectError("the store returned more bytes than asked for")
    raw = response["Body"]._raw_stream
    if plain.isclosed():
        raw.release_conn()
    return position


def _raise_first_error(futures: list[Future]) -> None:
    """If a task failed, cancel the queued ones and raise its error (the caller's pool waits for running ones)."""
    for future in futures:
        if future.done() and not future.cancelled() and future.exception() is not None:
            for other in futures:
                other.cancel()
            future.result()


def _parts(pending: bytearray, chunks: Iterator[memoryview], part_size: int) -> Iterator[memoryview]:
    """Re-cut ``pending`` and then a stream of chunks of any size into parts of ``part_size`` (the last shorter)."""
    while True:
        while len(pending) >= part_size:
            if len(pending) == part_size:
                part, pending = pending, bytearray()
            else:
                part = pending[:part_size]
                del pending[:part_size]
            yield memoryview(part)
        chunk = next(chunks, None)
        if chunk is None:
            break
        pending += chunk
    if pending:
        yield memoryview(pending)


class _S3RangeStream(RangeStream):
    """The body of one GET, read in exact pieces; errors become StoreError naming the key, never a secret.

    Without a content encoding, the urllib3 response under botocore's body is read with
    ``decode_content=False``, which skips urllib3's decoding buffer: one copy of every byte less.
    """

    def __init__(self, store: S3Store, key: str, response: dict) -> None:
        self._store, self._key, self._body = store, key, response["Body"]
        raw = getattr(self._body, "_raw_stream", None)
        if raw is not None and not response.get("ContentEncoding") and hasattr(raw, "read"):
            self._read = lambda amount: raw.read(amount, decode_content=False)
        else:
            self._read = self._body.read

    def read_exact(self, length: int) -> bytes:
        parts, got = [], 0
        try:
            while got < length:
                part = self._read(length - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
        except Exception as error:
            raise self._store._error("read", self._key, error) from None
        if got < length:
            raise CorruptObjectError(f"object {self._key!r} in {self._store.describe()} ended early")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        self._body.close()
