"""The local disk cache of external objects, shared by every process on a host (library, mount daemon, gc).

Objects are immutable per hash — the hash covers the object's bytes — so a cached object never goes stale and
needs no invalidation: the cache only has to make sure that what it keeps *is* the object.  Hence:

* a whole object is streamed into ``tmp/``, hashed while it is written, checked against its size and hash, then
  fsynced and renamed into ``objects/<h[0:2]>/<hash>``: a file under that name is always complete and verified,
  and a bad or partial download is never kept;
* one fill per hash at a time, across threads (a lock per hash) and processes (``flock`` on
  ``locks/<hash>``), re-checking after the lock is taken, so N readers of a missing object download it once;
* large objects can be cached in blocks, ``blocks/<hash>/<block size>-<index>``, so a partial read of a huge
  object fetches a bounded amount; blocks can't be verified on their own (only a whole object can), they are
  written atomically and trusted as the store returned them; a cached whole object wins over blocks (it
  replaces them);
* a file *derived* from an object (a compressed value decoded into the file the mount shows) is cached once as
  ``derived/<k[0:2]>/<key>.<kind>``, written the same way (temporary file, size check, fsync, rename), one fill
  per key at a time; it can't be hash-checked (nothing records its hash), so it is size-checked on every open,
  like a whole object without ``verify-reads=always``;
* the total size (objects + blocks + derived files) is bounded by least-recently-used eviction, which makes room
  *before* a finished file is renamed into place (a full cache never holds the new file and the old ones at
  once; concurrent writers may overlap by the files being unlinked at that moment).  Use is recorded in the files'
  mtimes (``os.utime``), so processes share one recency order; each process keeps an in-memory index built by a
  scan at start and rescanned periodically to see the files of other processes.  Removing a file another
  process has open is fine on POSIX: its reader keeps its open file;
* the cache never wipes itself at start (it outlives restarts); it only removes temporary files older than an
  hour, left by a crash;
* a full disk or any other cache failure raises ``CacheError``: callers fall back to reading the store directly.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import re
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from . import hashing
from .errors import CorruptObjectError, DjfsError
from .stores.base import pread_all

log = logging.getLogger(__name__)


#: keys and kinds of derived files: safe file names (a hash, or a hex digest, and a short tag)
_DERIVED_KEY = re.compile(r"[A-Za-z0-9_-]{16,128}")
_DERIVED_KIND = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_TOPS = ("objects", "blocks", "derived")


class CacheError(DjfsError, OSError):
    """The cache could not keep an object (disk full, permissions …); read the object from its store instead."""


class _HashingWriter:
    """The file a fill's writer gets: every byte written is counted (and hashed), and a run-on file stopped."""

    def __init__(self, file: BinaryIO, label: str, size: int, hashed: bool = True) -> None:
        self._file = file
        self._label = label
        self._size = size
        self.state = hashing.hasher() if hashed else None
        self.count = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.count + len(view) > self._size:
            raise CorruptObjectError(f"{self._label} is longer than its recorded size of {self._size} bytes")
        if self.state is not None:
            self.state.update(view)
        position = 0
        while position < len(view):  # a raw file may write less than asked
            position += self._file.write(view[position:]) or 0
        self.count += len(view)
        return len(view)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass  # unbuffered: a failing write raises at once, never later in a flush or close

    def tell(self) -> int:
        return self.count

    @property
    def closed(self) -> bool:
        return False


