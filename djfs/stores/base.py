"""The interface every external store implements, modelled on fsspec's small uniform file-system classes.

A store holds immutable objects under keys such as ``ab/cd/<hash>`` (see ``djfs.hashing.object_path``).  The
layers above only ever use this interface, so a value written through one backend is read the same way
through any other, and tests run every store test against every backend.

Rules shared by all backends:

* every key is validated before it reaches a path or a request: only ``[A-Za-z0-9_-]`` segments joined by
  ``/`` (so no ``..``, no ``.``, no leading or trailing ``/``, no empty segment) — a hostile key from a
  database row can never escape the store;
* a missing object raises ``MissingObjectError`` naming the key and the store; any other backend failure
  raises ``StoreError``; no message, ``repr`` or ``describe()`` ever shows a credential;
* a ``put`` is all-or-nothing: a reader sees either no object or the whole object under a key, never a
  partial one, even when the data stream fails midway;
* instances are thread-safe: one store is shared by every thread of a process.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Union

from ..errors import CorruptObjectError, MissingObjectError, StoreError

#: bytes-like values accepted by ``put``
BytesLike = Union[bytes, bytearray, memoryview]
#: what ``put`` accepts: one bytes-like value, or an iterable of bytes-like chunks (a stream)
Data = Union[BytesLike, Iterable[BytesLike]]

#: the progress callback of ``get_into``: ``filled(start, end)``
Filled = Callable[[int, int], None]

MAX_KEY_LENGTH = 1024  # S3's limit on a key, in bytes; our keys are ASCII
_KEY = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*$")
_PREFIX = re.compile(r"^(?:[A-Za-z0-9_-]+/)*[A-Za-z0-9_-]*$")


def validate_prefix(prefix: object) -> str:
    """A listing prefix: '' or a key's beginning (it may end with '/' or in the middle of a segment)."""
    if not isinstance(prefix, str) or len(prefix) > MAX_KEY_LENGTH or not _PREFIX.match(prefix):
        raise ValueError(f"invalid listing prefix {repr(prefix)[:100]}: use '/'-separated segments of "
                         "[A-Za-z0-9_-], without leading '/' or '..'")
    return prefix


#: DataJoint 0.12-0.14's own object names (``<hex>.<attachment name>``, a filepath's relative path) are any
#: characters but '/', '\\', NUL and control characters, and no segment starts with '.': so no '.' or '..'
#: segment can escape the store, and no temporary file of ours (hidden names) is ever taken for an object.
_NAME_SEGMENT = r"[^./\\\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]*"
_NAME = re.compile(rf"^{_NAME_SEGMENT}(?:/{_NAME_SEGMENT})*$")


@dataclass(frozen=True)
class KeyRule:
    """Which keys a store accepts: djfs's own (``STRICT_KEYS``) or DataJoint's object names (``NAME_KEYS``)."""

    pattern: re.Pattern
    rule: str

    def is_valid(self, key: object) -> bool:
        return (isinstance(key, str) and len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_LENGTH
                and bool(self.pattern.match(key)))

    def validate(self, key: object) -> str:
        if not self.is_valid(key):
            raise ValueError(f"invalid object key {repr(key)[:100]}: {self.rule}")
        return key  # type: ignore[return-value]


STRICT_KEYS = KeyRule(_KEY, "a key is '/'-separated segments of [A-Za-z0-9_-], without leading '/' or '..'")
NAME_KEYS = KeyRule(_NAME, "a key is '/'-separated names without '\\\\', NUL or control characters, none of "
                           "them starting with '.'")
validate_key = STRICT_KEYS.validate
is_valid_key = STRICT_KEYS.is_valid


MAX_IO = 1 << 30  # bytes per read/pread/write call: Linux caps one call near 2 GiB


def pread_all(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file), however the OS splits it."""
    parts = []
    while length > 0:
        part = os.pread(fd, min(length, MAX_IO), offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
        length -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def as_chunks(data: Data) -> Iterator[memoryview]:
    """Iterate ``data`` as byte-format memoryviews, whether it is one buffer or a stream of chunks."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        chunks: Iterable[BytesLike] = (data,)
    elif isinstance(data, str):
        raise TypeError("store data must be bytes-like or an iterable of bytes-like chunks, not str")
    else:
        chunks = data
    for chunk in chunks:
        if isinstance(chunk, str):
            raise TypeError("store data chunks must be bytes-like, not str")
        view = memoryview(chunk)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes:
            yield view


