"""The bytes behind the mount's files: cache files, blocks, parallel read-ahead, one download per block.

Every file of the mount is ``header + stored[data_offset : data_offset + n]`` (a plain byte range of a stored
object), a small file in memory (``row.json``, in-MySQL blobs), or a file decoded once into the disk cache (a
compressed value: ``ObjectCache.fill_derived``, one decode per host, kept across mounts).  A handle serves one open
file and answers reads as *pieces* (bytes, start, length) that the operations layer copies once, straight into
libfuse's buffer:

* **cached object** (the whole object is in the disk cache, checked once per process): the operations layer
  hands libfuse the file descriptor and position (no copy through Python); likewise a read that lies in one
  block file of the cache (a part a remount re-reads) once this process has checked all that file's blocks;
* **small object** (``<= whole_max``): filled whole into the cache on first open, verified against its content
  digest while it streams in; one download however many threads or processes open it;
* **large object**: read by blocks of ``block_size`` (256 KiB).  A miss fetches just the blocks the read needs
  (one ranged GET per run of missing blocks), so scattered reads cost about what they ask for, and misses of
  several threads (several preads, an mmap's page faults) are in flight at once.  Every block is single-flight
  (``SingleFlight``): however many readers want it, it is fetched once.  Blocks stay in a bounded memory LRU, and
  the blocks of one GET go to the disk cache as one file on its background writer (the cache keeps what was read;
  a sequential part is one file, read back in one go after a remount).  Each block's checksum is taken once, as
  it arrives: it checks the block, feeds the verifying pass and is the cache file's checksum.

**Read-ahead** of a sequential reader is a window of *parts* (``part_size``, 8 MiB: one ranged GET each) fetched
in parallel on a bounded pool, claimed block by block so other readers of the object wait for them instead of
fetching them again.  Once a second read proves the reader sequential, the window reaches as far ahead as the
reader has read sequentially (at least a block), up to ``readahead`` parts, cut into ``readahead`` requests
(from a block up to a part each: all connections work from a stream's start); nothing is fetched beyond it, so a
reader that stops early has cost at most about twice what it read.  Reads that come a little out of order
(libfuse's threads hand over the kernel's read-ahead requests in any order) continue the stream.  A part that
fails is retried (``part_retries``); if it still fails its blocks are handed back and whoever waits fetches them
itself.

**Verification** (``verify``, on unless ``verify-reads = size``): a block from the store is checked against the
object's block checksums when they are known (recorded when the object was first verified whole: by a library
fetch or a fill on this host, by an upload from this host, or by the mount itself — see below); a block from the
disk cache against its own checksum.  When the checksums are not known yet, the mount computes the content
digest of the object as its blocks arrive from the store in order (a sequential first read; the thread that brings
the next block hashes, the others park theirs); when the last block
is in, a match records the checksums (from then on every block read is checked) and a mismatch drops what was
cached, logs it, and fails every later read of the object with EIO.  Scattered reads of an object nobody ever
read whole are checked for length only (and, once in the cache, against their cache checksum).

Failures: a store error reaches the reader as an exception (the operations layer answers EIO); a failed block is
remembered for ``failure_ttl`` seconds so the kernel's retries and read-ahead fail fast instead of each waiting
for the store's timeout.  Nothing here blocks without a bound: every request has the store's timeout.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import Counter, OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Protocol

from cachetools import LRUCache, TTLCache

from .. import hashing
from ..cache import CacheError, CheckedFile, ObjectCache
from ..cache.through import read_object
from ..errors import CorruptObjectError, MissingObjectError, StoreError
from ..hashing import ObjectId
from ..singleflight import SingleFlight
from ..stores import Store
from ..stores.verified import check_range

log = logging.getLogger(__name__)

MiB = 1 << 20
READ_PIECE = 1 * MiB          # pieces of a whole-object fill's single GET
SEQUENTIAL_SLACK = 2 * MiB    # how far out of order the kernel's read-ahead requests may reach the daemon
PASS_PENDING = 64 * MiB       # bytes a verifying pass may hold for blocks that arrived ahead of its position
MAX_PASSES = 8                # objects verified from their blocks at once (each holds at most PASS_PENDING)
RECENT_BLOCKS = 65_536        # blocks whose fetches are remembered for blocks_fetched_again (16 GiB of 256 KiB)
FD_SEGMENTS = 64              # block files a handle keeps open for libfuse's reads by descriptor
MAX_SEGMENTS = 8              # block files one read may be served from by descriptor
RENDER_VERSION = "v1"         # of decoded files in the cache: bump when views.render changes its output


class Stats:
    """Counters the mount exposes (``getfattr -n user.djfs.stats MOUNTPOINT``): requests, bytes, hits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter = Counter()
        # (object, block) -> times fetched, for the most recent blocks only: a daemon's life reads without bound
        self._blocks: LRUCache = LRUCache(maxsize=RECENT_BLOCKS)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def fetched_blocks(self, key: str, first: int, count: int) -> None:
        with self._lock:
            for index in range(first, first + count):
                times = self._blocks.get((key, index), 0) + 1
                self._blocks[(key, index)] = times
                if times > 1:
                    self._counters["blocks_fetched_again"] += 1
            self._counters["blocks_fetched"] += count

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._counters)


