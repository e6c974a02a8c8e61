"""The bytes behind the mount's files: cache files, blocks, streaming read-ahead, one download per block.

Every file of the mount is ``header + stored[data_offset : data_offset + n]`` (a plain byte range of a stored
object), a small file in memory (``row.json``, in-MySQL blobs), or a file decoded once into the disk cache (a
compressed value: ``ObjectCache.fill_derived``, one decode per host, kept across mounts).  A handle serves one open
file and answers reads as *pieces* (bytes, start, length) that the operations layer copies once, straight into
libfuse's buffer:

* **cached object** (the whole, verified object is in the disk cache): reads are ``os.pread`` on the cache file,
  or better, the operations layer hands libfuse the file descriptor and position (no copy through Python);
* **small object** (``<= whole_max``): filled whole into the cache (verified against its hash) on first open,
  then as above; one download however many threads open it (the cache's per-hash lock);
* **large object**: read by blocks of ``block_size`` through ``ObjectCache.read_block`` (blocks persist in the
  disk cache).  Blocks live in a bounded in-memory map of futures, so however many readers want a block, it is
  downloaded once and the others wait for it.

Read-ahead is a *stream*: one GET from a block to the object's end (a plain GET from byte 0), read block by
block.  Its window (blocks claimed ahead of the reader) starts at one and grows by one every two blocks the reader
consumes, up to ``readahead``; the stream claims a block (puts its future in the map, so other readers wait for it
instead of fetching it) only when it enters the window and reads from the socket only what it claimed
(back-pressure).  So a whole sequential read is one request, while a reader of 1% of a file costs about one
block more than it reads.  A handle's first read at the start of the file opens a stream with a window of zero:
a whole-file reader gets its one request, a reader of the ``.npy`` header alone gets exactly one block.  A stream
ends at the object's end, at a block someone else has, when its reader jumps away or closes, or after idling.
Streamed blocks go to the disk cache on a writer thread; reading never waits for the cache disk (when the
writer is behind, a block is simply not cached).

Failures: a store error reaches the reader as an exception (the operations layer answers EIO); a failed block is
remembered for ``failure_ttl`` seconds so the kernel's retries and read-ahead fail fast instead of each waiting
for the store's timeout.  Nothing here blocks without a bound: every request has the store's timeout.
"""

from __future__ import annotations

import io
import logging
import threading
import weakref
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Protocol

from cachetools import TTLCache

from .. import hashing
from ..cache import CacheError, ObjectCache
from ..errors import CorruptObjectError, StoreError
from ..stores import Store
from ..stores.base import RangeStream, pread_all

log = logging.getLogger(__name__)

MiB = 1 << 20
DOWNLOAD_STEP = 16 * MiB      # pieces of a whole-object download
SEQUENTIAL_SLACK = 4 * MiB    # the kernel sends read-ahead requests slightly out of order
STREAM_IDLE = 10.0            # a stream whose reader went quiet this long gives up its connection and thread
SPECULATIVE_IDLE = 1.0        # the same for a stream its reader has not yet proven sequential (window 0)
RENDER_VERSION = "v1"         # of decoded files in the cache: bump when views.render changes its output


