"""Which cache files hold which blocks of an object (the cache keeps a sequential part as one file of blocks).

A block file is ``blocks/<key>/<block size>-<first>`` (one block) or ``<block size>-<first>-<count>`` (``count``
consecutive blocks from ``first``, as one ranged GET brought them): a 1 GiB object read sequentially is 128 files
of 8 MiB, not 4096 of 256 KiB.  A block may be in several files (a block found damaged in a file of many is
fetched again and kept as a file of its own; two processes may cache overlapping runs): a reader tries each.

This process learns an object's files from one listing of its directory, then from its own writes and removals;
a listing older than ``max_age`` is read again, so files other processes wrote are found within that time.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from cachetools import LRUCache

_NAME = re.compile(r"([1-9][0-9]*)-(0|[1-9][0-9]*)(?:-([1-9][0-9]*))?")


def block_file_name(block_size: int, first: int, count: int = 1) -> str:
    """The name (in the object's directory) of the file holding ``count`` blocks from ``first``."""
    return f"{block_size}-{first}" if count == 1 else f"{block_size}-{first}-{count}"


def parse_block_file_name(name: str) -> tuple[int, int, int] | None:
    """(block size, first block, count) of a block file's name; None for anything else."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 1)


class _Listing:
    def __init__(self, listed: float) -> None:
        self.listed = listed
        self.files: dict[int, list[tuple[str, int, int]]] = {}   # block index -> [(file name, first, count)]

    def add(self, name: str, first: int, count: int) -> None:
        for index in range(first, first + count):
            holders = self.files.setdefault(index, [])
            if all(held != name for held, _, _ in holders):
                holders.append((name, first, count))
                holders.sort(key=lambda holder: holder[2])  # a block kept again alone (a repair) comes first

    def remove(self, name: str) -> None:
        parsed = parse_block_file_name(name)
        if parsed is None:
            return
        _, first, count = parsed
        for index in range(first, first + count):
            holders = [entry for entry in self.files.get(index, ()) if entry[0] != name]
            if holders:
                self.files[index] = holders
            else:
                self.files.pop(index, None)


class BlockFiles:
    """Per (object key, block size): the block files that hold each block; thread-safe, bounded in objects."""

    def __init__(self, listdir: Callable[[str], list[str]], max_age: float = 60.0, objects: int = 1024) -> None:
        self._listdir = listdir       # names in an object's directory (``blocks/<key>``), [] if there is none
        self.max_age = max_age
        self._lock = threading.Lock()
        self._listings: LRUCache = LRUCache(maxsize=objects)

    def _listing(self, key: str, block_size: int) -> _Listing:
        now = time.monotonic()
        with self._lock:
            listing = self._listings.get((key, block_size))
            if listing is not None and now - listing.listed <= self.max_age:
                return listing
        fresh = _Listing(now)
        for name in self._listdir(key):
            parsed = parse_block_file_name(name)
            if parsed is not None and parsed[0] == block_size:
                fresh.add(name, parsed[1], parsed[2])
        with self._lock:
            self._listings[(key, block_size)] = fresh
        return fresh

    def holding(self, key: str, block_size: int, index: int) -> list[tuple[str, int, int]]:
        """(file name, its first block, its block count) of every file known to hold block ``index``."""
        listing = self._listing(key, block_size)
        with self._lock:
            return list(listing.files.get(index, ()))

    def added(self, key: str, name: str) -> None:
        parsed = parse_block_file_name(name)
        if parsed is None:
            return
        with self._lock:
            listing = self._listings.get((key, parsed[0]))
            if listing is not None:
                listing.add(name, parsed[1], parsed[2])

    def removed(self, key: str, name: str | None = None) -> None:
        """A block file of ``key`` is gone (or, with no name, all of them)."""
        with self._lock:
            for (held, block_size), listing in list(self._listings.items()):
                if held != key:
                    continue
                if name is None:
                    del self._listings[(held, block_size)]
                else:
                    listing.remove(name)

    def clear(self) -> None:
        with self._lock:
            self._listings.clear()