def check_size(written: int, size: int | None, key: str, store: "Store") -> None:
    """Refuse to keep an object whose stream did not deliver the size announced by the caller."""
    if size is not None and written != size:
        raise StoreError(f"refusing to store {key!r} in {store.describe()}: the data had {written} bytes, "
                         f"{size} were announced")


class RangeStream:
    """What ``Store.open_range`` returns: ``read_exact(n)`` the next ``n`` bytes, ``close()`` when done."""

    def read_exact(self, length: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "RangeStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PieceStream(RangeStream):
    """The generic stream: one ``get_range`` per piece (a file store reads with pread anyway)."""

    def __init__(self, store: "Store", key: str, offset: int, length: int | None) -> None:
        self._store, self._key, self._offset = store, key, offset
        self._end = None if length is None else offset + length

    def read_exact(self, length: int) -> bytes:
        if self._end is not None:
            length = min(length, self._end - self._offset)
        data = self._store.get_range(self._key, self._offset, length)
        if len(data) != length:
            raise CorruptObjectError(f"object {self._key!r} in {self._store.describe()} ended early")
        self._offset += length
        return data


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key (relative to the store), its size in bytes, its modification time."""

    key: str
    size: int
    mtime: float  # POSIX timestamp


class Staged(ABC):
    """A temporary object written by ``Store.stage``: named by ``publish``, or removed by ``discard`` (or when
    it is garbage-collected unpublished)."""

    size: int

    @abstractmethod
    def publish(self, key: str) -> None:
        """Make it the object ``key``, atomically (replacing one already there)."""

    @abstractmethod
    def discard(self) -> None:
        """Remove it; nothing happens if it was published or removed already."""


class Store(ABC):
    """An external store: a flat namespace of immutable objects named by validated keys."""

    #: the keys this store accepts (a store of DataJoint's ``stores`` accepts DataJoint's object names)
    keys: KeyRule = STRICT_KEYS

    @abstractmethod
    def put(self, key: str, data: Data, size: int | None = None) -> None:
        """Store ``data`` (bytes or an iterable of chunks) under ``key``, replacing it atomically.

        ``size``, when known, lets a backend plan the upload and is checked against what the stream delivered.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object."""

    @abstractmethod
    def get_into(self, key: str, buffer: memoryview, filled: "Filled | None" = None) -> None:
        """Fill ``buffer``, whose length must be exactly the object's size, without intermediate copies.

        ``filled(start, end)`` is called (from any thread, in any order) as each range of the buffer is
        complete, so a caller can hash the object while the rest is still arriving.  A range may be reported
        again when a failed request is retried (the object is immutable: its bytes are the same).
        """

    @abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; shorter at the end of the object, empty past it."""

    def prepare(self) -> None:
        """Set up what the first request would (clients, credentials), so that request is not slower."""

    def stage(self, data: Data, size: int | None, observe: Callable[[memoryview], object]) -> "Staged | None":
        """Write ``data`` as a hidden temporary object while ``observe`` sees every chunk, for an object whose
        name is known only once all its bytes were seen (a content hash): one pass over the data instead of
        two.  ``Staged.publish(key)`` names it.  None when the backend can't rename cheaply (S3): the caller
        then reads the data twice.  A chunk may still be being written after the next one was asked for: the
        producer must not change a chunk it yielded until ``stage`` returns."""
        return None

    def open_range(self, key: str, offset: int = 0, length: int | None = None) -> "RangeStream":
        """A stream of the bytes from ``offset`` (``length`` of them, or to the end), read piece by piece:
        one request where the backend allows (S3: one GET), so a sequential reader doesn't pay a round trip
        per block."""
        return _PieceStream(self, key, offset, length)

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def remove(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error (gc may be retried)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The objects whose key starts with ``prefix``, in key order.

        Only entries whose names are valid keys are listed: foreign files (a README, a temporary file) are
        invisible, so nothing built on a listing (such as gc's orphan sweep) can touch them.
        """

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages and logs; never shows a credential."""

    def _missing(self, key: str) -> MissingObjectError:
        return MissingObjectError(f"object {key!r} is missing from {self.describe()}")

    @staticmethod
    def _check_range(offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise ValueError(f"a range needs a non-negative offset and length, not ({offset}, {length})")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