class Stats:
    """Counters the mount exposes (``getfattr -n user.djfs.stats MOUNTPOINT``): requests, bytes, hits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter = Counter()
        self._blocks: Counter = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def fetched_block(self, hash_: str, index: int) -> None:
        with self._lock:
            self._blocks[(hash_, index)] += 1
            if self._blocks[(hash_, index)] > 1:
                self._counters["blocks_fetched_again"] += 1
            self._counters["blocks_fetched"] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._counters)


@dataclass(frozen=True)
class StoredObject:
    """One external object: its identity and where it is."""

    hash: str
    size: int
    origin: bytes
    store: Store
    key: str


#: a piece of a read: (bytes, start, length) — the reply is the concatenation of the pieces
Piece = tuple[bytes, int, int]


class Handle(Protocol):
    size: int

    def pieces(self, offset: int, size: int) -> list[Piece]: ...

    def fd_segment(self, offset: int, size: int) -> tuple[int, int, int] | None: ...

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

    def fd_segment(self, offset: int, size: int) -> tuple[int, int, int] | None:
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
    """``header + object[data_offset:]`` where the whole object is a cache file (kept open: eviction-proof)."""

    def __init__(self, file: BinaryIO, header: bytes, data_offset: int, size: int) -> None:
        self._file = file
        self.fd = file.fileno()
        self.header = header
        self.data_offset = data_offset
        self.size = size

    def fd_segment(self, offset: int, size: int) -> tuple[int, int, int] | None:
        """(fd, position, length) when the request lies in the data part: libfuse can read it itself."""
        hlen = len(self.header)
        if offset < hlen or offset >= self.size:
            return None
        return self.fd, self.data_offset + offset - hlen, min(size, self.size - offset)

    def _object_pieces(self, start: int, stop: int) -> list[Piece]:
        data = pread_all(self.fd, stop - start, start)
        return [(data, 0, len(data))]

    def close(self) -> None:
        self._file.close()


class BlockHandle(_ViewHandle):
    """``header + object[data_offset:]`` of a large object read by blocks, with streaming read-ahead."""

    def __init__(self, reader: "Reader", obj: StoredObject, header: bytes, data_offset: int, size: int) -> None:
        self.reader = reader
        self.obj = obj
        self.header = header
        self.data_offset = data_offset
        self.size = size
        self._lock = threading.Lock()
        self._expect: int | None = None   # object offset right after the last read
        self._stream: _Stream | None = None

    def fd_segment(self, offset: int, size: int) -> tuple[int, int, int] | None:
        return None

    def _object_pieces(self, start: int, stop: int) -> list[Piece]:
        block_size = self.reader.block_size
        first, last = start // block_size, (stop - 1) // block_size
        self._follow(start, stop, last)
        pieces = []
        for index in range(first, last + 1):
            data = self.reader.block(self.obj, index)
            base = index * block_size
            begin, finish = max(start, base) - base, min(stop, base + len(data)) - base
            if finish > begin:
                pieces.append((data, begin, finish - begin))
        return pieces

    def _follow(self, start: int, stop: int, last: int) -> None:
        """Track sequential reading: keep this handle's stream a window ahead, start or drop it."""
        block_size = self.reader.block_size
        first = start // block_size
        with self._lock:
            opening = self._expect is None and start == self.data_offset  # a first read at the file's start
            sequential = self._expect is not None and self._expect - SEQUENTIAL_SLACK <= start <= \
                self._expect + SEQUENTIAL_SLACK
            self._expect = max(self._expect, stop) if sequential and self._expect is not None else stop
            stream = self._stream
            if stream is not None and (stream.done or not stream.near(first, last)):
                stream.cancel()
                stream = self._stream = None
            if stream is not None:
                stream.advance(last)
            elif sequential or opening:
                # a first read at the start may be a whole-file reader: stream it, but with no window until
                # the next read proves it sequential (a reader of the header alone costs nothing more)
                self._stream = self.reader.start_stream(self.obj, first, last, window=1 if sequential else 0)

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.cancel()
                self._stream = None


class _Retry(Exception):
    """A stream gave up a block it had claimed: whoever waited for it fetches it itself."""


class _NotCached(Exception):
    """Raised by a probe's fetch: the block is not in the disk cache."""


