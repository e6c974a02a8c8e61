"""The local disk cache of external objects (see ``objects`` for the design, ``checked`` for the file format)."""

from __future__ import annotations

import os
import threading

from .checked import CheckedFile, DamagedFile
from .objects import CacheError, ObjectCache

__all__ = ["CacheError", "CheckedFile", "DamagedFile", "ObjectCache", "open_cache"]

_caches: dict[tuple[str, int, int], ObjectCache] = {}
_caches_lock = threading.Lock()


def open_cache(location: str | os.PathLike, max_size: int | str) -> ObjectCache:
    """The process's cache at ``location`` (one instance, hence one index, per location, size and process)."""
    from ..settings import parse_size
    size = parse_size(max_size)
    key = (os.path.abspath(os.fspath(location)), size, os.getpid())
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = ObjectCache(key[0], size)
        return cache
