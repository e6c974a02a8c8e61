"""Reading a whole object through the cache: what the library's fetch of any kind of object calls.

The cache answers if it holds the object (every block checked); else the store does, verified against the
content digest while it is read (``stores.verified``), and the caller gets its bytes at once: the cache is
filled afterwards on its background writer, from the same buffer, with the block checksums taken when the
bytes were verified (so a caller that writes into its buffer meanwhile never gets a wrong file cached).
"""

from __future__ import annotations

import logging

from ..errors import CorruptObjectError
from ..hashing import ObjectId
from ..stores.base import Store
from ..stores.verified import fetch_verified
from .checked import file_size
from .objects import ObjectCache

log = logging.getLogger(__name__)


def read_object(store: Store, key: str, oid: ObjectId, size: int, cache: ObjectCache | None,
                verify: bool = True) -> bytearray:
    """The object's bytes: from ``cache`` if it has them, else from ``store`` (then cached in the background).

    ``verify`` False (``verify-reads = size``) skips the content digest: only sizes are checked.  A mismatch
    raises ``CorruptObjectError`` naming the store; nothing is cached then.
    """
    if cache is not None:
        data = cache.get_object(oid, size)
        if data is not None:
            return data
    caching = cache is not None and file_size(size) <= cache.max_size
    data, sums = fetch_verified(store, key, oid, size, verify, sums=caching)
    if caching:
        cache.put_object_later(oid, data, sums)
    return data


__all__ = ["read_object", "CorruptObjectError"]