class _Stream:
    """One ranged GET from block ``first`` to the object's end, read block by block, a window ahead.

    The blocks the stream will deliver are claimed (their futures put in the reader's block map) as soon as they
    enter the window, so readers that want them wait for the stream instead of fetching them again; the stream
    only reads from the socket what it has claimed (back-pressure).  It ends at the object's end, at a block it
    could not claim (someone else has it), when cancelled, or after idling; claimed blocks it did not deliver are
    handed back (waiters then fetch them themselves).
    """

    def __init__(self, reader: "Reader", obj: StoredObject, first: int, future: Future, window: int,
                 max_window: int) -> None:
        self.reader = reader
        self.obj = obj
        self.first = first
        self.last = (obj.size - 1) // reader.block_size
        self.next = first                         # the block being read / to read next
        self.claimed = first                      # the last block claimed
        self.futures: dict[int, Future] = {first: future}
        self.closed = False                       # no more claims (a block was already available)
        self.consumer = first - 1                 # the furthest block the reader has asked for
        self.window = window
        self.max_window = max_window
        self.done = False
        self._cancelled = False
        self._cond = threading.Condition()

    def near(self, first: int, last: int) -> bool:
        """Whether a read of blocks ``first..last`` continues this stream (else the reader jumped away)."""
        return self.first - 1 <= last and first <= self.claimed + max(self.window, 1) + 1

    def advance(self, block: int, grow: bool = True) -> None:
        """The reader wants ``block``: widen the window (sequential reading) and claim what enters it."""
        with self._cond:
            if block > self.consumer:
                self.consumer = block
            if grow:
                # grow slowly: a short read costs about one extra block, a long one reaches the full window
                self.window = min(self.max_window, max(self.window, 1 + (self.consumer - self.first + 1) // 2))
            self._claim_window()

    def _claim_window(self) -> None:
        """Claim blocks up to the consumer plus the window; the caller holds ``_cond``."""
        target = min(self.last, self.consumer + self.window)
        while not self.closed and not self._cancelled and self.claimed < target:
            future = self.reader.claim(self.obj, self.claimed + 1)
            if future is None:
                self.closed = True
                break
            self.claimed += 1
            self.futures[self.claimed] = future
        self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def run(self) -> None:
        reader, obj = self.reader, self.obj
        body = None
        try:
            offset = self.first * reader.block_size
            body = reader.open_body(obj, offset)
            index = self.first
            while index <= self.last:
                with self._cond:
                    while not self._cancelled and index not in self.futures and not (self.closed and
                                                                                     index > self.claimed):
                        if not self._cond.wait(timeout=STREAM_IDLE if self.window else SPECULATIVE_IDLE):
                            self._cancelled = True
                    if self._cancelled or index not in self.futures:
                        return
                    future = self.futures.pop(index)
                try:
                    data = body.read_exact(reader.block_length(obj, index))
                except BaseException as error:
                    reader.abandon(obj, index, future, error)
                    raise
                reader.stats.fetched_block(obj.hash, index)
                reader.deliver(obj, index, future, data)
                index += 1
                with self._cond:
                    self.next = index
        except StoreError as error:
            log.info("read-ahead of %s stopped: %s", obj.hash, error)
        except BaseException:  # never let a stream thread die silently
            log.exception("read-ahead stream of %s failed", obj.hash)
        finally:
            with self._cond:
                self.done = True
                left, self.futures = self.futures, {}
            for index, future in left.items():
                reader.abandon(obj, index, future, _Retry())
            if body is not None:
                body.close()


class _Counted(RangeStream):
    """A store's stream whose bytes count towards the mount's statistics."""

    def __init__(self, stream: RangeStream, stats: Stats) -> None:
        self._stream, self._stats = stream, stats

    def read_exact(self, length: int) -> bytes:
        data = self._stream.read_exact(length)
        self._stats.add("store_bytes", len(data))
        return data

    def close(self) -> None:
        self._stream.close()


class Reader:
    """Shared by all handles of a mount: the block map, the read-ahead threads, the cache."""

    def __init__(self, cache: ObjectCache, *, block_size: int = 2 * MiB, whole_max: int = 64 * MiB,
                 readahead: int = 8, threads: int = 4, memory: int = 256 * MiB,
                 failure_ttl: float = 1.0, stats: Stats | None = None) -> None:
        self.cache = cache
        self.block_size = block_size
        self.whole_max = whole_max
        self.readahead = max(1, readahead)
        self.stats = stats or Stats()
        self.max_blocks = max(4, memory // block_size)
        self._lock = threading.Lock()
        self._blocks: OrderedDict[tuple[str, int], Future] = OrderedDict()
        self._unwritten: set[tuple[str, int]] = set()
        self._failures: TTLCache = TTLCache(maxsize=10_000, ttl=failure_ttl)
        self._streams = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="djfs-readahead")
        self._stream_slots = threading.BoundedSemaphore(threads)  # a stream only starts when a thread is free
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="djfs-cache-write")
        self._write_slots = threading.BoundedSemaphore(max(2, min(32, memory // block_size // 2)))
        self._live: weakref.WeakSet[_Stream] = weakref.WeakSet()

    # -- opening -------------------------------------------------------------------------------------------

    def open_stored(self, obj: StoredObject, header: bytes, data_offset: int, size: int) -> Handle:
        """A handle on ``header + object[data_offset:]``: the cache file if cached (or small), else blocks."""
        if size - len(header) != obj.size - data_offset:
            raise CorruptObjectError(f"object {obj.hash}: its view ({size} bytes from {data_offset}) does not fit "
                                     f"its size {obj.size}")
        file = self.cache.open(obj.hash)
        if file is None and obj.size <= self.whole_max:
            file = self._filled(obj, "reading it by blocks")
        if file is not None:
            self.stats.add("opens_cached")
            return FileHandle(file, header, data_offset, size)
        self.stats.add("opens_blocks")
        return BlockHandle(self, obj, header, data_offset, size)

    def fill(self, obj: StoredObject) -> None:
        """Put the whole object into the cache, verified (one download per host, whoever else asks)."""
        def download(file: BinaryIO) -> None:
            self.stats.add("whole_downloads")
            for offset in range(0, obj.size, DOWNLOAD_STEP):
                file.write(self.fetch(obj, offset, min(DOWNLOAD_STEP, obj.size - offset)))
        self.cache.fill(obj.hash, obj.size, obj.origin, download)

    def _filled(self, obj: StoredObject, instead: str) -> BinaryIO | None:
        """The object's cache file, filled first if need be; None when the cache can't keep it."""
        try:
            self.fill(obj)
        except CacheError as error:
            log.warning("can't cache %s whole (%s); %s", obj.hash, error, instead)
        return self.cache.open(obj.hash)

    def whole(self, obj: StoredObject) -> bytes:
        """The verified bytes of a whole object (to decode it): through the cache, or straight from the store."""
        file = self._filled(obj, "reading it from the store")
        if file is not None:
            with file:
                return pread_all(file.fileno(), obj.size, 0)
        data = b"".join(self.fetch(obj, offset, min(DOWNLOAD_STEP, obj.size - offset))
                        for offset in range(0, obj.size, DOWNLOAD_STEP))
        if hashing.object_hash(data, obj.origin) != obj.hash:
            raise CorruptObjectError(f"object {obj.hash} does not match its hash")
        return data

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

    # -- store access ----------------------------------------------------------------------------------------

    def fetch(self, obj: StoredObject, offset: int, length: int) -> bytes:
        """One ranged read of the store, checked for length."""
        self.stats.add("store_requests")
        data = obj.store.get_range(obj.key, offset, length)
        self.stats.add("store_bytes", len(data))
        if len(data) != length:
            raise CorruptObjectError(f"object {obj.hash} in {obj.store.describe()} is shorter than recorded")
        return data

    def open_body(self, obj: StoredObject, offset: int) -> RangeStream:
        """A stream of the object from ``offset`` to its end: one request where the store allows."""
        self.stats.add("store_requests")
        return _Counted(obj.store.open_range(obj.key, offset), self.stats)

    # -- blocks ----------------------------------------------------------------------------------------------

    def block_length(self, obj: StoredObject, index: int) -> int:
        return min(self.block_size, obj.size - index * self.block_size)

    def block(self, obj: StoredObject, index: int) -> bytes:
        """Block ``index`` of an object: from memory, the disk cache or the store, downloaded once."""
        key = (obj.hash, index)
        while True:
            with self._lock:
                future = self._blocks.get(key)
                owner = future is None
                if owner:
                    failure = self._failures.get(key)
                    if failure is not None:
                        raise StoreError(f"block {index} of {obj.hash} failed a moment ago: {failure}")
                    future = self._blocks[key] = Future()
                else:
                    self._blocks.move_to_end(key)
            if owner:
                break
            try:
                return future.result()
            except _Retry:
                continue
        try:
            def fetch() -> bytes:
                self.stats.fetched_block(obj.hash, index)
                return self.fetch(obj, index * self.block_size, self.block_length(obj, index))
            data = self.cache.read_block(obj.hash, index, self.block_size, fetch)
        except BaseException as error:
            with self._lock:
                self._blocks.pop(key, None)
                if isinstance(error, Exception):
                    self._failures[key] = error
            future.set_exception(error)
            raise
        future.set_result(data)
        self._trim()
        return data

    def claim(self, obj: StoredObject, index: int) -> Future | None:
        """Reserve a block for a stream; None if it is in memory, in flight or in the disk cache."""
        key = (obj.hash, index)
        with self._lock:
            if key in self._blocks or key in self._failures:
                return None
            future: Future = Future()
            self._blocks[key] = future
        try:
            data = self.cache.read_block(obj.hash, index, self.block_size, _not_cached)
        except _NotCached:
            return future
        except Exception:
            self.abandon(obj, index, future, _Retry())
            return None
        future.set_result(data)  # it was on disk: keep it in memory, the stream stops here
        self._trim()
        return None

    def abandon(self, obj: StoredObject, index: int, future: Future, error: BaseException) -> None:
        """A stream could not deliver a claimed block: waiters fetch it themselves (and see the real error)."""
        log.debug("read-ahead of block %d of %s stopped: %s", index, obj.hash, error)
        with self._lock:
            if self._blocks.get((obj.hash, index)) is future:
                del self._blocks[(obj.hash, index)]
        future.set_exception(_Retry())

    def deliver(self, obj: StoredObject, index: int, future: Future, data: bytes) -> None:
        """A stream's block: to its waiters now, to the disk cache in the background."""
        key = (obj.hash, index)
        with self._lock:
            self._unwritten.add(key)
        future.set_result(data)
        # reading never waits for the cache disk: when the writer is behind, this block is not cached
        if not self._write_slots.acquire(blocking=False):
            self.stats.add("blocks_not_cached")
            with self._lock:
                self._unwritten.discard(key)
        else:
            try:
                self._writer.submit(self._write_block, obj, index, data)
            except RuntimeError:  # shutting down
                self._write_slots.release()
                with self._lock:
                    self._unwritten.discard(key)
        self._trim()

    def _write_block(self, obj: StoredObject, index: int, data: bytes) -> None:
        try:
            self.cache.read_block(obj.hash, index, self.block_size, lambda: data)
        except Exception as error:
            log.warning("can't cache block %d of %s: %s", index, obj.hash, error)
        finally:
            with self._lock:
                self._unwritten.discard((obj.hash, index))
            self._write_slots.release()

    def start_stream(self, obj: StoredObject, first: int, last: int, window: int) -> _Stream | None:
        """Stream from the first block of ``first..last+1`` nobody has, unless no read-ahead thread is free."""
        if not self._stream_slots.acquire(blocking=False):
            return None
        for index in range(first, min(last + 1, (obj.size - 1) // self.block_size) + 1):
            future = self.claim(obj, index)
            if future is not None:
                break
        else:
            self._stream_slots.release()
            return None
        stream = _Stream(self, obj, index, future, window, self.readahead)
        stream.advance(last, grow=False)
        self._live.add(stream)
        self.stats.add("streams")

        def run() -> None:
            try:
                stream.run()
            finally:
                self._stream_slots.release()
        try:
            self._streams.submit(run)
        except RuntimeError:
            self._stream_slots.release()
            stream.cancel()
            for index, future in stream.futures.items():
                self.abandon(obj, index, future, _Retry())
            return None
        return stream

    def _trim(self) -> None:
        """Keep at most ``max_blocks`` finished blocks in memory (never one still being written to disk)."""
        with self._lock:
            excess = len(self._blocks) - self.max_blocks
            if excess <= 0:
                return
            for key in list(self._blocks):
                if excess <= 0:
                    break
                future = self._blocks[key]
                if future.done() and key not in self._unwritten:
                    del self._blocks[key]
                    excess -= 1

    def close(self) -> None:
        for stream in list(self._live):
            stream.cancel()
        self._streams.shutdown(wait=False, cancel_futures=True)
        self._writer.shutdown(wait=True)


def _not_cached() -> bytes:
    raise _NotCached()
