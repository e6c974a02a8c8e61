"""The local disk cache of external objects, shared by every process on a host (library, mount daemon, gc).

Objects are immutable per content digest, so a cached object never goes stale and needs no invalidation: the
cache only has to make sure that what it returns *is* the object.  Hence:

* every file is in the checked format (``checked``): data, an XXH3 per 256 KiB block, a footer.  Every read from
  the cache checks the blocks it returns; a damaged file (a torn write after a power loss, a flipped bit, a file
  someone edited) is dropped, counted (``damaged``) and reported as a miss, so the caller fetches the object
  again.  That is what lets the cache write **without fsync**: nothing it writes needs to survive a crash intact;
* what goes in is verified before: a whole object against its content digest (``ObjectId``) — while it is
  streamed in (``fill_object``) or by the caller that already checked the bytes in memory (``put_object``,
  whose block checksums, computed before the caller got its value, also catch a buffer changed meanwhile);
  blocks of large objects are checked by the reader against the object's *sums* when it has them;
* files are written to ``tmp/`` and renamed into ``objects/<k[0:2]>/<key>``, ``blocks/<key>/<block size>-<i>``
  (one block) or ``blocks/<key>/<block size>-<i>-<n>`` (``n`` blocks from ``i``: a sequential part in one file,
  ``blockfiles``), ``derived/<k[0:2]>/<key>.<kind>`` (a file decoded from an object) or ``sums/<k[0:2]>/<key>``
  (the object's block checksums, recorded when its bytes were verified whole: they let a byte-range read of a
  store be checked);
* ``*_later`` writes happen on a background thread (bounded bytes pending; a caller waits only when the writer is
  that far behind), so a first fetch costs nothing for being cached;
* one streaming fill per key at a time across threads and processes (``FillLocks``);
* the total size is bounded by least-recently-used eviction (``LruIndex``), which makes room *before* a file is
  renamed into place.  Use is recorded in the files' mtimes, so processes share one recency order; each
  process rescans the directories periodically to see the others' files;
* the cache outlives restarts; temporary files older than an hour (left by a crash) are removed at start;
* a full disk or any other failure of the cache's own files raises ``CacheError``: callers read the store.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from cachetools import LRUCache

from .. import hashing
from ..errors import CorruptObjectError, DjfsError
from ..hashing import ObjectId
from ..singleflight import SingleFlight
from .blockfiles import BlockFiles, block_file_name
from .checked import CheckedFile, CheckedWriter, DamagedFile, file_size
from .index import LruIndex
from .locks import FillLocks

log = logging.getLogger(__name__)

#: kinds of derived files: a short tag
_DERIVED_KIND = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_TOPS = ("objects", "blocks", "derived", "sums")
RECORD_SUMS_OVER = 4 << 20  # objects above this keep their block sums apart from their cached copy


class CacheError(DjfsError, OSError):
    """The cache could not keep an object (disk full, permissions …); read the object from its store instead."""


#: how much nicer than its process the background writer runs (Linux nice levels apply per thread)
WRITER_NICENESS = 10


def _yield_to_callers() -> None:
    """Run the background cache writer at a lower CPU priority than the callers it works for: a fill is only ever
    an optimisation, so on a busy machine it takes the idle time rather than the caller's (its queue is bounded:
    a caller waits only when ``max_pending`` bytes are behind)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0)
                       + WRITER_NICENESS)
    except OSError as error:  # not Linux, or a sandbox that refuses: the writer runs at the caller's priority
        log.debug("cache writer keeps its priority: %s", error)