@dataclass(frozen=True)
class StoredObject:
    """One external object: its identity (key and content digest), its size, and where it is."""

    oid: ObjectId
    size: int
    store: Store
    key: str

    @property
    def hash(self) -> str:
        return self.oid.key


#: a piece of a read: (bytes, start, length) — the reply is the concatenation of the pieces
Piece = tuple[bytes | bytearray, int, int]
#: a piece of a read that libfuse reads itself: (file descriptor, position, length)
Segment = tuple[int, int, int]


class Handle(Protocol):
    size: int

    def pieces(self, offset: int, size: int) -> list[Piece]: ...

    def fd_segments(self, offset: int, size: int) -> list[Segment] | None: ...

    def close(self) -> None: ...


def join(pieces: list[Piece]) -> bytes:
    """The bytes of a read's pieces (the operations layer can copy them into libfuse's buffer directly)."""
    if len(pieces) == 1 and pieces[0][1] == 0 and pieces[0][2] == len(pieces[0][0]):
        return pieces[0][0]
    return b"".join(memoryview(data)[start:start + length] for data, start, length in pieces)


class MemoryHandle:
    """A file held in memory (row.json, in-MySQL blobs; a decoded value the disk cache can't keep)."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.size = len(content)

    def pieces(self, offset: int, size: int) -> list[Piece]:
        end = min(offset + size, self.size)
        return [(self.content, offset, end - offset)] if offset < end else []

    def fd_segments(self, offset: int, size: int) -> list[Segment] | None:
        return None

    def close(self) -> None:
        self.content = b""


class _ViewHandle:
    """A file that is ``header + object[data_offset:]``: the header from memory, the rest from the object."""

    header: bytes
    data_offset: int
    size: int

    def pieces(self, offset: int, size: int) -> list[Piece]:
        end = min(offset + size, self.size)
        hlen = len(self.header)
        pieces: list[Piece] = []
        if offset < min(end, hlen):
            pieces.append((self.header, offset, min(end, hlen) - offset))
            offset = hlen
        if offset < end:
            pieces += self._object_pieces(self.data_offset + offset - hlen, self.data_offset + end - hlen)
        return pieces

    def _object_pieces(self, start: int, stop: int) -> list[Piece]:
        raise NotImplementedError


class FileHandle(_ViewHandle):
    """``header + data[data_offset:]`` of a checked cache file (kept open: eviction-proof)."""

    def __init__(self, file: CheckedFile, header: bytes, data_offset: int, size: int) -> None:
        self._file = file
        self.fd = file.fd
        self.header = header
        self.data_offset = data_offset
        self.size = size

    def fd_segments(self, offset: int, size: int) -> list[Segment] | None:
        """[(fd, position, length)] when the request lies in the data part: libfuse can read it itself."""
        hlen = len(self.header)
        if offset < hlen or offset >= self.size:
            return None
        return [(self.fd, self.data_offset + offset - hlen, min(size, self.size - offset))]

    def _object_pieces(self, start: int, stop: int) -> list[Piece]:
        data = self._file.read(start, stop - start)
        return [(data, 0, len(data))]

    def close(self) -> None:
        self._file.close()


class BlockHandle(_ViewHandle):
    """``header + object[data_offset:]`` of a large object read by blocks, with parallel read-ahead."""

    def __init__(self, reader: "Reader", obj: StoredObject, header: bytes, data_offset: int, size: int) -> None:
        self.reader = reader
        self.obj = obj
        self.header = header
        self.data_offset = data_offset
        self.size = size
        self._lock = threading.Lock()
        self._expect: int | None = None   # object offset right after the last read
        self._ahead: _Readahead | None = None
        # block files served by descriptor, most recent last: (object offset of their data, its end, file); held
        # open (up to FD_SEGMENTS) so that libfuse, which reads the descriptor after ``fd_segments`` returns,
        # never reads a descriptor closed (or reused) meanwhile
        self._segments: deque[tuple[int, int, CheckedFile]] = deque(maxlen=FD_SEGMENTS)

    def fd_segments(self, offset: int, size: int) -> list[Segment] | None:
        """(fd, position, length) of each block file the request lies in, when every one of them was checked whole
        by this process: libfuse reads them itself, no copy through Python.  None otherwise (then ``pieces``), and
        when the blocks are in memory: a cold read's blocks, just fetched and checked, are copied from there rather
        than each part file read back and checked whole first (measured: 0.1-0.2 s less daemon CPU per GiB, and the
        read-ahead, which follows the copied reads, keeps its 8 MiB parts)."""
        hlen = len(self.header)
        if offset < hlen or offset >= self.size:
            return None
        start = self.data_offset + offset - hlen
        stop = start + min(size, self.size - offset)
        if self.reader.in_memory(self.obj, start, stop):
            return None  # fresh from the store (a cold read): copied from memory, no whole-file check of its file
        segments: list[Segment] = []
        position = start
        while position < stop:
            found = self._segment_at(position)
            if found is None or len(segments) == MAX_SEGMENTS:
                return None
            begin, end, file = found
            take = min(stop, end) - position
            segments.append((file.fd, position - begin, take))
            position += take
        # a reader served from the cache is followed too: where the cache has a gap (a part evicted), the
        # read-ahead has fetched it by the time the reader gets there
        self._follow(start, stop, (stop - 1) // self.reader.block_size)
        self.reader.stats.add("reads_by_descriptor")
        return segments

    def _segment_at(self, start: int) -> tuple[int, int, CheckedFile] | None:
        """(object offset of its data, its end, file) of a checked block file holding object offset ``start``."""
        with self._lock:
            for segment in reversed(self._segments):
                if segment[0] <= start < segment[1]:
                    return segment
        found = self.reader.cached_segment(self.obj, start)
        if found is None:
            return None
        segment = (found[0], found[0] + found[1].size, found[1])
        with self._lock:
            self._segments.append(segment)
        if segment[1] < self.obj.size:  # a sequential reader goes on into the next file: check it meanwhile
            self.reader.check_ahead(self.obj, segment[1])
        return segment

    def _object_pieces(self, start: int, stop: int) -> list[Piece]:
        block_size = self.reader.block_size
        first, last = start // block_size, (stop - 1) // block_size
        self._follow(start, stop, last)
        pieces = []
        for index, data in zip(range(first, last + 1), self.reader.blocks(self.obj, first, last)):
            base = index * block_size
            begin, finish = max(start, base) - base, min(stop, base + len(data)) - base
            if finish > begin:
                pieces.append((data, begin, finish - begin))
        return pieces

    def _follow(self, start: int, stop: int, last: int) -> None:
        """Track sequential reading: a second read that continues the first starts the read-ahead window."""
        with self._lock:
            # a read that touches the neighbourhood of where the reader is continues it, whether it comes a little
            # early or late: libfuse's threads hand the kernel's read-ahead requests over out of order (measured:
            # 48 swaps of two neighbouring 1 MiB requests in a 1 GiB read, each of which had restarted the window)
            sequential = self._expect is not None and \
                self._expect - SEQUENTIAL_SLACK <= stop and start <= self._expect + SEQUENTIAL_SLACK
            self._expect = max(self._expect, stop) if sequential and self._expect is not None else stop
            if not sequential:
                if self._ahead is not None:
                    self.reader.stats.add("readahead_restarts")
                self._ahead = None  # the reader jumped: parts in flight finish, nothing more is claimed
                return
            if self._ahead is None:
                self._ahead = _Readahead(self.reader, self.obj, last + 1)
            ahead = self._ahead
        ahead.advance(last)

    def close(self) -> None:
        with self._lock:
            self._ahead = None
            self._segments.clear()  # the cache keeps its own block files open; the others close when dropped


def _runs(indexes: list[int]) -> list[list[int]]:
    """Sorted block indexes cut into runs of consecutive ones."""
    runs: list[list[int]] = []
    for index in indexes:
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


class _Retry(Exception):
    """A part gave up a block it had claimed: whoever waited for it fetches it itself."""


class _Readahead:
    """A sequential reader's window of parts ahead of it; see the module docstring."""

    def __init__(self, reader: "Reader", obj: StoredObject, first: int) -> None:
        self.reader = reader
        self.obj = obj
        self.first = first
        self.next = first                 # the first block not yet claimed by this window
        self.last = (obj.size - 1) // reader.block_size
        self._lock = threading.Lock()

    def advance(self, consumed: int) -> None:
        """The reader has read up to block ``consumed``: widen the window and claim what enters it."""
        reader = self.reader
        part = reader.part_blocks
        with self._lock:
            # as far ahead as the reader has come sequentially (at least a block), up to ``readahead`` parts: a
            # reader that stops early has cost at most about twice what it read (measured: numpy reading 10 MiB of
            # a .npy through a memory map made 25 MiB of GETs, 28-36 MiB when the window reached twice as far;
            # the window's requests go out together, so its growth is not what limits a stream)
            ahead = min(reader.readahead * part, max(1, consumed - self.first + 1))
            target = min(self.last, consumed + ahead)
            while self.next <= target:
                # the window in ``readahead`` requests (a block to a part each): every connection works from
                # the stream's start, not one request as large as a young window (measured: 0.85x -> 0.92x
                # s3transfer at 30 MiB/s per connection, with the window's restarts in ``_follow`` fixed)
                end = min(self.last, self.next + max(1, min(part, ahead // reader.readahead)) - 1)
                claimed = reader.claim_run(self.obj, self.next, end)
                self.next = end + 1
                if claimed:
                    reader.fetch_later(self.obj, claimed)


class _Pass:
    """The content digest of an object computed from its blocks as they come from the store, in order.

    The thread that brings the next block in order hashes it and the blocks waiting after it, outside the lock
    (SHA-256 releases the GIL): the threads that bring later blocks only park them and go on reading."""

    def __init__(self, obj: StoredObject, block_size: int) -> None:
        self.obj = obj
        self.block_size = block_size
        self.last = (obj.size - 1) // block_size
        self.next = 0                   # the first block not yet taken for hashing
        self.hashing = False            # a thread is hashing blocks
        self.state = obj.oid.hasher()
        self.sums: list[int] = []       # the blocks' checksums, in order (taken by the reader, not again here)
        self.pending: dict[int, tuple[bytes, list[int]]] = {}
        self.held = 0
        self.lock = threading.Lock()

    def offer(self, index: int, data: bytes, sums: list[int]) -> bool | None:
        """Feed a block and its checksums; True/False when the pass is complete (digest matched or not), None
        before that (or when another thread completes it).

        Raises ``_Abandon`` when blocks arrive too far out of order to keep."""
        with self.lock:
            if index < self.next or index in self.pending:
                return None
            if index > self.next and self.held + len(data) > PASS_PENDING:
                raise _Abandon()
            self.pending[index] = (data, sums)
            self.held += len(data)
            if self.hashing or index != self.next:
                return None
            self.hashing = True
        while True:
            with self.lock:
                item = self.pending.pop(self.next, None)
                if item is None:
                    self.hashing = False
                    return None
                self.held -= len(item[0])
                self.next += 1
                complete = self.next > self.last
            self.state.update(item[0])
            self.sums.extend(item[1])
            if complete:
                return self.obj.oid.matches(self.state)


class _Abandon(Exception):
    pass


class Reader:
    """Shared by all handles of a mount: the block flights and memory, the part pool, the cache."""

    def __init__(self, cache: ObjectCache, *, block_size: int = 256 * 1024, part_size: int = 8 * MiB,
                 whole_max: int = 64 * MiB, readahead: int = 8, threads: int = 8, memory: int = 256 * MiB,
                 failure_ttl: float = 1.0, part_retries: int = 2, verify: bool = True,
                 stats: Stats | None = None) -> None:
        if block_size % hashing.CHECK_BLOCK:
            raise ValueError(f"the block size must be a multiple of {hashing.CHECK_BLOCK} bytes")
        self.cache = cache
        self.block_size = block_size
        self.part_blocks = max(1, part_size // block_size)
        self.whole_max = whole_max
        self.readahead = max(1, readahead)
        self.part_retries = part_retries
        self.verify = verify
        self.stats = stats or Stats()
        self._lock = threading.Lock()
        self._flights: SingleFlight[tuple[str, int], bytes] = SingleFlight()
        # ``memory`` bounds the blocks this reader holds: those in the LRU and those only its disk writes still
        # hold (evicted before they were written), at most the cache's pending block writes
        self._memory: LRUCache = LRUCache(maxsize=max(4 * block_size, memory - cache.max_block_pending),
                                          getsizeof=len)
        self._unwritten: dict[tuple[str, int], bytes] = {}   # blocks queued for the disk cache
        self._failures: TTLCache = TTLCache(maxsize=10_000, ttl=failure_ttl)
        self._sums: LRUCache = LRUCache(maxsize=4096)        # key -> block sums recorded for it
        # keys with no sums recorded, asked again after the cache's rescan interval: a library fetch or another
        # daemon may record them meanwhile, and from then on this daemon's range reads of the object are checked
        self._no_sums: TTLCache = TTLCache(maxsize=4096, ttl=cache.rescan_interval)
        self._passes: OrderedDict[str, _Pass] = OrderedDict()
        self._corrupt: LRUCache = LRUCache(maxsize=4096)     # key -> what was found wrong
        self._advised: LRUCache = LRUCache(maxsize=4096)     # key -> the block its files are read ahead up to
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="djfs-parts")

    # -- opening -------------------------------------------------------------------------------------------

    def open_stored(self, obj: StoredObject, header: bytes, data_offset: int, size: int) -> Handle:
        """A handle on ``header + object[data_offset:]``: the cache file if cached (or small), else blocks."""
        if size - len(header) != obj.size - data_offset:
            raise CorruptObjectError(f"object {obj.hash}: its view ({size} bytes from {data_offset}) does not fit "
                                     f"its size {obj.size}")
        self._check_sound(obj)
        file = self.cache.open_object(obj.oid, obj.size)
        if file is None and obj.size <= self.whole_max:
            try:
                file = self.fill(obj)
            except CacheError as error:
                log.warning("can't cache %s whole (%s); reading it by blocks", obj.hash, error)
        if file is not None:
            self.stats.add("opens_cached")
            return FileHandle(file, header, data_offset, size)
        self.stats.add("opens_blocks")
        return BlockHandle(self, obj, header, data_offset, size)

    def fill(self, obj: StoredObject) -> CheckedFile:
        """The whole object in the cache, verified while it streams in (one download per host)."""
        def download(file: BinaryIO) -> None:
            self.stats.add("whole_downloads")
            self.stats.add("store_requests")
            with obj.store.open_range(obj.key, 0) as body:
                for offset in range(0, obj.size, READ_PIECE):
                    data = body.read_exact(min(READ_PIECE, obj.size - offset))
                    self.stats.add("store_bytes", len(data))
                    file.write(data)
        return self.cache.fill_object(obj.oid, obj.size, download)

    def whole(self, obj: StoredObject) -> bytes:
        """The verified bytes of a whole object (to decode it): from the cache, or the store (then cached)."""
        self._check_sound(obj)
        return bytes(read_object(obj.store, obj.key, obj.oid, obj.size, self.cache, self.verify))

    def open_decoded(self, key: str, kind: str, size: int, write: Callable[[BinaryIO], None]) -> Handle:
        """A file decoded by ``write(file)`` once into the disk cache, then served from there like an object.

        ``key`` names the source (an object's hash, a digest of an in-MySQL blob) and ``kind`` what is made of it
        (versioned, so a djfs that renders differently never serves an old file).  Concurrent openers wait for
        one decode.  When the cache can't keep the file (full disk, larger than the cache), it is decoded into
        memory for this open only.
        """
        def counted(file: BinaryIO) -> None:
            self.stats.add("decodes")
            write(file)
        try:
            file = self.cache.fill_derived(key, f"{kind}-{RENDER_VERSION}", size, counted)
        except CacheError as error:
            log.warning("can't keep a decoded file in the cache (%s); decoding it into memory", error)
            out = io.BytesIO()
            counted(out)
            return MemoryHandle(out.getvalue())
        self.stats.add("opens_decoded")
        return FileHandle(file, b"", 0, size)

    # -- blocks ----------------------------------------------------------------------------------------------

    def block_length(self, obj: StoredObject, index: int) -> int:
        return min(self.block_size, obj.size - index * self.block_size)

    def _held(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            data = self._memory.get(key)
            return data if data is not None else self._unwritten.get(key)

    def in_memory(self, obj: StoredObject, start: int, stop: int) -> bool:
        """Whether every block of object bytes ``start..stop`` is held in memory (its LRU order untouched)."""
        keys = [(obj.hash, index) for index in range(start // self.block_size, (stop - 1) // self.block_size + 1)]
        with self._lock:
            return all(key in self._memory or key in self._unwritten for key in keys)

    def cached_segment(self, obj: StoredObject, start: int) -> tuple[int, CheckedFile] | None:
        """(object offset of its data, file) of a block file holding object offset ``start`` that this process
        has checked whole; None when the object proved corrupt, or no such file is known.  (A block file is
        listed once it is complete on disk: a fresh block still in memory only, not yet written, is not found.)"""
        index = start // self.block_size
        with self._lock:
            if obj.hash in self._corrupt:
                return None
        try:
            found = self.cache.block_segment(obj.oid, index, self.block_size)
        except Exception as error:  # a broken cache is only a miss
            log.warning("cache read of block %d of %s failed: %s", index, obj.hash, error)
            return None
        if found is None:
            return None
        file, position = found
        return index * self.block_size - position, file

    def check_ahead(self, obj: StoredObject, start: int) -> None:
        """Check the block file holding object offset ``start`` whole on the part pool (a re-read's next file:
        read from the disk and checked while libfuse serves the current one), and have the kernel read the
        files after it, as far as the read-ahead window reaches, from the disk meanwhile (measured: a re-read
        after a remount waited for the disk one file at a time)."""
        window = self.readahead * self.part_blocks
        first = start // self.block_size
        end = first + window
        with self._lock:  # each file once per pass: the window moves a file at a time
            advised = self._advised.get(obj.hash, 0)
            if first + window < advised:  # the reader went back: a new pass (the page cache may have let go)
                advised = 0
            first = max(first, advised)
            self._advised[obj.hash] = max(end, first)

        def ahead() -> None:
            self.cached_segment(obj, start)
            if first < end:
                self.cache.advise_blocks(obj.oid, first, end, self.block_size)
        try:
            self._pool.submit(ahead)
        except RuntimeError:  # shutting down
            pass

    def blocks(self, obj: StoredObject, first: int, last: int) -> list[bytes | bytearray]:
        """Blocks ``first..last`` of an object: from memory, the disk cache or the store, each fetched once.

        The missing blocks this call owns are fetched here, one request per contiguous run; blocks other
        readers are fetching are waited for."""
        self._check_sound(obj)
        found: dict[int, bytes] = {}
        waiting: dict[int, Future] = {}
        owned: dict[int, Future] = {}
        for index in range(first, last + 1):
            data = self._held((obj.hash, index))
            if data is not None:
                found[index] = data
                continue
            future, owner = self._flights.claim((obj.hash, index))
            (owned if owner else waiting)[index] = future
        if owned:
            with self._lock:
                failure = next((self._failures[(obj.hash, i)] for i in owned if (obj.hash, i) in self._failures),
                               None)
            if failure is not None:
                for index, future in owned.items():
                    self._flights.fail((obj.hash, index), future, _Retry())
                raise StoreError(f"object {obj.hash} failed a moment ago: {failure}")
            self._fetch_owned(obj, owned, retries=0)
            for index, future in owned.items():
                found[index] = future.result()
        for index, future in waiting.items():
            try:
                found[index] = future.result()
            except _Retry:
                found[index] = self.blocks(obj, index, index)[0]
        self._check_sound(obj)  # this read may have completed a verifying pass that failed
        return [found[index] for index in range(first, last + 1)]

    def claim_run(self, obj: StoredObject, first: int, last: int) -> dict[int, Future]:
        """Claim the blocks of ``first..last`` that nobody holds or fetches, nor the disk cache keeps (for a
        read-ahead part: a cached block is read when asked for, mostly by descriptor, not ahead into memory)."""
        claimed = {}
        for index in range(first, last + 1):
            if self._held((obj.hash, index)) is not None or (obj.hash, index) in self._failures or \
                    self.cache.holds_block(obj.oid, index, self.block_size):
                continue
            future = self._flights.claim_new((obj.hash, index))
            if future is not None:
                claimed[index] = future
        return claimed

    def fetch_later(self, obj: StoredObject, claimed: dict[int, Future]) -> None:
        """Fetch claimed blocks on the part pool (read-ahead)."""
        def run() -> None:
            try:
                self._fetch_owned(obj, claimed, retries=self.part_retries)
            except Exception as error:
                log.info("read-ahead of %s stopped: %s", obj.hash, error)
        self.stats.add("parts")
        try:
            self._pool.submit(run)
        except RuntimeError:  # shutting down
            for index, future in claimed.items():
                self._flights.fail((obj.hash, index), future, _Retry())

    def _fetch_owned(self, obj: StoredObject, owned: dict[int, Future], retries: int) -> None:
        """Resolve owned flights: from the disk cache, else one ranged GET per contiguous run (retried)."""
        missing = []
        for run in _runs(sorted(owned)):
            try:
                cached = self.cache.get_blocks(obj.oid, run[0], len(run), self.block_size)
            except Exception as error:  # a broken cache is only a miss
                log.warning("cache read of blocks %d..%d of %s failed: %s", run[0], run[-1], obj.hash, error)
                cached = [None] * len(run)
            for index, data in zip(run, cached):
                if data is not None and len(data) == self.block_length(obj, index):
                    self._remember(obj, index, data)
                    self._flights.resolve((obj.hash, index), owned[index], data)
                else:
                    missing.append(index)
        runs = _runs(missing)
        error: BaseException | None = None
        for run in runs:
            if error is None:
                try:
                    self._fetch_run(obj, run, owned, retries)
                    continue
                except BaseException as failure:
                    error = failure
                    if isinstance(failure, Exception):
                        with self._lock:
                            for index in run:
                                if not owned[index].done():
                                    self._failures[(obj.hash, index)] = failure
            for index in run:
                if not owned[index].done():
                    self._flights.fail((obj.hash, index), owned[index], error if retries == 0 else _Retry())
        if error is not None and retries == 0:
            raise error

    def _fetch_run(self, obj: StoredObject, run: list[int], owned: dict[int, Future], retries: int) -> None:
        """One ranged GET for contiguous blocks, read block by block from the socket (one copy); each block is
        checked, remembered, delivered and cached as it arrives.  A failure is retried from the first block not
        yet delivered, ``retries`` times."""
        sums = self._sums_of(obj)
        position = 0
        batch: list[bytes] = []          # delivered blocks not yet handed to the disk cache, and their sums
        batch_sums: list[int] = []
        try:
            for attempt in range(retries + 1):
                start = run[position] * self.block_size
                length = sum(self.block_length(obj, index) for index in run[position:])
                try:
                    self.stats.add("store_requests")
                    with obj.store.open_range(obj.key, start, length) as body:
                        while position < len(run):
                            index = run[position]
                            block = body.read_exact(self.block_length(obj, index))
                            self.stats.add("store_bytes", len(block))
                            self.stats.fetched_blocks(obj.hash, index, 1)
                            block_sums = hashing.sums_of(block)  # once: to check it, to verify, to cache it
                            if sums:
                                check_range(obj.store, obj.key, sums, index * self.block_size, block, obj.size,
                                            block_sums)
                            else:  # before anyone gets it: the last block completes the digest
                                self._offer(obj, index, block, block_sums)
                            self._remember(obj, index, block, fresh=True)
                            self._flights.resolve((obj.hash, index), owned[index], block)
                            position += 1
                            batch.append(block)
                            batch_sums += block_sums
                            if len(batch) >= self.part_blocks:
                                self._cache_later(obj, index + 1 - len(batch), batch, batch_sums)
                                batch, batch_sums = [], []
                    return
                except MissingObjectError:
                    raise
                except StoreError as error:  # a dropped connection, a short body, bytes damaged on the way
                    if attempt == retries:
                        raise
                    self._retrying(obj, start, error)
        finally:  # the blocks delivered go to the cache as one file, whatever became of the rest
            if batch:
                self._cache_later(obj, run[position - 1] + 1 - len(batch), batch, batch_sums)

    def _retrying(self, obj: StoredObject, start: int, error: BaseException) -> None:
        self.stats.add("part_retries")
        log.info("part of %s from %d failed (%s); retrying", obj.hash, start, error)

    def _remember(self, obj: StoredObject, index: int, data: bytes, fresh: bool = False) -> None:
        """Keep a block in memory; one fresh from the store is also held until the disk cache has it."""
        key = (obj.hash, index)
        with self._lock:
            self._memory[key] = data
            if fresh:
                self._unwritten[key] = data

    def _cache_later(self, obj: StoredObject, first: int, blocks: list[bytes], sums: list[int]) -> None:
        """Consecutive fresh blocks to the disk cache as one file, on its background writer."""
        keys = [(obj.hash, index) for index in range(first, first + len(blocks))]

        def written() -> None:
            with self._lock:
                for key in keys:
                    self._unwritten.pop(key, None)
        self.cache.put_blocks_later(obj.oid, first, self.block_size, blocks, sums, done=written,
                                    keep=lambda: obj.hash not in self._corrupt)

    # -- verification ----------------------------------------------------------------------------------------

    def _check_sound(self, obj: StoredObject) -> None:
        with self._lock:
            problem = self._corrupt.get(obj.hash)
        if problem is not None:
            raise CorruptObjectError(problem)

    def _sums_of(self, obj: StoredObject) -> list[int] | None:
        if not self.verify:
            return None
        with self._lock:
            sums = self._sums.get(obj.hash)
            if sums is None and obj.hash in self._no_sums:
                return None
        if sums is None:
            sums = self.cache.get_sums(obj.oid, obj.size)
            with self._lock:
                if sums:
                    self._sums[obj.hash] = sums
                else:
                    self._no_sums[obj.hash] = True
        return sums or None

    def _offer(self, obj: StoredObject, index: int, data: bytes, sums: list[int]) -> None:
        """Feed a block from the store to the object's verifying pass (started by its first block)."""
        if not self.verify:
            return
        with self._lock:
            verifying = self._passes.get(obj.hash)
            if verifying is None:
                if index != 0:
                    return
                if len(self._passes) >= MAX_PASSES:  # the pass that progressed least recently gives way
                    self._passes.popitem(last=False)
                verifying = self._passes[obj.hash] = _Pass(obj, self.block_size)
            else:
                self._passes.move_to_end(obj.hash)
        try:
            outcome = verifying.offer(index, data, sums)
        except _Abandon:
            outcome = None
            self.stats.add("passes_abandoned")
            log.info("verifying %s from its blocks given up: they arrive too far out of order", obj.hash)
            with self._lock:
                self._passes.pop(obj.hash, None)
        if outcome is None:
            return
        with self._lock:
            self._passes.pop(obj.hash, None)
        if outcome:
            sums = verifying.sums
            with self._lock:
                self._sums[obj.hash] = sums
                self._no_sums.pop(obj.hash, None)
            self.stats.add("objects_verified")
            try:
                self.cache.put_sums(obj.oid, obj.size, sums)
            except CacheError as error:
                log.warning("block sums of %s not recorded: %s", obj.hash, error)
            return
        problem = (f"object {obj.key!r} in {obj.store.describe()} does not match its content digest ({obj.hash}): "
                   "corrupted or replaced; its cached blocks are dropped")
        log.error("%s", problem)
        self.stats.add("objects_corrupt")
        with self._lock:
            self._corrupt[obj.hash] = problem
            for key in [key for key in self._memory if key[0] == obj.hash]:
                del self._memory[key]
        self.cache.flush()
        self.cache.drop_blocks(obj.oid.key)

    def close(self) -> None:
        """Cancel queued parts, let those in flight land (each has the store's timeout), finish cache writes."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.cache.flush()
