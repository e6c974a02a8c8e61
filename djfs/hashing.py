"""Content hashes of external objects.

The hash is the primary key of ``~external``, the object's name in its store and its name in the cache:
SHA-256 over the bytes below, encoded base64 URL-safe without padding (43 characters from ``[A-Za-z0-9_-]``)::

    serialized object  ||  0x00  ||  origin

where ``origin`` is the UTF-8 text ``<full table name>\\n<primary key as canonical JSON>[\\n<store>]`` — see
``djfs.external.origin_of``.  The origin is kept in ``~external`` beside the hash so that any reader (the cache,
the mount, ``gc``) can verify an object without knowing where it came from.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable

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