class ObjectCache:
    """A size-bounded, process-shared disk cache of objects, blocks, derived files and block sums, by key."""

    def __init__(self, location: str | os.PathLike, max_size: int, *, rescan_interval: float = 60.0,
                 tmp_max_age: float = 3600.0, touch_interval: float = 10.0, max_pending: int = 256 << 20) -> None:
        if max_size < 0:
            raise ValueError("the cache size can't be negative")
        self.location = Path(location)
        self.max_size = int(max_size)
        self.rescan_interval = rescan_interval
        self.tmp_max_age = tmp_max_age
        self.max_pending = max_pending
        self._root = os.fspath(self.location)
        try:
            for part in (*_TOPS, "tmp", "locks"):
                os.makedirs(os.path.join(self._root, part), exist_ok=True)
        except OSError as error:
            raise CacheError(f"can't create the cache at {self._root!r}: {error.strerror or error}") from error
        self._index = LruIndex(touch_interval)
        self._locks = FillLocks(os.path.join(self._root, "locks"))
        self._lock = threading.Lock()
        self._last_scan = 0.0
        self._verified: LRUCache = LRUCache(maxsize=4096)   # name -> identity of a file checked whole
        self._block_files = BlockFiles(lambda key: _listdir(self._full(f"blocks/{key}")), rescan_interval)
        self._open_blocks: LRUCache = LRUCache(maxsize=64)  # name -> block file kept open (closed when dropped)
        self._bad_blocks: LRUCache = LRUCache(maxsize=4096)  # (name, block) found damaged in a file of many
        self._whole_blocks: LRUCache = LRUCache(maxsize=4096)  # name -> (identity, every block good) of block files
        # one check of a block file at a time: a re-read's reader that catches up with the file being checked
        # ahead of it waits for that check (measured: a third of a re-read's files were checked twice at once)
        self._whole_checks: SingleFlight[tuple[str, tuple], bool] = SingleFlight()
        self._counters = dict(hits=0, misses=0, fills=0, block_hits=0, block_misses=0, evictions=0, errors=0,
                              damaged=0, sums_hits=0, files_checked=0)
        self._pending = 0   # bytes queued for the background writer
        self._jobs = 0      # writes queued (an empty object is a write of no bytes)
        self._pending_cond = threading.Condition(self._lock)
        self._writer: tuple[int, ThreadPoolExecutor] | None = None
        self._remove_stale_temporaries()
        self._rescan()

    # -- names ----------------------------------------------------------------------------------------------

    @staticmethod
    def _object_name(key: str) -> str:
        return f"objects/{key[0:2]}/{key}"

    @staticmethod
    def _block_name(key: str, block_size: int, index: int, count: int = 1) -> str:
        # the block size is part of the name: processes configured with different sizes never mix blocks
        return f"blocks/{key}/{block_file_name(block_size, index, count)}"

    @staticmethod
    def _sums_name(key: str) -> str:
        return f"sums/{key[0:2]}/{key}"

    @staticmethod
    def _derived_name(key: str, kind: str) -> str:
        if not isinstance(key, str) or not hashing.KEY_PATTERN.match(key):
            raise ValueError(f"not a key of a derived file: {key!r}")
        if not isinstance(kind, str) or not _DERIVED_KIND.fullmatch(kind):
            raise ValueError(f"not a kind of derived file: {kind!r}")
        return f"derived/{key[0:2]}/{key}.{kind}"

    def _full(self, name: str) -> str:
        return os.path.join(self._root, name)

    def _count(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[counter] += amount

    # -- reading --------------------------------------------------------------------------------------------

    def _open(self, name: str, size: int | None, label: str, counter: str = "hits") -> CheckedFile | None:
        """The checked file under ``name`` (marked used), or None if missing or damaged (then dropped)."""
        file = self._open_checked(name, size, label)
        if file is None:
            return None
        self._touch(name, file_size(file.size))
        self._count(counter)
        return file

    def _open_checked(self, name: str, size: int | None, label: str) -> CheckedFile | None:
        """The checked file under ``name``, or None if missing (forgotten) or damaged (dropped)."""
        try:
            file = CheckedFile.open(self._full(name), size, label)
        except DamagedFile as error:
            self._drop_damaged(name, error)
            return None
        except OSError as error:
            log.warning("can't read %s from the cache: %s", name, error)
            self._count("errors")
            return None
        if file is None:  # evicted by another process meanwhile
            self._index.forget(name)
            self._forget_block_file(name)
        return file

    def _drop_damaged(self, name: str, error: BaseException) -> None:
        log.warning("%s: removed from the cache, it will be fetched again", error)
        self._count("damaged")
        self._remove(name)
        with self._lock:
            self._verified.pop(name, None)

    def _remove(self, name: str) -> None:
        """Remove a cache file and forget it (index, open block files, block listings)."""
        self._unlink(self._full(name))
        self._index.forget(name)
        self._forget_block_file(name)

    def _forget_block_file(self, name: str) -> None:
        if name.startswith("blocks/"):
            _, key, base = name.split("/", 2)
            with self._lock:
                self._open_blocks.pop(name, None)
            self._block_files.removed(key, base)

    @contextmanager
    def _checked(self, name: str) -> Iterator[None]:
        """Reads of an open cache file: a damaged block drops the file and raises ``DamagedFile`` on."""
        try:
            yield
        except DamagedFile as error:
            self._drop_damaged(name, error)
            raise

    def path(self, key: str) -> Path | None:
        """Where the cached object is (data, then its checksums), or None: for tests and tools."""
        hashing.validate_key(key)
        path = self._full(self._object_name(key))
        return Path(path) if os.path.exists(path) else None

    def get_object(self, oid: ObjectId, size: int) -> bytearray | None:
        """The cached object, every block checked; None when it is not cached (or was damaged: dropped)."""
        name = self._object_name(oid.key)
        file = self._open(name, size, f"cached object {oid.key}")
        if file is None:
            self._count("misses")
            return None
        with file:
            buffer = bytearray(size)
            try:
                with self._checked(name):
                    file.read_into(memoryview(buffer))
            except DamagedFile:
                self._count("misses")
                return None
        return buffer

    def open_object(self, oid: ObjectId, size: int) -> CheckedFile | None:
        """The cached object opened, checked whole once per process (libfuse then reads it by descriptor)."""
        return self._open_verified(self._object_name(oid.key), size, f"cached object {oid.key}")

    def _open_verified(self, name: str, size: int, label: str) -> CheckedFile | None:
        """A cache file opened and checked whole (once per process); None if missing or damaged (dropped)."""
        file = self._open(name, size, label)
        if file is None:
            self._count("misses")
            return None
        try:
            self._verify_once(name, file)
        except DamagedFile:
            file.close()
            self._count("misses")
            return None
        return file

    def _verify_once(self, name: str, file: CheckedFile) -> None:
        identity = _identity(file.fd)
        with self._lock:
            if self._verified.get(name) == identity:
                return
        with self._checked(name):
            file.verify()
        with self._lock:
            self._verified[name] = identity

    def get_block(self, oid: ObjectId, index: int, block_size: int) -> bytes | None:
        """Block ``index`` (bytes ``index*block_size`` …) from the cached object or a block file, checked.

        A damaged block in a file of many blocks is a miss for that block only (the file's other blocks stay
        good; the block, fetched again, is kept as a file of its own); a damaged file of one block is dropped."""
        if index < 0 or block_size <= 0:
            raise ValueError("a block needs a non-negative index and a positive block size")
        whole = self._object_name(oid.key)
        file = self._open(whole, None, f"cached {whole}", counter="block_hits")
        if file is not None:
            with file:
                try:
                    with self._checked(whole):
                        return file.read(index * block_size, block_size)
                except DamagedFile:
                    pass
        for name, base, first in self._holders(oid, index, block_size):
            file = self._open_block_file(name)
            if file is None:
                continue
            try:
                data = file.read((index - first) * block_size, block_size)
            except DamagedFile as error:
                if base == block_file_name(block_size, first):
                    self._drop_damaged(name, error)
                else:
                    log.warning("%s: block %d will be fetched again", error, index)
                    self._count("damaged")
                    with self._lock:
                        self._bad_blocks[(name, index)] = True
                continue
            except OSError as error:
                log.warning("can't read %s from the cache: %s", name, error)
                self._count("errors")
                continue
            self._touch(name, file_size(file.size))
            self._count("block_hits")
            return data
        self._count("block_misses")
        return None

    def get_blocks(self, oid: ObjectId, first: int, count: int, block_size: int) -> list[bytes | bytearray | None]:
        """Blocks ``first .. first+count-1`` (None for each miss), checked.  The blocks one block file holds are
        read in one go (a re-read after a remount reads parts, not 256 KiB at a time); where that fails (a
        damaged block), block by block, so that only the damaged one is a miss."""
        found: list[bytes | bytearray | None] = [None] * count
        index, end = first, first + count
        while index < end:
            blocks, run = self._run_from_file(oid, index, end, block_size)
            if blocks is not None:
                found[index - first:index - first + run] = blocks
            else:
                for number in range(index, index + run):
                    found[number - first] = self.get_block(oid, number, block_size)
            index += run
        return found

    def _run_from_file(self, oid: ObjectId, index: int, end: int, block_size: int) -> \
            tuple[list[bytearray] | None, int]:
        """The blocks from ``index`` (before ``end``) that one block file holds, if more than one, read in one
        ``preadv``, and how many; (None, how many to read block by block) if it holds one, or any is damaged."""
        if block_size % hashing.CHECK_BLOCK:
            return None, 1
        for base, start, held in self._block_files.holding(oid.key, block_size, index):
            run = min(end, start + held) - index
            name = f"blocks/{oid.key}/{base}"
            file = self._open_block_file(name) if run > 1 else None
            offset = (index - start) * block_size
            if file is None or offset + (run - 1) * block_size >= file.size:
                continue
            lengths = [block_size] * (run - 1) + [min(block_size, file.size - offset - (run - 1) * block_size)]
            try:
                blocks = file.read_blocks(offset, lengths)
            except (DamagedFile, OSError):
                return None, run
            self._touch(name, file_size(file.size))
            self._count("block_hits", run)
            return blocks, run
        return None, 1

    def holds_block(self, oid: ObjectId, index: int, block_size: int) -> bool:
        """Whether a block file known to this process holds block ``index`` (not known damaged); no file read."""
        return any(True for _ in self._holders(oid, index, block_size))

    def _holders(self, oid: ObjectId, index: int, block_size: int) -> Iterator[tuple[str, str, int]]:
        """(cache name, file name, first block) of each block file known to hold block ``index``, but for those
        where it was found damaged."""
        for base, first, _ in self._block_files.holding(oid.key, block_size, index):
            name = f"blocks/{oid.key}/{base}"
            with self._lock:
                if (name, index) in self._bad_blocks:
                    continue
            yield name, base, first

    def block_segment(self, oid: ObjectId, index: int, block_size: int) -> tuple[CheckedFile, int] | None:
        """A block file holding block ``index`` that this process has checked whole (every block, once), and the
        position of the block in it: the mount hands libfuse (descriptor, position) instead of copying the
        bytes.  None when no such file is known, or the files holding the block have a damaged block (those are
        read block by block, ``get_blocks``, so that only the damaged block is a miss).

        The file is open: a renamed-over or evicted file still reads the content checked here; block files
        are renamed into place complete, so a file being written is never opened."""
        for name, _, first in self._holders(oid, index, block_size):
            file = self._open_block_file(name)
            if file is None or not self._whole_once(name, file):
                continue
            self._touch(name, file_size(file.size))
            self._count("block_hits")
            return file, (index - first) * block_size
        return None

    def advise_blocks(self, oid: ObjectId, index: int, end: int, block_size: int) -> None:
        """Have the kernel read the block files holding blocks ``index .. end - 1`` from the disk into its page
        cache now, in parallel (``POSIX_FADV_WILLNEED``): a sequential re-read then finds each file in memory
        when it gets there, instead of waiting for the disk one file at a time."""
        while index < end:
            holders = self._block_files.holding(oid.key, block_size, index)
            if not holders:
                index += 1
                continue
            base, first, count = holders[0]
            file = self._open_block_file(f"blocks/{oid.key}/{base}")
            if file is not None:
                file.advise()
            index = first + count   # the next file's first block

    def _whole_once(self, name: str, file: CheckedFile) -> bool:
        """Whether every block of a block file matches its checksum (checked once per process and identity)."""
        identity = _identity(file.fd)
        with self._lock:
            known = self._whole_blocks.get(name)
        if known is not None and known[0] == identity:
            return known[1]
        return self._whole_checks.do((name, identity), lambda: self._check_whole(name, identity, file))

    def _check_whole(self, name: str, identity: tuple, file: CheckedFile) -> bool:
        self._count("files_checked")
        try:
            file.verify()
            good = True
        except DamagedFile:
            good = False  # the damaged block is logged, counted and fetched again when read (get_blocks)
        with self._lock:
            self._whole_blocks[name] = (identity, good)
        return good

    def _open_block_file(self, name: str) -> CheckedFile | None:
        """A block file, kept open for the next blocks read from it (a file of many is read block by block)."""
        with self._lock:
            file = self._open_blocks.get(name)
        if file is not None:
            return file
        file = self._open_checked(name, None, f"cached {name}")
        if file is None:
            return None
        with self._lock:  # closed when its last reader drops it (another thread may be reading it now)
            self._open_blocks[name] = file
        return file

    def get_sums(self, oid: ObjectId, size: int) -> list[int] | None:
        """The block checksums of the object's verified bytes, if recorded (else None)."""
        count = -(-size // hashing.CHECK_BLOCK)
        name = self._sums_name(oid.key)
        file = self._open(name, 8 * count, f"block sums of {oid.key}", counter="sums_hits")
        if file is None:
            whole = self._open(self._object_name(oid.key), size, f"cached object {oid.key}", counter="sums_hits")
            if whole is None:
                return None
            with whole:
                return whole.sums  # a cached object's own checksums are those of its verified bytes
        with file:
            try:
                with self._checked(name):
                    table = file.read(0, 8 * count)
            except DamagedFile:
                return None
        return list(struct.unpack(f"<{count}Q", table))

    # -- writing --------------------------------------------------------------------------------------------

    def put_object(self, oid: ObjectId, data: bytes | bytearray | memoryview, sums: list[int] | None = None,
                   verify: bool = False) -> None:
        """Cache an object whose bytes the caller verified (or, with ``verify``, check them here).

        ``sums``, the block checksums taken when the bytes were verified, make sure bytes changed since (a
        caller's buffer written to) are never kept.
        """
        view = memoryview(data).cast("B")
        name = self._object_name(oid.key)
        if self._exists(name):
            return
        written = self._write(name, f"object {oid.key}", len(view), lambda file: file.write(view),
                              content=oid if verify else None, expect=sums)
        self._record_sums(oid, len(view), written)
        self.drop_blocks(oid.key)

    def put_object_later(self, oid: ObjectId, data: bytes | bytearray | memoryview, sums: list[int]) -> None:
        """``put_object`` on the background writer (failures are logged: the cache is only an optimisation)."""
        self._later(len(data), lambda: self.put_object(oid, data, sums), f"object {oid.key}")

    def fill_object(self, oid: ObjectId, size: int, write: Callable[[BinaryIO], None]) -> CheckedFile:
        """Cache an object by calling ``write(file)``, which streams its bytes; returns the cached file, open.

        One fill of a key at a time on this host; the others wait and open what it made.  The bytes are checked
        against ``size`` and the content digest: a mismatch raises ``CorruptObjectError`` and nothing is kept.
        Errors raised by ``write`` pass through; a cache failure (disk full …) raises ``CacheError``.
        """
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"object size must be a non-negative integer, not {size!r}")
        if file_size(size) > self.max_size:
            raise CacheError(f"object {oid.key} ({size} bytes) is larger than the whole cache at {self._root!r} "
                             f"({self.max_size} bytes); read it from the store")
        name = self._object_name(oid.key)
        for _ in range(3):  # made, then evicted at once by another process's fill: make it again
            file = self.open_object(oid, size)
            if file is not None:
                return file
            with self._fill_lock(oid.key):
                if not self._exists(name):
                    sums = self._write(name, f"object {oid.key}", size, write, content=oid)
                    self._record_sums(oid, size, sums)
                    self.drop_blocks(oid.key)
        raise CacheError(f"object {oid.key} is evicted as soon as it is cached: the cache at {self._root!r} "
                         "is too small")

    def put_block(self, oid: ObjectId, index: int, block_size: int, data: bytes) -> None:
        """Cache one block of an object, as the reader got (and, with the object's sums, checked) it."""
        self.put_blocks(oid, index, block_size, [data])

    def put_blocks(self, oid: ObjectId, first: int, block_size: int, blocks: Sequence[bytes],
                   sums: list[int] | None = None) -> None:
        """Cache consecutive blocks of an object from block ``first`` as one file (a part in one go).

        ``sums``, the XXH3 of each ``CHECK_BLOCK`` of the blocks (the reader took them to check the blocks), are
        used as they are when ``block_size`` is a multiple of ``CHECK_BLOCK`` (else the data is summed here)."""
        if not blocks:
            return
        if first < 0 or block_size <= 0:
            raise ValueError("blocks need a non-negative index and a positive block size")
        for number, data in enumerate(blocks):
            if len(data) > block_size or (number < len(blocks) - 1 and len(data) != block_size):
                raise ValueError(f"block {first + number} of {oid.key} has {len(data)} bytes: blocks are "
                                 f"{block_size} bytes (only the object's last may be shorter)")
        name = self._block_name(oid.key, block_size, first, len(blocks))
        with self._lock:
            damaged = [key for key in ((name, index) for index in range(first, first + len(blocks)))
                       if key in self._bad_blocks]
        if (self._exists(name) and not damaged) or self._exists(self._object_name(oid.key)):
            return
        known = sums if block_size % hashing.CHECK_BLOCK == 0 else None

        def produce(file: BinaryIO) -> None:
            for data in blocks:
                file.write(data)
        last = first + len(blocks) - 1
        self._write(name, f"blocks {first}..{last} of {oid.key}", sum(len(data) for data in blocks), produce,
                    sums=known)
        if damaged:  # the same part fetched again replaces its damaged file
            self._forget_block_file(name)
            with self._lock:
                for key in damaged:
                    self._bad_blocks.pop(key, None)
        self._block_files.added(oid.key, name.rsplit("/", 1)[1])

    def put_blocks_later(self, oid: ObjectId, first: int, block_size: int, blocks: Sequence[bytes],
                         sums: list[int] | None = None, done: Callable[[], None] | None = None,
                         keep: Callable[[], bool] | None = None) -> None:
        """``put_blocks`` on the background writer, unless ``keep()`` says no by then; ``done()`` is called when
        they are written (or failed, or skipped)."""
        def write() -> None:
            if keep is None or keep():
                self.put_blocks(oid, first, block_size, blocks, sums)
        self._later(sum(len(data) for data in blocks), write, f"blocks from {first} of {oid.key}", done,
                    self.max_block_pending)

    @property
    def max_block_pending(self) -> int:
        """Bytes of blocks that may wait for the background writer (a quarter of ``max_pending``)."""
        return self.max_pending // 4

    def put_sums(self, oid: ObjectId, size: int, sums: list[int]) -> None:
        """Record the block checksums of an object's bytes that matched its content digest."""
        if len(sums) != -(-size // hashing.CHECK_BLOCK):
            raise ValueError(f"{len(sums)} block sums for an object of {size} bytes")
        name = self._sums_name(oid.key)
        if self._exists(name):
            return
        table = struct.pack(f"<{len(sums)}Q", *sums)
        self._write(name, f"block sums of {oid.key}", len(table), lambda file: file.write(table))

    def _record_sums(self, oid: ObjectId, size: int, sums: list[int] | None) -> None:
        """A large object's sums outlive its cached copy: its byte-range reads of the store stay checked."""
        if sums is not None and size > RECORD_SUMS_OVER:
            try:
                self.put_sums(oid, size, sums)
            except CacheError as error:
                log.warning("block sums of %s not recorded: %s", oid.key, error)

    def discard(self, key: str) -> None:
        """Remove a cached object (found damaged by a reader): the next read fetches it again."""
        hashing.validate_key(key)
        name = self._object_name(key)
        self._unlink(self._full(name))
        self._index.forget(name)

    def _exists(self, name: str) -> bool:
        return os.path.exists(self._full(name))

    def _write(self, name: str, label: str, size: int, produce: Callable[[BinaryIO], None], *,
               content: ObjectId | None = None, expect: list[int] | None = None,
               sums: list[int] | None = None) -> list[int]:
        """Write ``produce(file)`` in the checked format to ``tmp/``, check it, rename it to ``name``: no fsync
        (the block checksums catch whatever a crash leaves).  Returns the block checksums (``sums`` when the
        caller already has them)."""
        temporary = self._full(f"tmp/{os.path.basename(name)}.{secrets.token_hex(6)}.tmp")
        disk = file_size(size)
        try:
            with self._cache_errors(label):
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
            with open(fd, "wb", buffering=0) as file:
                writer = CheckedWriter(file, label, size, content.hasher() if content is not None else None, sums)
                with self._cache_errors(label):
                    produce(writer)  # type: ignore[arg-type]
                    sums = writer.finish()
            if content is not None and not content.matches(writer.content):
                raise CorruptObjectError(f"{label} does not match its content digest: not cached")
            if expect is not None and sums != expect:
                raise CorruptObjectError(f"{label} changed after it was verified: not cached")
            with self._cache_errors(label), self._room(disk):
                os.makedirs(os.path.dirname(self._full(name)), exist_ok=True)
                os.replace(temporary, self._full(name))
                self._index.add(name, disk)
        except BaseException:
            self._unlink(temporary)
            self._count("errors")
            raise
        self._count("fills")
        self._evict(protect=name)
        return sums

    def _later(self, size: int, write: Callable[[], None], label: str,
               done: Callable[[], None] | None = None, limit: int | None = None) -> None:
        """Run ``write`` on the writer thread; wait only while more than ``limit`` bytes (``max_pending``) are
        queued.  Blocks (the mount's) get a quarter: their bytes are copies, a library's objects are the values
        the caller holds anyway."""
        limit = self.max_pending if limit is None else limit
        with self._pending_cond:
            while self._pending and self._pending + size > limit:
                self._pending_cond.wait()
            self._pending += size
            self._jobs += 1

        def run() -> None:
            try:
                write()
            except Exception as error:
                log.warning("not caching %s: %s", label, error)
            finally:
                if done is not None:
                    done()
                with self._pending_cond:
                    self._pending -= size
                    self._jobs -= 1
                    self._pending_cond.notify_all()
        try:
            self._executor().submit(run)
        except RuntimeError:  # the interpreter is shutting down: write it now
            run()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._writer is None or self._writer[0] != os.getpid():
                self._writer = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="djfs-cache-write",
                                                                initializer=_yield_to_callers))
            return self._writer[1]

    def flush(self) -> None:
        """Wait until every background write is done."""
        with self._pending_cond:
            while self._jobs:
                self._pending_cond.wait()

    def pending(self) -> int:
        with self._lock:
            return self._pending

    @contextmanager
    def _fill_lock(self, key: str) -> Iterator[None]:
        with self._cache_errors(f"lock {key}"):
            with self._locks.hold(key):
                yield

    @contextmanager
    def _cache_errors(self, label: str) -> Iterator[None]:
        """OS errors of the cache's own files become CacheError; djfs errors (from the store) pass through."""
        try:
            yield
        except DjfsError:
            raise
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(f"no space left for {label} in the cache at {self._root!r}; "
                                 "read it from the store") from error
            raise CacheError(f"can't cache {label} in {self._root!r}: {error.strerror or error}") from error

    # -- derived files ----------------------------------------------------------------------------------------

    def open_derived(self, key: str, kind: str, size: int) -> CheckedFile | None:
        """The derived file opened and checked (once per process), or None; a damaged one is removed."""
        name = self._derived_name(key, kind)
        return self._open_verified(name, size, f"derived file {name}")

    def fill_derived(self, key: str, kind: str, size: int, write: Callable[[BinaryIO], None]) -> CheckedFile:
        """Make the derived file by calling ``write(file)`` unless it exists; returns it opened for reading.

        One fill per (key, kind) on this host at a time: concurrent callers wait and open the one file.  A file
        whose length is not ``size`` is refused (``CorruptObjectError``) and nothing is kept; a cache failure
        raises ``CacheError``.
        """
        name = self._derived_name(key, kind)
        if file_size(size) > self.max_size:
            raise CacheError(f"{name} ({size} bytes) is larger than the whole cache at {self._root!r}")
        for _ in range(3):
            file = self.open_derived(key, kind, size)
            if file is not None:
                return file
            with self._fill_lock(f"{key}.{kind}"):
                if not self._exists(name):
                    self._write(name, name, size, write)
        raise CacheError(f"{name} is evicted as soon as it is made: the cache at {self._root!r} is too small")

    # -- the index and eviction ---------------------------------------------------------------------------------

    def drop_blocks(self, key: str) -> None:
        """Remove every cached block of an object (its whole copy replaces them, or it proved corrupt)."""
        directory = self._full(f"blocks/{key}")
        for name in _listdir(directory):
            self._remove(f"blocks/{key}/{name}")
        self._block_files.removed(key)
        try:
            os.rmdir(directory)
        except OSError:
            pass

    def _touch(self, name: str, size: int) -> None:
        if self._index.touch(name, size):
            try:
                os.utime(self._full(name))
            except OSError:
                pass

    def _rescan(self) -> None:
        """Rebuild the index from disk, ordered by mtime: sees the files other processes added or evicted."""
        found: list[tuple[float, str, int]] = []
        for top in _TOPS:
            for middle in _listdir(self._full(top)):
                for name in _listdir(self._full(f"{top}/{middle}")):
                    relative = f"{top}/{middle}/{name}"
                    try:
                        info = os.stat(self._full(relative))
                    except OSError:
                        continue
                    found.append((info.st_mtime, relative, info.st_size))
        self._index.replace(found)
        self._last_scan = time.monotonic()

    @contextmanager
    def _room(self, size: int) -> Iterator[None]:
        """Evict until ``size`` more bytes fit, then hold that room while the caller moves its file in."""
        self._index.reserve(size)
        try:
            self._evict()
            yield
        finally:
            self._index.unreserve(size)

    def _evict(self, protect: str | None = None) -> None:
        if time.monotonic() - self._last_scan > self.rescan_interval:
            self._rescan()
        victims = self._index.victims(self.max_size, protect)
        self._count("evictions", len(victims))
        for name in victims:
            self._unlink(self._full(name))
            self._forget_block_file(name)
            if name.startswith("blocks/"):
                try:
                    os.rmdir(os.path.dirname(self._full(name)))
                except OSError:
                    pass  # not empty

    # -- maintenance --------------------------------------------------------------------------------------

    def _remove_stale_temporaries(self) -> None:
        limit = time.time() - self.tmp_max_age
        for name in _listdir(self._full("tmp")):
            path = self._full(f"tmp/{name}")
            try:
                if os.stat(path).st_mtime < limit:
                    os.unlink(path)
            except OSError:
                pass

    def clear(self) -> None:
        """Remove every cached object, block, derived file and sums (of every process)."""
        self.flush()
        for top in _TOPS:
            for middle in _listdir(self._full(top)):
                directory = self._full(f"{top}/{middle}")
                for name in _listdir(directory):
                    self._unlink(os.path.join(directory, name))
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
        self._index.clear()
        self._block_files.clear()
        with self._lock:
            self._open_blocks.clear()
        self._last_scan = time.monotonic()

    def usage(self) -> int:
        """Bytes of the cache's files (as of the last scan plus this process's own changes)."""
        if time.monotonic() - self._last_scan > self.rescan_interval:
            self._rescan()
        return self._index.total

    def stats(self) -> dict[str, Any]:
        usage = self.usage()
        tops = self._index.counts()
        with self._lock:
            counters = dict(self._counters, writes_pending=self._pending)
        return dict(counters, location=self._root, usage=usage, max_size=self.max_size,
                    objects=tops["objects"], blocks=tops["blocks"], derived=tops["derived"], sums=tops["sums"])

    def __repr__(self) -> str:
        return f"ObjectCache({self._root!r}, max_size={self.max_size})"

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("can't remove %s from the cache: %s", path, error)


def _identity(fd: int) -> tuple[int, int, int, int]:
    """What tells an open file from another under the same name (a replaced file is checked again)."""
    info = os.fstat(fd)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
