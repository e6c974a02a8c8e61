"""The local object cache: verified fills, one fill per hash across threads and processes, blocks, LRU bound."""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import threading
import time
from pathlib import Path

import pytest

from djfs import hashing
from djfs.cache import DIRECT_ALIGN, CacheError, ObjectCache, open_cache, write_durably
from djfs.errors import CorruptObjectError, InvalidHashError, MissingObjectError

ORIGIN = b'lab.scan\n{"scan_id": 1}'


def make_object(size: int, seed: int = 0) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return hashing.object_hash(data, ORIGIN), data


def streaming(data: bytes, step: int = 7000):
    def write(file) -> None:
        for offset in range(0, len(data), step):
            file.write(data[offset:offset + step])
    return write


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def test_fill_verifies_and_serves(tmp_path):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    hash_, data = make_object(100_000)
    assert cache.path(hash_) is None
    path = cache.fill(hash_, len(data), ORIGIN, streaming(data))
    assert path == tmp_path / "objects" / hash_[:2] / hash_
    assert path.read_bytes() == data
    assert cache.path(hash_) == path
    with cache.open(hash_) as file:
        assert file.read() == data
    assert cache.usage() == len(data)
    assert cache.fill(hash_, len(data), ORIGIN, lambda file: pytest.fail("filled twice")) == path
    stats = cache.stats()
    assert stats["fills"] == 1 and stats["objects"] == 1 and stats["misses"] >= 1 and stats["hits"] >= 2
    assert files_under(tmp_path / "tmp") == []
    empty_hash, empty = make_object(0)
    assert cache.put(empty_hash, empty, ORIGIN).read_bytes() == b""


@pytest.mark.parametrize("damage", ["flipped", "truncated", "longer", "wrong origin"])
def test_bad_source_is_never_cached(tmp_path, damage):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    hash_, data = make_object(50_000)
    origin = ORIGIN
    if damage == "flipped":
        data = data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]
    elif damage == "truncated":
        data = data[:-1]
    elif damage == "longer":
        data = data + b"!"
    else:
        origin = b"other.table\n{}"
    with pytest.raises(CorruptObjectError, match=hash_):
        cache.fill(hash_, 50_000, origin, streaming(data))
    assert cache.path(hash_) is None
    assert files_under(tmp_path / "objects") == [] and files_under(tmp_path / "tmp") == []
    assert cache.usage() == 0


def test_errors_of_the_source_pass_through_and_leave_nothing(tmp_path):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    hash_, data = make_object(50_000)

    def failing(file) -> None:
        file.write(data[:20_000])
        raise MissingObjectError("object ab/cd/x is missing from file:///nowhere")

    with pytest.raises(MissingObjectError, match="missing"):
        cache.fill(hash_, len(data), ORIGIN, failing)
    assert files_under(tmp_path / "tmp") == [] and cache.path(hash_) is None
    assert cache.fill(hash_, len(data), ORIGIN, streaming(data)).read_bytes() == data  # a later fill works


