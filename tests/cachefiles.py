"""Reading the cache's files in tests the way the cache does: the data, every block checked."""

from __future__ import annotations

import os

from djfs.cache.checked import CheckedFile


def cached_data(path: str | os.PathLike) -> bytes:
    """The data of a cache file; ``DamagedFile`` if its checksums don't hold (the cache would drop it)."""
    file = CheckedFile.open(os.fspath(path), None, "cache file")
    assert file is not None, f"{path} vanished"
    with file:
        return file.read(0, file.size)
