"""Content hashes of external objects.

The hash is the primary key of ``~external``, the object's name in its store and its name in the cache:
SHA-256 over the bytes below, encoded base64 URL-safe without padding (43 characters from ``[A-Za-z0-9_-]``)::

    serialized object  ||  0x00  ||  origin

where ``origin`` is the UTF-8 text ``<full table name>\\n<primary key as canonical JSON>[\\n<store>]`` — see
``djfs.objects.external.origin_of``.  The origin is kept in ``~external`` beside the hash so that any reader (the cache,
the mount, ``gc``) can verify an object without knowing where it came from.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import xxhash

HASH_LENGTH = 43
HASH_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")
SEPARATOR = b"\x00"


def encode(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def hasher() -> "hashlib._Hash":
    return hashlib.sha256()


def finish(state: "hashlib._Hash", origin: bytes) -> str:
    """Complete a running SHA-256 of an object's bytes with its origin; returns the 43-character hash."""
    state = state.copy()
    state.update(SEPARATOR)
    state.update(origin)
    return encode(state.digest())


def object_hash(chunks: Iterable[bytes | memoryview] | bytes, origin: bytes) -> str:
    state = hasher()
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        chunks = [chunks]
    for chunk in chunks:
        state.update(chunk)
    return finish(state, origin)


def is_valid(value: object) -> bool:
    return isinstance(value, str) and bool(HASH_PATTERN.match(value))


def validate(value: object) -> str:
    """Return ``value`` if it is a well-formed hash, else raise: nothing from the database touches a path unchecked."""
    from .errors import InvalidHashError
    if not is_valid(value):
        shown = repr(value)[:80]
        raise InvalidHashError(f"refusing malformed external hash {shown}: expected 43 characters of "
                               "base64 URL-safe alphabet")
    return value  # type: ignore[return-value]


def object_path(hash_: str) -> str:
    """Relative path of an object inside its schema's folder or bucket: ``ab/cd/<hash>``."""
    validate(hash_)
    return f"{hash_[0:2]}/{hash_[2:4]}/{hash_}"


# -- verifying what a store returns ---------------------------------------------------------------------------

#: the cache's names for objects: a djfs hash (43 characters), a DataJoint UUID in hex (32) …
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
#: granularity of block checksums (cache files, and the sums checked against byte-range reads of a store)
CHECK_BLOCK = 256 << 10


def validate_key(value: object) -> str:
    """A cache key (a hash, a UUID in hex): safe as a file name, else ``InvalidHashError``."""
    from .errors import InvalidHashError
    if not isinstance(value, str) or not KEY_PATTERN.match(value):
        raise InvalidHashError(f"refusing malformed object key {repr(value)[:80]}: expected 16 to 128 characters "
                               "of [A-Za-z0-9_-]")
    return value


@dataclass(frozen=True)
class ObjectId:
    """What a reader needs to verify an object of any kind: its key in the cache and its content digest.

    The digest is ``algorithm(prefix || object || suffix)``: djfs's objects are SHA-256 with the suffix
    ``0x00 || origin``; DataJoint 0.14's are MD5 of the packed blob (or of ``name || 0x00 || bytes`` for an
    attachment: the prefix), keyed by the UUID in hex.  The cache and the readers only ever call ``hasher`` and
    ``matches``, so a new kind of object needs nothing but a constructor like ``object_id``.
    """

    key: str
    digest: bytes
    algorithm: Callable[[], Any] = field(default=hashlib.sha256, compare=False)
    prefix: bytes = b""
    suffix: bytes = b""

    def __post_init__(self) -> None:
        validate_key(self.key)

    def hasher(self) -> "hashlib._Hash":
        """A running digest that has seen the prefix: feed it the object's bytes in order."""
        state = self.algorithm()
        if self.prefix:
            state.update(self.prefix)
        return state

    def matches(self, state: "hashlib._Hash") -> bool:
        """Whether a running digest that has seen the whole object gives the expected digest."""
        state = state.copy()
        if self.suffix:
            state.update(self.suffix)
        return hmac.compare_digest(state.digest(), self.digest)

    def check(self, data: bytes | bytearray | memoryview) -> bool:
        state = self.hasher()
        state.update(data)
        return self.matches(state)


def object_id(hash_: str, origin: bytes) -> ObjectId:
    """The identity of a djfs object: its 43-character hash, which covers its bytes and its origin."""
    validate(hash_)
    return ObjectId(hash_, base64.urlsafe_b64decode(hash_ + "="), hashlib.sha256, b"", SEPARATOR + origin)


def block_sum(data: bytes | bytearray | memoryview) -> int:
    """The cheap checksum of one block (xxHash's XXH3, 64 bits): catches torn and damaged blocks, not forgers."""
    return xxhash.xxh3_64_intdigest(data)


class BlockSums:
    """XXH3 of every ``CHECK_BLOCK`` of a stream fed in pieces of any size (the last block may be shorter)."""

    def __init__(self) -> None:
        self.sums: list[int] = []
        self._state = xxhash.xxh3_64()
        self._filled = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            if not self._filled and len(view) >= CHECK_BLOCK:
                self.sums.append(block_sum(view[:CHECK_BLOCK]))
                view = view[CHECK_BLOCK:]
                continue
            take = min(len(view), CHECK_BLOCK - self._filled)
            self._state.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == CHECK_BLOCK:
                self.sums.append(self._state.intdigest())
                self._state.reset()
                self._filled = 0

    def finish(self) -> list[int]:
        if self._filled:
            self.sums.append(self._state.intdigest())
            self._state.reset()
            self._filled = 0
        return self.sums


def sums_of(data: bytes | bytearray | memoryview) -> list[int]:
    view = memoryview(data).cast("B")
    return [block_sum(view[start:start + CHECK_BLOCK]) for start in range(0, len(view), CHECK_BLOCK)]