class ObjectCache:
    """A size-bounded, process-shared disk cache of whole objects and blocks, keyed by hash."""

    def __init__(self, location: str | os.PathLike, max_size: int, *, rescan_interval: float = 60.0,
                 tmp_max_age: float = 3600.0, touch_interval: float = 10.0) -> None:
        if max_size < 0:
            raise ValueError("the cache size can't be negative")
        self.location = Path(location)
        self.max_size = int(max_size)
        self.rescan_interval = rescan_interval
        self.tmp_max_age = tmp_max_age
        self.touch_interval = touch_interval
        self._root = os.fspath(self.location)
        try:
            for part in (*_TOPS, "tmp", "locks"):
                os.makedirs(os.path.join(self._root, part), exist_ok=True)
        except OSError as error:
            raise CacheError(f"can't create the cache at {self._root!r}: {error.strerror or error}") from error
        self._lock = threading.Lock()
        # relative path -> [size, last time we marked it used]; oldest use first
        self._index: OrderedDict[str, list] = OrderedDict()
        self._total = 0
        self._reserved = 0  # bytes of files about to be renamed into place, room already made for them
        self._last_scan = 0.0
        self._hash_locks: dict[str, list] = {}
        self._block_futures: dict[tuple[str, int, int], Future] = {}
        self._counters = dict(hits=0, misses=0, fills=0, block_hits=0, block_misses=0, evictions=0, errors=0)
        self._remove_stale_temporaries()
        self._rescan()

    # -- names ----------------------------------------------------------------------------------------------

    @staticmethod
    def _object_name(hash_: str) -> str:
        return f"objects/{hash_[0:2]}/{hash_}"

    @staticmethod
    def _block_name(hash_: str, block_size: int, index: int) -> str:
        # the block size is part of the name: processes configured with different sizes never mix blocks
        return f"blocks/{hash_}/{block_size}-{index}"

    def _full(self, name: str) -> str:
        return os.path.join(self._root, name)

    def _count(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[counter] += amount

    # -- whole objects --------------------------------------------------------------------------------------

    def path(self, hash_: str) -> Path | None:
        """The cached, verified object (marked as recently used), or None."""
        hashing.validate(hash_)
        found = self._lookup(hash_)
        self._count("hits" if found else "misses")
        return Path(found) if found else None

    def open(self, hash_: str) -> BinaryIO | None:
        """The cached object opened for reading, or None: unlike ``path``, immune to eviction right after."""
        hashing.validate(hash_)
        path = self._full(self._object_name(hash_))
        try:
            file = open(path, "rb", buffering=0)
        except FileNotFoundError:
            self._forget(self._object_name(hash_))
            self._count("misses")
            return None
        self._touch(self._object_name(hash_), os.fstat(file.fileno()).st_size)
        self._count("hits")
        return file  # type: ignore[return-value]

    def _lookup(self, hash_: str) -> str | None:
        name = self._object_name(hash_)
        path = self._full(name)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            self._forget(name)
            return None
        self._touch(name, size)
        return path

    def fill(self, hash_: str, size: int, origin: bytes, write: Callable[[BinaryIO], None]) -> Path:
        """Cache an object by calling ``write(file)``, which streams its bytes; returns the cached file.

        Only one fill of a hash runs at a time on this host; the others wait and find it cached.  The bytes are
        verified against ``size`` and the hash (over the bytes and ``origin``): a mismatch raises
        ``CorruptObjectError`` and nothing is kept.  Errors raised by ``write`` pass through (after the temporary
        file is removed); a cache failure (disk full …) raises ``CacheError``.
        """
        hashing.validate(hash_)
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"object size must be a non-negative integer, not {size!r}")
        if size > self.max_size:
            raise CacheError(f"object {hash_} ({size} bytes) is larger than the whole cache at {self._root!r} "
                             f"({self.max_size} bytes); read it from the store")
        found = self._lookup(hash_)
        if found:
            self._count("hits")
            return Path(found)
        with self._hash_lock(hash_):
            found = self._lookup(hash_)
            if not found:
                with self._file_lock(hash_):
                    found = self._lookup(hash_)  # another process may have filled it meanwhile
                    if not found:
                        found = self._write_object(hash_, size, origin, write)
        self._evict(protect=self._object_name(hash_))
        return Path(found)

    def discard(self, hash_: str) -> None:
        """Remove a cached object (found damaged by a reader): the next read fetches it again."""
        hashing.validate(hash_)
        name = self._object_name(hash_)
        self._unlink(self._full(name))
        self._forget(name)

    def put(self, hash_: str, data: bytes | bytearray | memoryview, origin: bytes) -> Path:
        """Cache an object held in memory (verified like any fill)."""
        view = memoryview(data).cast("B")
        return self.fill(hash_, len(view), origin, lambda file: file.write(view))

    def _write_object(self, hash_: str, size: int, origin: bytes, write: Callable[[BinaryIO], None]) -> str:
        def verify(writer: _HashingWriter) -> None:
            if hashing.finish(writer.state, origin) != hash_:
                raise CorruptObjectError(f"object {hash_} does not match its hash: not cached")
        final = self._write_file(self._object_name(hash_), f"object {hash_}", size, write, verify)
        self._drop_blocks(hash_)  # the whole object serves every range now
        return final

    def _write_file(self, name: str, label: str, size: int, write: Callable[[BinaryIO], None],
                    verify: Callable[[_HashingWriter], None] | None) -> str:
        """Stream ``write(file)`` into ``tmp/``, check its size (and ``verify``), fsync, rename to ``name``."""
        final = self._full(name)
        temporary = self._full(f"tmp/{os.path.basename(name)}.{secrets.token_hex(6)}.tmp")
        try:
            with self._cache_errors(label):
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                with open(fd, "wb", buffering=0) as file:
                    writer = _HashingWriter(file, label, size, hashed=verify is not None)
                    with self._cache_errors(label):
                        write(writer)  # type: ignore[arg-type]
                    if writer.count != size:
                        raise CorruptObjectError(f"{label} is truncated: {writer.count} of {size} bytes")
                    if verify is not None:
                        verify(writer)
                    with self._cache_errors(label):
                        os.fsync(file.fileno())
            except BaseException:
                self._unlink(temporary)
                raise
            with self._cache_errors(label), self._room(size):
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.replace(temporary, final)
                with self._lock:
                    self._add(name, size)
        except BaseException:
            self._unlink(temporary)
            self._count("errors")
            raise
        self._count("fills")
        return final

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

    @staticmethod
    def _derived_name(key: str, kind: str) -> str:
        if not isinstance(key, str) or not _DERIVED_KEY.fullmatch(key):
            raise ValueError(f"not a key of a derived file: {key!r}")
        if not isinstance(kind, str) or not _DERIVED_KIND.fullmatch(kind):
            raise ValueError(f"not a kind of derived file: {kind!r}")
        return f"derived/{key[0:2]}/{key}.{kind}"

    def open_derived(self, key: str, kind: str, size: int) -> BinaryIO | None:
        """The derived file opened for reading, or None; one of another size is damaged or stale: removed."""
        name = self._derived_name(key, kind)
        try:
            file = open(self._full(name), "rb", buffering=0)
        except FileNotFoundError:
            self._forget(name)
            self._count("misses")
            return None
        found = os.fstat(file.fileno()).st_size
        if found != size:
            file.close()
            log.warning("derived file %s has %d bytes, not %d: removed", name, found, size)
            self._unlink(self._full(name))
            self._forget(name)
            self._count("errors")
            return None
        self._touch(name, size)
        self._count("hits")
        return file  # type: ignore[return-value]

    def fill_derived(self, key: str, kind: str, size: int, write: Callable[[BinaryIO], None]) -> BinaryIO:
        """Make the derived file by calling ``write(file)`` unless it exists; returns it opened for reading.

        One fill per (key, kind) on this host at a time: concurrent callers wait and open the one file.  A file
        whose length is not ``size`` is refused (``CorruptObjectError``) and nothing is kept; a cache failure
        raises ``CacheError``.
        """
        name = self._derived_name(key, kind)
        if size > self.max_size:
            raise CacheError(f"{name} ({size} bytes) is larger than the whole cache at {self._root!r}")
        lock = f"{key}.{kind}"
        for _ in range(3):  # made, then evicted at once by another process's fill: make it again
            file = self.open_derived(key, kind, size)
            if file is not None:
                return file
            with self._hash_lock(lock), self._file_lock(lock):
                if not os.path.exists(self._full(name)):
                    self._write_file(name, name, size, write, None)
            self._evict(protect=name)
        raise CacheError(f"{name} is evicted as soon as it is made: the cache at {self._root!r} is too small")


    # -- blocks ---------------------------------------------------------------------------------------------

    def read_block(self, hash_: str, index: int, block_size: int, fetch: Callable[[], bytes]) -> bytes:
        """Block ``index`` (bytes ``index*block_size`` …, shorter at the end) of an object, cached.

        A cached whole object serves it; else a cached block; else ``fetch()`` is called — once, however many
        threads ask for the block at the same time — and its result cached (best effort: a cache failure is
        logged and the bytes are returned anyway).
        """
        hashing.validate(hash_)
        if index < 0 or block_size <= 0:
            raise ValueError("a block needs a non-negative index and a positive block size")
        data = self._cached_block(hash_, index, block_size)
        if data is not None:
            return data
        key = (hash_, block_size, index)
        with self._lock:
            future = self._block_futures.get(key)
            owner = future is None
            if owner:
                future = self._block_futures[key] = Future()
        assert future is not None
        if not owner:
            return future.result()
        try:
            data = self._cached_block(hash_, index, block_size)  # filled while we looked for a future?
            if data is None:
                self._count("block_misses")
                data = bytes(fetch())
                if len(data) > block_size:
                    raise ValueError(f"fetched block {index} of {hash_} has {len(data)} bytes, more than the "
                                     f"block size {block_size}")
                self._store_block(hash_, index, block_size, data)
            future.set_result(data)
            return data
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            with self._lock:
                del self._block_futures[key]

    def _cached_block(self, hash_: str, index: int, block_size: int) -> bytes | None:
        whole = self._full(self._object_name(hash_))
        try:
            fd = os.open(whole, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            pass
        else:
            try:
                size = os.fstat(fd).st_size
                data = pread_all(fd, block_size, index * block_size)
            finally:
                os.close(fd)
            self._touch(self._object_name(hash_), size)
            self._count("block_hits")
            return data
        name = self._block_name(hash_, block_size, index)
        try:
            with open(self._full(name), "rb", buffering=0) as file:
                data = file.read()
        except FileNotFoundError:
            self._forget(name)
            return None
        self._touch(name, len(data))
        self._count("block_hits")
        return data

    def _store_block(self, hash_: str, index: int, block_size: int, data: bytes) -> None:
        if len(data) > self.max_size:
            return
        name = self._block_name(hash_, block_size, index)
        temporary = self._full(f"tmp/{hash_}.{block_size}-{index}.{secrets.token_hex(6)}.tmp")
        try:
            write_durably(temporary, data)  # blocks can't be verified later: never keep a torn one after a crash
            with self._room(len(data)):
                os.makedirs(os.path.dirname(self._full(name)), exist_ok=True)
                os.replace(temporary, self._full(name))
                with self._lock:
                    self._add(name, len(data))
        except OSError as error:
            self._unlink(temporary)
            self._count("errors")
            log.warning("not caching block %d of %s in %s: %s", index, hash_, self._root, error)

    def _drop_blocks(self, hash_: str) -> None:
        directory = self._full(f"blocks/{hash_}")
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            self._unlink(os.path.join(directory, name))
            self._forget(f"blocks/{hash_}/{name}")
        try:
            os.rmdir(directory)
        except OSError:
            pass

    # -- the index and eviction ---------------------------------------------------------------------------------

    def _add(self, name: str, size: int) -> None:
        """Record a file as just used; the caller holds ``_lock``."""
        entry = self._index.pop(name, None)
        if entry is not None:
            self._total -= entry[0]
        self._index[name] = [size, time.time()]
        self._total += size

    def _forget(self, name: str) -> None:
        with self._lock:
            entry = self._index.pop(name, None)
            if entry is not None:
                self._total -= entry[0]

    def _touch(self, name: str, size: int) -> None:
        """Mark a file used: first in memory, and in its mtime (shared with other processes) now and then."""
        now = time.time()
        with self._lock:
            entry = self._index.get(name)
            if entry is None or entry[0] != size:
                self._add(name, size)
                entry = self._index[name]
                stale = True
            else:
                self._index.move_to_end(name)
                stale = now - entry[1] >= self.touch_interval
            if stale:
                entry[1] = now
        if stale:
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
        found.sort()
        with self._lock:
            self._index = OrderedDict((name, [size, mtime]) for mtime, name, size in found)
            self._total = sum(size for _, _, size in found)
            self._last_scan = time.monotonic()

    @contextmanager
    def _room(self, size: int) -> Iterator[None]:
        """Evict until ``size`` more bytes fit, then hold that room while the caller moves its file in.

        Room is made before a file appears under its name, so the files in ``objects/``, ``blocks/`` and
        ``derived/`` never add up to more than the bound (within this process's view of them).
        """
        with self._lock:
            self._reserved += size
        try:
            self._evict()
            yield
        finally:
            with self._lock:
                self._reserved -= size

    def _evict(self, protect: str | None = None) -> None:
        if time.monotonic() - self._last_scan > self.rescan_interval:
            self._rescan()
        victims = []
        with self._lock:
            while self._total + self._reserved > self.max_size and self._index:
                name, entry = next(iter(self._index.items()))
                if name == protect:
                    if len(self._index) == 1:
                        break
                    self._index.move_to_end(name)
                    continue
                del self._index[name]
                self._total -= entry[0]
                victims.append(name)
            self._counters["evictions"] += len(victims)
        for name in victims:
            self._unlink(self._full(name))
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
        """Remove every cached object, block and derived file (of every process)."""
        for top in _TOPS:
            for middle in _listdir(self._full(top)):
                directory = self._full(f"{top}/{middle}")
                for name in _listdir(directory):
                    self._unlink(os.path.join(directory, name))
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
        with self._lock:
            self._index.clear()
            self._total = 0
            self._last_scan = time.monotonic()

    def usage(self) -> int:
        """Bytes used by objects, blocks and derived files (as of the last scan plus this process's own changes)."""
        if time.monotonic() - self._last_scan > self.rescan_interval:
            self._rescan()
        with self._lock:
            return self._total

    def stats(self) -> dict[str, Any]:
        usage = self.usage()
        with self._lock:
            tops = Counter(name.partition("/")[0] for name in self._index)
            return dict(self._counters, location=self._root, usage=usage, max_size=self.max_size,
                        objects=tops["objects"], blocks=tops["blocks"], derived=tops["derived"])

    def __repr__(self) -> str:
        return f"ObjectCache({self._root!r}, max_size={self.max_size})"

    # -- locks ----------------------------------------------------------------------------------------------

    @contextmanager
    def _hash_lock(self, name: str) -> Iterator[None]:
        """A lock per name (a hash) among this process's threads (entries disappear when nobody holds or waits)."""
        with self._lock:
            entry = self._hash_locks.setdefault(name, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._hash_locks[name]

    @contextmanager
    def _file_lock(self, name: str) -> Iterator[None]:
        """An exclusive ``flock`` per name (a hash) among processes; the lock file is removed after use.

        Removing a lock file races with a process that opened it just before: so after locking, a process checks
        that its file is still the one under the name, and starts over if not.
        """
        path = self._full(f"locks/{name}")
        while True:
            with self._cache_errors(f"lock {name}"):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                mine = os.fstat(fd)
                try:
                    current = os.stat(path)
                    same = (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev)
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        try:
            yield
        finally:
            self._unlink(path)
            os.close(fd)  # releases the lock

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("can't remove %s from the cache: %s", path, error)


_caches: dict[tuple[str, int, int], ObjectCache] = {}
_caches_lock = threading.Lock()


def open_cache(location: str | os.PathLike, max_size: int | str) -> ObjectCache:
    """The process's cache at ``location`` (one instance, hence one index, per location, size and process)."""
    from .settings import parse_size
    size = parse_size(max_size)
    key = (os.path.abspath(os.fspath(location)), size, os.getpid())
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = ObjectCache(key[0], size)
        return cache


DIRECT_ALIGN = 4096  # O_DIRECT wants buffer addresses and lengths aligned to the device's block size: a page is
_staging = threading.local()


def _staging_buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer of at least ``size`` bytes, one per thread, reused (its pages stay mapped)."""
    buffer = getattr(_staging, "buffer", None)
    if buffer is None or len(buffer) < size:
        if buffer is not None:
            buffer.close()
        buffer = _staging.buffer = mmap.mmap(-1, max(size, DIRECT_ALIGN))
    return buffer


def write_durably(path: str, data: bytes | bytearray | memoryview) -> None:
    """Create ``path`` (which must not exist) holding ``data``, fsynced; bypass the page cache where possible.

    Why not a plain write: copying a block into freshly allocated page-cache pages was 40% of the mount daemon's
    CPU time on a cold read from S3 (perf).  With ``O_DIRECT`` the disk takes the bytes from one reused, aligned
    buffer instead.  The tail past the last aligned length, and file systems without ``O_DIRECT`` (tmpfs), are
    written through the page cache as usual.
    """
    view = memoryview(data).cast("B")
    aligned = len(view) - len(view) % DIRECT_ALIGN
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    direct = getattr(os, "O_DIRECT", 0) if aligned else 0
    try:
        fd = os.open(path, flags | direct, 0o644)
    except OSError as error:
        if not direct or error.errno != errno.EINVAL:
            raise
        direct, fd = 0, os.open(path, flags, 0o644)  # this file system has no O_DIRECT
    try:
        done = 0
        if direct:
            buffer = _staging_buffer(aligned)
            buffer[:aligned] = view[:aligned]
            source = memoryview(buffer)
            try:
                while done < aligned:
                    done += os.pwrite(fd, source[done:aligned], done)
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
            finally:
                source.release()
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~direct)
        while done < len(view):
            done += os.pwrite(fd, view[done:], done)
        os.fsync(fd)
    finally:
        os.close(fd)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