def test_full_disk_is_a_clear_cache_error(tmp_path):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    hash_, data = make_object(50_000)

    def disk_full(file) -> None:
        file.write(data[:30_000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(CacheError, match="no space") as caught:
        cache.fill(hash_, len(data), ORIGIN, disk_full)
    assert isinstance(caught.value, OSError)  # callers catching OSError fall back to the store
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert files_under(tmp_path / "tmp") == [] and cache.path(hash_) is None
    with pytest.raises(CacheError, match="larger than the whole cache"):
        cache.fill(hash_, 11 * 1024 * 1024, ORIGIN, lambda file: pytest.fail("must not download"))


def test_malformed_hashes_are_refused(tmp_path):
    cache = ObjectCache(tmp_path, 1000)
    for bad in ("../../etc/passwd", "short", "x" * 42 + "/", None):
        with pytest.raises(InvalidHashError):
            cache.path(bad)
        with pytest.raises(InvalidHashError):
            cache.fill(bad, 1, ORIGIN, lambda file: None)
        with pytest.raises(InvalidHashError):
            cache.read_block(bad, 0, 10, lambda: b"")


def test_concurrent_fills_of_one_hash_write_once(tmp_path):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    hash_, data = make_object(200_000)
    calls = []
    barrier = threading.Barrier(16)
    results, errors = [], []

    def write(file) -> None:
        calls.append(threading.get_ident())
        time.sleep(0.2)
        streaming(data)(file)

    def worker() -> None:
        try:
            barrier.wait()
            results.append(cache.fill(hash_, len(data), ORIGIN, write))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(calls) == 1
    assert len(results) == 16 and len(set(results)) == 1 and results[0].read_bytes() == data
    assert cache._hash_locks == {}
    assert files_under(tmp_path / "locks") == []


def _fill_in_another_process(location: str, size: int, seed: int, counter: str, barrier) -> None:
    cache = ObjectCache(location, 10 * 1024 * 1024)
    hash_, data = make_object(size, seed)
    barrier.wait()

    def write(file) -> None:
        with open(counter, "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(0.3)
        file.write(data)

    assert cache.fill(hash_, size, ORIGIN, write).read_bytes() == data


def test_concurrent_fills_across_processes_fetch_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    counter = tmp_path / "fetches"
    counter.touch()
    barrier = context.Barrier(4)
    processes = [context.Process(target=_fill_in_another_process,
                                 args=(str(tmp_path / "cache"), 300_000, 7, str(counter), barrier))
                 for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    assert len(counter.read_text().split()) == 1
    hash_, data = make_object(300_000, 7)
    assert ObjectCache(tmp_path / "cache", 10 * 1024 * 1024).path(hash_).read_bytes() == data


def test_lru_eviction_keeps_the_bound(tmp_path):
    cache = ObjectCache(tmp_path, 10_000, touch_interval=0)
    objects = [make_object(3000, seed) for seed in range(5)]
    for hash_, data in objects[:3]:
        cache.put(hash_, data, ORIGIN)
        time.sleep(0.01)
    assert cache.usage() == 9000
    assert cache.path(objects[0][0]) is not None  # the oldest is used again: now object 1 is the oldest
    cache.put(*objects[3], ORIGIN)  # 12000 > 10000: evict the least recently used
    assert cache.usage() <= 10_000
    assert cache.path(objects[1][0]) is None
    assert all(cache.path(hash_) is not None for hash_, _ in (objects[0], objects[2], objects[3]))
    cache.put(*objects[4], ORIGIN)
    assert cache.usage() <= 10_000
    remaining = {hash_ for hash_, _ in objects if cache.path(hash_) is not None}
    assert len(remaining) == 3 and objects[4][0] in remaining
    on_disk = sum(os.path.getsize(os.path.join(tmp_path, "objects", name))
                  for name in files_under(tmp_path / "objects"))
    assert on_disk == cache.usage() <= 10_000
    assert cache.stats()["evictions"] == 2


def test_cache_survives_reopening(tmp_path):
    first = ObjectCache(tmp_path, 1_000_000)
    objects = [make_object(1000 + seed, seed) for seed in range(4)]
    for hash_, data in objects:
        first.put(hash_, data, ORIGIN)
    assert first.read_block(objects[0][0], 0, 100, lambda: pytest.fail("fetched")) == objects[0][1][:100]
    second = ObjectCache(tmp_path, 1_000_000)  # never wipes at start
    assert second.usage() == first.usage() == sum(len(data) for _, data in objects)
    for hash_, data in objects:
        assert second.path(hash_).read_bytes() == data
    smaller = ObjectCache(tmp_path, 2500)  # a smaller bound evicts on the next fill, oldest first
    hash_, data = make_object(500, 99)
    smaller.put(hash_, data, ORIGIN)
    assert smaller.usage() <= 2500 and smaller.path(hash_) is not None


def test_other_processes_files_are_seen_after_a_rescan(tmp_path):
    mine = ObjectCache(tmp_path, 1_000_000, rescan_interval=0)
    other = ObjectCache(tmp_path, 1_000_000, rescan_interval=0)
    hash_, data = make_object(5000)
    other.put(hash_, data, ORIGIN)
    assert mine.usage() == 5000
    assert mine.path(hash_) is not None
    mine.clear()
    assert other.usage() == 0 and other.path(hash_) is None


def test_blocks_fetch_once_per_block(tmp_path):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    hash_, data = make_object(10_000, 3)
    block_size = 4096
    fetches: list[int] = []
    lock = threading.Lock()

    def fetcher(index: int):
        def fetch() -> bytes:
            with lock:
                fetches.append(index)
            time.sleep(0.1)
            return data[index * block_size:(index + 1) * block_size]
        return fetch

    barrier = threading.Barrier(24)
    results: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    errors = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results[index].append(cache.read_block(hash_, index, block_size, fetcher(index)))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n % 3,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(fetches) == [0, 1, 2]
    for index in range(3):
        assert results[index] == [data[index * block_size:(index + 1) * block_size]] * 8
    assert cache.usage() == len(data)  # blocks count towards the bound
    assert cache.stats()["blocks"] == 3
    # cached now: no fetch
    assert cache.read_block(hash_, 1, block_size, lambda: pytest.fail("fetched again")) == data[4096:8192]
    # the whole object replaces its blocks and serves any block
    cache.put(hash_, data, ORIGIN)
    assert not (tmp_path / "blocks" / hash_).exists()
    assert cache.usage() == len(data)
    assert cache.read_block(hash_, 2, 3000, lambda: pytest.fail("fetched")) == data[6000:9000]


def test_failed_block_fetch_is_retried_and_blocks_are_evicted(tmp_path):
    cache = ObjectCache(tmp_path, 10_000, touch_interval=0)
    hash_, data = make_object(30_000, 4)

    def broken() -> bytes:
        raise MissingObjectError("gone")

    with pytest.raises(MissingObjectError):
        cache.read_block(hash_, 0, 4000, broken)
    assert cache._block_futures == {}
    for index in range(7):
        block = data[index * 4000:(index + 1) * 4000]
        assert cache.read_block(hash_, index, 4000, lambda block=block: block) == block
        assert cache.usage() <= 10_000
    assert sorted(os.listdir(tmp_path / "blocks" / hash_)) == ["4000-5", "4000-6"]  # 3 blocks exceed 10000
    with pytest.raises(ValueError):
        cache.read_block(hash_, 0, 10, lambda: b"x" * 11)


def test_stale_temporary_files_are_removed_at_start(tmp_path):
    ObjectCache(tmp_path, 1000)
    old, fresh = tmp_path / "tmp" / "old.tmp", tmp_path / "tmp" / "fresh.tmp"
    old.write_bytes(b"left by a crash")
    fresh.write_bytes(b"being written by a live process")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    ObjectCache(tmp_path, 1000)
    assert not old.exists() and fresh.exists()


def test_open_cache_shares_one_instance(tmp_path):
    assert open_cache(tmp_path, "1MiB") is open_cache(str(tmp_path), 1024 * 1024)
    assert open_cache(tmp_path, "2MiB") is not open_cache(tmp_path, "1MiB")


def test_derived_files_are_made_once_size_checked_and_bounded(tmp_path):
    cache = ObjectCache(tmp_path, 300_000)
    hash_, data = make_object(100_000)
    calls = []

    def make(file) -> None:
        calls.append(threading.get_ident())
        time.sleep(0.05)  # the others arrive while the first one writes
        streaming(data)(file)

    files: list = []
    threads = [threading.Thread(target=lambda: files.append(cache.fill_derived(hash_, "npy-v1", len(data), make)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(files) == 8 and all(file.read() == data for file in files)
    for file in files:
        file.close()
    path = tmp_path / "derived" / hash_[:2] / f"{hash_}.npy-v1"
    assert path.read_bytes() == data and cache.stats()["derived"] == 1 and cache.usage() == len(data)

    path.write_bytes(data[:-1])  # damaged: refused on open, removed, made again
    assert cache.open_derived(hash_, "npy-v1", len(data)) is None and not path.exists()
    with cache.fill_derived(hash_, "npy-v1", len(data), streaming(data)) as file:
        assert file.read() == data

    for wrong in (data[:-1], data + b"x"):  # a maker that writes the wrong length leaves nothing behind
        with pytest.raises(CorruptObjectError):
            cache.fill_derived(hash_, "blob-v1", len(data), streaming(wrong))
    assert not (tmp_path / "derived" / hash_[:2] / f"{hash_}.blob-v1").exists()
    assert files_under(tmp_path / "tmp") == []

    with pytest.raises(CacheError, match="larger than the whole cache"):
        cache.fill_derived(hash_, "big-v1", 300_001, streaming(b""))
    for key, kind in (("../../etc/passwd", "npy"), (hash_, "../x"), (hash_, "NPY"), ("short", "npy")):
        with pytest.raises(ValueError):
            cache.fill_derived(key, kind, 1, streaming(b"x"))

    for seed in range(1, 4):  # derived files and objects share one LRU bound
        other, more = make_object(100_000, seed)
        cache.fill(other, len(more), ORIGIN, streaming(more))
    assert cache.usage() <= 300_000 and not path.exists()
    cache.clear()
    assert files_under(tmp_path / "derived") == [] and cache.usage() == 0


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_blocks_are_written_whole_with_or_without_o_direct(tmp_path, where):
    """write_durably (O_DIRECT where the file system has it, tmpfs has not) writes any length exactly, once."""
    root = tmp_path
    if where == "tmpfs":
        assert os.path.isdir("/dev/shm"), "the test needs /dev/shm (tmpfs)"
        root = Path("/dev/shm") / f"djfs-test-{os.getpid()}-{random.getrandbits(32)}"
        root.mkdir()
    try:
        for size in (0, 1, DIRECT_ALIGN - 1, DIRECT_ALIGN, DIRECT_ALIGN + 1, 3 * DIRECT_ALIGN + 7, (2 << 20) + 13):
            data = random.Random(size).randbytes(size)
            path = root / f"block-{size}"
            write_durably(str(path), memoryview(bytearray(data))[0:size])
            assert path.read_bytes() == data, size
            with pytest.raises(FileExistsError):
                write_durably(str(path), b"again")
            assert path.read_bytes() == data
    finally:
        if where == "tmpfs":
            for path in root.iterdir():
                path.unlink()
            root.rmdir()


def test_room_is_made_before_a_file_appears(tmp_path, monkeypatch):
    """Eviction runs before a new file is renamed into place: the cached files never exceed the bound."""
    limit = 1_000_000
    cache = ObjectCache(tmp_path, limit)
    on_disk: list[int] = []
    replace = os.replace

    def measured_replace(source, target, *args, **kwargs):
        replace(source, target, *args, **kwargs)
        if os.fspath(target).startswith(os.fspath(tmp_path)):
            on_disk.append(sum(os.path.getsize(tmp_path / name) for name in files_under(tmp_path)
                               if name.split(os.sep)[0] in ("objects", "blocks", "derived")))
    monkeypatch.setattr(os, "replace", measured_replace)

    for seed in range(30):  # whole objects, blocks and derived files, in turn
        hash_, data = make_object(150_000, seed)
        if seed % 3 == 0:
            cache.fill(hash_, len(data), ORIGIN, streaming(data))
        elif seed % 3 == 1:
            cache.read_block(hash_, 0, 150_000, lambda: data)
        else:
            cache.fill_derived(hash_, "npy-v1", len(data), streaming(data)).close()
    assert len(on_disk) == 30 and max(on_disk) <= limit, on_disk
    assert cache.usage() <= limit and cache.stats()["evictions"] >= 24
