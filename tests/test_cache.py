"""The local object cache: verified fills, checked reads, one fill per key across threads and processes, blocks,
LRU bound, background writes."""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from djfs import hashing
from djfs.cache import CacheError, ObjectCache, open_cache
from djfs.cache.checked import file_size
from djfs.errors import CorruptObjectError, InvalidHashError, MissingObjectError

ORIGIN = b'lab.scan\n{"scan_id": 1}'


def make_object(size: int, seed: int = 0) -> tuple[hashing.ObjectId, bytes]:
    data = random.Random(seed).randbytes(size)
    return hashing.object_id(hashing.object_hash(data, ORIGIN), ORIGIN), data


def cached(cache: ObjectCache, oid: hashing.ObjectId, size: int) -> bytes | None:
    data = cache.get_object(oid, size)
    return None if data is None else bytes(data)


def streaming(data: bytes, step: int = 7000):
    def write(file) -> None:
        for offset in range(0, len(data), step):
            file.write(data[offset:offset + step])
    return write


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def test_fill_verifies_and_serves(tmp_path):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    oid, data = make_object(100_000)
    assert cache.path(oid.key) is None and cached(cache, oid, len(data)) is None
    with cache.fill_object(oid, len(data), streaming(data)) as file:
        assert file.read(0, len(data)) == data and file.size == len(data)
    path = cache.path(oid.key)
    assert path == tmp_path / "objects" / oid.key[:2] / oid.key
    assert path.read_bytes()[:len(data)] == data and path.stat().st_size == file_size(len(data))
    assert cached(cache, oid, len(data)) == data
    assert cache.usage() == file_size(len(data))
    cache.fill_object(oid, len(data), lambda file: pytest.fail("filled twice")).close()
    stats = cache.stats()
    assert stats["fills"] == 1 and stats["objects"] == 1 and stats["misses"] >= 1 and stats["hits"] >= 2
    assert files_under(tmp_path / "tmp") == []
    empty, nothing = make_object(0)
    cache.put_object(empty, nothing, verify=True)
    assert cached(cache, empty, 0) == b""


@pytest.mark.parametrize("damage", ["flipped", "truncated", "longer", "wrong origin"])
def test_bad_source_is_never_cached(tmp_path, damage):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    oid, data = make_object(50_000)
    if damage == "flipped":
        data = data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]
    elif damage == "truncated":
        data = data[:-1]
    elif damage == "longer":
        data = data + b"!"
    else:
        oid = hashing.object_id(oid.key, b"other.table\n{}")
    with pytest.raises(CorruptObjectError, match=oid.key):
        cache.fill_object(oid, 50_000, streaming(data))
    if damage != "truncated":
        with pytest.raises(CorruptObjectError):
            cache.put_object(oid, data, verify=True)
    assert cache.path(oid.key) is None
    assert files_under(tmp_path / "objects") == [] and files_under(tmp_path / "tmp") == []
    assert cache.usage() == 0


def test_errors_of_the_source_pass_through_and_leave_nothing(tmp_path):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    oid, data = make_object(50_000)

    def failing(file) -> None:
        file.write(data[:20_000])
        raise MissingObjectError("object ab/cd/x is missing from file:///nowhere")

    with pytest.raises(MissingObjectError, match="missing"):
        cache.fill_object(oid, len(data), failing)
    assert files_under(tmp_path / "tmp") == [] and cache.path(oid.key) is None
    cache.fill_object(oid, len(data), streaming(data)).close()  # a later fill works
    assert cached(cache, oid, len(data)) == data


def test_full_disk_is_a_clear_cache_error(tmp_path):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    oid, data = make_object(50_000)

    def disk_full(file) -> None:
        file.write(data[:30_000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(CacheError, match="no space") as caught:
        cache.fill_object(oid, len(data), disk_full)
    assert isinstance(caught.value, OSError)  # callers catching OSError fall back to the store
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert files_under(tmp_path / "tmp") == [] and cache.path(oid.key) is None
    with pytest.raises(CacheError, match="larger than the whole cache"):
        cache.fill_object(oid, 11 * 1024 * 1024, lambda file: pytest.fail("must not download"))


def test_malformed_keys_are_refused(tmp_path):
    cache = ObjectCache(tmp_path, 1000)
    for bad in ("../../etc/passwd", "short", "x" * 42 + "/", None, "a" * 129):
        with pytest.raises(InvalidHashError):
            cache.path(bad)
        with pytest.raises(InvalidHashError):
            hashing.ObjectId(bad, b"")
    with pytest.raises(InvalidHashError):
        hashing.object_id("x" * 42 + "/", ORIGIN)


def test_concurrent_fills_of_one_key_write_once(tmp_path):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    oid, data = make_object(200_000)
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
            with cache.fill_object(oid, len(data), write) as file:
                results.append(file.read(0, len(data)))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(calls) == 1
    assert results == [data] * 16
    assert cache._locks._threads == {}
    assert files_under(tmp_path / "locks") == []


def _fill_in_another_process(location: str, size: int, seed: int, counter: str, barrier) -> None:
    cache = ObjectCache(location, 10 * 1024 * 1024)
    oid, data = make_object(size, seed)
    barrier.wait()

    def write(file) -> None:
        with open(counter, "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(0.3)
        file.write(data)

    with cache.fill_object(oid, size, write) as file:
        assert file.read(0, size) == data


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
    oid, data = make_object(300_000, 7)
    assert cached(ObjectCache(tmp_path / "cache", 10 * 1024 * 1024), oid, len(data)) == data


def test_lru_eviction_keeps_the_bound(tmp_path):
    unit = file_size(3000)
    cache = ObjectCache(tmp_path, 3 * unit + 1000, touch_interval=0)
    objects = [make_object(3000, seed) for seed in range(5)]
    for oid, data in objects[:3]:
        cache.put_object(oid, data)
        time.sleep(0.01)
    assert cache.usage() == 3 * unit
    assert cached(cache, objects[0][0], 3000) is not None  # the oldest is used again: now object 1 is the oldest
    cache.put_object(*objects[3])  # one too many: evict the least recently used
    assert cache.usage() <= 3 * unit + 1000
    assert cache.path(objects[1][0].key) is None
    assert all(cache.path(oid.key) is not None for oid, _ in (objects[0], objects[2], objects[3]))
    cache.put_object(*objects[4])
    assert cache.usage() <= 3 * unit + 1000
    remaining = {oid.key for oid, _ in objects if cache.path(oid.key) is not None}
    assert len(remaining) == 3 and objects[4][0].key in remaining
    on_disk = sum(os.path.getsize(os.path.join(tmp_path, "objects", name))
                  for name in files_under(tmp_path / "objects"))
    assert on_disk == cache.usage() <= 3 * unit + 1000
    assert cache.stats()["evictions"] == 2


def test_cache_survives_reopening(tmp_path):
    first = ObjectCache(tmp_path, 1_000_000)
    objects = [make_object(1000 + seed, seed) for seed in range(4)]
    for oid, data in objects:
        first.put_object(oid, data)
    assert first.get_block(objects[0][0], 0, 100) == objects[0][1][:100]
    second = ObjectCache(tmp_path, 1_000_000)  # never wipes at start
    assert second.usage() == first.usage() == sum(file_size(len(data)) for _, data in objects)
    for oid, data in objects:
        assert cached(second, oid, len(data)) == data
    smaller = ObjectCache(tmp_path, 2 * file_size(1000))  # a smaller bound evicts on the next fill, oldest first
    oid, data = make_object(500, 99)
    smaller.put_object(oid, data)
    assert smaller.usage() <= 2 * file_size(1000) and smaller.path(oid.key) is not None


def test_other_processes_files_are_seen_after_a_rescan(tmp_path):
    mine = ObjectCache(tmp_path, 1_000_000, rescan_interval=0)
    other = ObjectCache(tmp_path, 1_000_000, rescan_interval=0)
    oid, data = make_object(5000)
    other.put_object(oid, data)
    assert mine.usage() == file_size(5000)
    assert cached(mine, oid, 5000) == data
    mine.clear()
    assert other.usage() == 0 and other.path(oid.key) is None


def test_blocks_are_kept_checked_and_replaced_by_the_whole_object(tmp_path):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    oid, data = make_object(10_000, 3)
    block_size = 4096
    assert cache.get_block(oid, 0, block_size) is None
    for index in range(3):
        cache.put_block(oid, index, block_size, data[index * block_size:(index + 1) * block_size])
    assert [cache.get_block(oid, index, block_size) for index in range(3)] == \
        [data[i * block_size:(i + 1) * block_size] for i in range(3)]
    assert cache.usage() == sum(file_size(len(data[i * 4096:(i + 1) * 4096])) for i in range(3))
    assert cache.stats()["blocks"] == 3
    with pytest.raises(ValueError):
        cache.put_block(oid, 0, 10, b"x" * 11)
    # the whole object replaces its blocks and serves any block
    cache.put_object(oid, data)
    assert not (tmp_path / "blocks" / oid.key).exists()
    assert cache.get_block(oid, 2, 3000) == data[6000:9000]


def test_blocks_are_evicted_within_the_bound(tmp_path):
    cache = ObjectCache(tmp_path, 2 * file_size(4000) + 100, touch_interval=0)
    oid, data = make_object(30_000, 4)
    for index in range(7):
        cache.put_block(oid, index, 4000, data[index * 4000:(index + 1) * 4000])
        assert cache.usage() <= 2 * file_size(4000) + 100
    assert sorted(os.listdir(tmp_path / "blocks" / oid.key)) == ["4000-5", "4000-6"]


def test_a_part_is_one_file_and_each_of_its_blocks_is_read_checked(tmp_path):
    cache = ObjectCache(tmp_path, 64 * 1024 * 1024)
    block = hashing.CHECK_BLOCK
    oid, data = make_object(7 * block + 1000, 8)
    blocks = [data[start:start + block] for start in range(0, len(data), block)]
    cache.put_blocks(oid, 0, block, blocks, hashing.sums_of(data))   # the checksums the reader took, used as is
    assert os.listdir(tmp_path / "blocks" / oid.key) == [f"{block}-0-8"]
    assert cache.stats()["blocks"] == 1 and cache.usage() == file_size(len(data))
    again = ObjectCache(tmp_path, 64 * 1024 * 1024)                  # another process, or after a restart
    assert again.get_block(oid, 5, block) == blocks[5] and again.get_block(oid, 7, block) == blocks[7]
    assert again.get_block(oid, 8, block) is None
    assert again.get_blocks(oid, 2, 7, block) == [*blocks[2:], None]  # the part's blocks in one read, then a miss
    with pytest.raises(ValueError):
        cache.put_blocks(oid, 0, block, [b"x" * 10, blocks[1]])      # only the last block may be short
    # wrong checksums (a reader's bug, or bytes that changed) are caught when the block is read, never served
    other, odata = make_object(2 * block, 9)
    cache.put_blocks(other, 0, block, [odata[:block], odata[block:]], [1, 2])
    assert cache.get_block(other, 0, block) is None and cache.get_block(other, 1, block) is None


def resident_bytes(path) -> int:
    """Bytes of a file in the kernel's page cache (util-linux's fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def test_block_files_ahead_are_read_from_the_disk_when_advised(tmp_path):
    """A sequential re-read asks for the files ahead of it (``advise_blocks``): they come into the page cache
    at once, each file once, only those the range names."""
    block = hashing.CHECK_BLOCK
    cache = ObjectCache(tmp_path, 64 * 1024 * 1024)
    oid, data = make_object(12 * block, 11)
    blocks = [data[start:start + block] for start in range(0, len(data), block)]
    for first in (0, 4, 8):  # three parts of four blocks
        cache.put_blocks(oid, first, block, blocks[first:first + 4], hashing.sums_of(data[first * block:]
                                                                                     [:4 * block]))
    paths = [tmp_path / "blocks" / oid.key / f"{block}-{first}-4" for first in (0, 4, 8)]
    for path in paths:  # out of the page cache (clean pages of a synced file go with DONTNEED)
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    before = [resident_bytes(path) for path in paths]
    assert all(count < 4 * block for count in before), before   # the files are on the disk only

    fresh = ObjectCache(tmp_path, 64 * 1024 * 1024)                  # a remounted daemon
    fresh.advise_blocks(oid, 5, 8, block)                            # blocks 5..7: the second file only
    deadline = time.monotonic() + 10
    while resident_bytes(paths[1]) < 4 * block and time.monotonic() < deadline:
        time.sleep(0.05)
    assert resident_bytes(paths[1]) >= 4 * block
    assert resident_bytes(paths[2]) < 4 * block                      # not named: left on the disk
    assert fresh.get_blocks(oid, 4, 4, block) == blocks[4:8]         # and read checked as ever


def test_a_block_file_is_checked_whole_once_however_many_readers_ask_at_once(tmp_path):
    """A re-read's reader that catches up with the file the read-ahead is checking waits for that check instead
    of reading and checking the file a second time."""
    block = hashing.CHECK_BLOCK
    cache = ObjectCache(tmp_path, 256 * 1024 * 1024)
    oid, data = make_object(256 * block, 12)                           # 64 MiB: its check takes a while
    cache.put_blocks(oid, 0, block, [data[start:start + block] for start in range(0, len(data), block)],
                     hashing.sums_of(data))
    fresh = ObjectCache(tmp_path, 256 * 1024 * 1024)                  # a remounted daemon
    barrier = threading.Barrier(8)
    found = []

    def ask() -> None:
        barrier.wait()
        found.append(fresh.block_segment(oid, 100, block))
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(found) == 8 and all(item is not None and item[1] == 100 * block for item in found)
    assert fresh.stats()["files_checked"] == 1


@pytest.mark.parametrize("where", ["data", "zeros"])
def test_a_damaged_block_of_a_part_is_the_only_one_fetched_again(tmp_path, where, caplog):
    block = hashing.CHECK_BLOCK
    cache = ObjectCache(tmp_path, 64 * 1024 * 1024)
    oid, data = make_object(4 * block, 10)
    blocks = [data[start:start + block] for start in range(0, len(data), block)]
    cache.put_blocks(oid, 0, block, blocks, hashing.sums_of(data))
    path = tmp_path / "blocks" / oid.key / f"{block}-0-4"
    content = bytearray(path.read_bytes())
    if where == "data":
        content[2 * block + 77] ^= 0x40                    # a flipped bit in block 2
    else:
        content[2 * block:2 * block + 4096] = bytes(4096)  # a page of block 2 never written back
    path.write_bytes(bytes(content))
    assert ObjectCache(tmp_path, 64 * 1024 * 1024).get_blocks(oid, 0, 4, block) == [blocks[0], blocks[1], None,
                                                                                  blocks[3]]
    fresh = ObjectCache(tmp_path, 64 * 1024 * 1024)
    assert fresh.get_block(oid, 2, block) is None          # a miss for that block ...
    assert "block 2 does not match its checksum" in caplog.text and fresh.stats()["damaged"] == 1
    assert [fresh.get_block(oid, index, block) for index in (0, 1, 3)] == [blocks[0], blocks[1], blocks[3]]
    assert path.exists()                                   # ... the part's other blocks stay
    fresh.put_block(oid, 2, block, blocks[2])              # fetched again: kept on its own
    assert fresh.get_block(oid, 2, block) == blocks[2]
    later = ObjectCache(tmp_path, 64 * 1024 * 1024)        # another process finds the good copy too
    assert [later.get_block(oid, index, block) for index in range(4)] == blocks
    content = bytearray(path.read_bytes())                 # now block 0 too: the part is fetched again whole ...
    content[77] ^= 1
    path.write_bytes(bytes(content))
    assert later.get_block(oid, 0, block) is None
    later.put_blocks(oid, 0, block, blocks, hashing.sums_of(data))
    assert later.get_block(oid, 0, block) == blocks[0]     # ... and replaces the damaged file
    assert ObjectCache(tmp_path, 64 * 1024 * 1024).get_blocks(oid, 0, 4, block) == blocks


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


def test_derived_files_are_made_once_checked_and_bounded(tmp_path):
    cache = ObjectCache(tmp_path, 3 * file_size(100_000) + 1000)
    oid, data = make_object(100_000)
    key = oid.key
    calls = []

    def make(file) -> None:
        calls.append(threading.get_ident())
        time.sleep(0.05)  # the others arrive while the first one writes
        streaming(data)(file)

    files: list = []
    threads = [threading.Thread(target=lambda: files.append(cache.fill_derived(key, "npy-v1", len(data), make)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(files) == 8 and all(file.read(0, len(data)) == data for file in files)
    for file in files:
        file.close()
    path = tmp_path / "derived" / key[:2] / f"{key}.npy-v1"
    assert path.read_bytes()[:len(data)] == data and cache.stats()["derived"] == 1
    assert cache.usage() == file_size(len(data))

    path.write_bytes(path.read_bytes()[:-1])  # damaged: refused on open, removed, made again
    assert cache.open_derived(key, "npy-v1", len(data)) is None and not path.exists()
    with cache.fill_derived(key, "npy-v1", len(data), streaming(data)) as file:
        assert file.read(0, len(data)) == data

    for wrong in (data[:-1], data + b"x"):  # a maker that writes the wrong length leaves nothing behind
        with pytest.raises(CorruptObjectError):
            cache.fill_derived(key, "blob-v1", len(data), streaming(wrong))
    assert not (tmp_path / "derived" / key[:2] / f"{key}.blob-v1").exists()
    assert files_under(tmp_path / "tmp") == []

    with pytest.raises(CacheError, match="larger than the whole cache"):
        cache.fill_derived(key, "big-v1", cache.max_size, streaming(b""))
    for bad_key, kind in (("../../etc/passwd", "npy"), (key, "../x"), (key, "NPY"), ("short", "npy")):
        with pytest.raises(ValueError):
            cache.fill_derived(bad_key, kind, 1, streaming(b"x"))

    for seed in range(1, 4):  # derived files and objects share one LRU bound
        other, more = make_object(100_000, seed)
        cache.fill_object(other, len(more), streaming(more)).close()
    assert cache.usage() <= 3 * file_size(100_000) + 1000 and not path.exists()
    cache.clear()
    assert files_under(tmp_path / "derived") == [] and cache.usage() == 0


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
        oid, data = make_object(150_000, seed)
        if seed % 3 == 0:
            cache.fill_object(oid, len(data), streaming(data)).close()
        elif seed % 3 == 1:
            cache.put_block(oid, 0, 150_000, data)
        else:
            cache.fill_derived(oid.key, "npy-v1", len(data), streaming(data)).close()
    assert len(on_disk) == 30 and max(on_disk) <= limit, on_disk
    assert cache.usage() <= limit and cache.stats()["evictions"] >= 24


# -- checksums: every read from the cache is checked; a damaged file is dropped ---------------------------------


def damage(path: Path, where: str) -> None:
    """Damage a cache file the ways a crash or a disk does."""
    content = bytearray(path.read_bytes())
    if where == "data":
        content[len(content) // 3] ^= 0x40           # a flipped bit in the data
    elif where == "zeros":
        content[:4096] = bytes(4096)                 # a block never written back before a power loss
    elif where == "table":
        content[-40] ^= 1                            # the checksum table itself
    elif where == "torn":
        content = content[:len(content) // 2]        # a torn write: the file ends early
    elif where == "empty":
        content = bytearray()                        # renamed, but its data never reached the disk
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("where", ["data", "zeros", "table", "torn", "empty"])
def test_damaged_object_is_dropped_and_read_as_a_miss(tmp_path, where, caplog):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    oid, data = make_object(700_000, 5)
    cache.put_object(oid, data, verify=True)
    damage(cache.path(oid.key), where)
    assert cached(cache, oid, len(data)) is None                # never the damaged bytes
    assert cache.path(oid.key) is None and cache.stats()["damaged"] == 1
    assert "fetched again" in caplog.text
    cache.put_object(oid, data, verify=True)                    # fetched again: served again
    assert cached(cache, oid, len(data)) == data


@pytest.mark.parametrize("where", ["data", "torn"])
def test_damaged_blocks_and_opened_files_are_dropped(tmp_path, where):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    oid, data = make_object(600_000, 6)
    cache.put_block(oid, 1, 300_000, data[300_000:])
    damage(tmp_path / "blocks" / oid.key / "300000-1", where)
    assert cache.get_block(oid, 1, 300_000) is None and not (tmp_path / "blocks" / oid.key / "300000-1").exists()
    cache.put_object(oid, data)
    damage(cache.path(oid.key), where)
    assert cache.get_block(oid, 0, 300_000) is None and cache.path(oid.key) is None
    cache.put_object(oid, data)
    damage(cache.path(oid.key), where)
    assert cache.open_object(oid, len(data)) is None and cache.path(oid.key) is None


def test_a_buffer_changed_before_its_background_write_is_not_cached(tmp_path):
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    oid, data = make_object(500_000, 8)
    buffer = bytearray(data)
    sums = hashing.sums_of(buffer)
    buffer[10] ^= 1                              # the caller wrote into the array it got, before the write
    cache.put_object_later(oid, buffer, sums)
    cache.flush()
    assert cache.path(oid.key) is None
    cache.put_object_later(oid, bytearray(data), hashing.sums_of(data))
    cache.flush()
    assert cached(cache, oid, len(data)) == data


def test_background_writes_are_bounded_and_flushed(tmp_path):
    cache = ObjectCache(tmp_path, 100 * 1024 * 1024, max_pending=1_000_000)
    objects = [make_object(400_000, seed) for seed in range(10)]
    for oid, data in objects:
        cache.put_object_later(oid, data, hashing.sums_of(data))
        assert cache.pending() <= 1_000_000
    cache.flush()
    assert cache.pending() == 0
    assert all(cached(cache, oid, len(data)) == data for oid, data in objects)



def test_the_background_writer_runs_nicer_than_its_callers(tmp_path):
    """Fills take idle CPU, not the caller's (a cold fetch with a cache stays close to one without)."""
    from djfs.cache.objects import WRITER_NICENESS
    cache = ObjectCache(tmp_path, 10 * 1024 * 1024)
    seen: list[int] = []
    oid, data = make_object(100_000, 9)
    cache._later(len(data), lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())),
                 "probe")
    cache.put_object_later(oid, data, hashing.sums_of(data))
    cache.flush()
    assert seen == [os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + WRITER_NICENESS]
    assert cached(cache, oid, len(data)) == data

def _fill_forever(location: str, ready) -> None:
    """Fill the cache with objects, blocks and sums, in the background and not, until killed."""
    cache = ObjectCache(location, 8 * 1024 * 1024)
    seed = 0
    while True:
        oid, data = make_object(300_000 + seed % 7 * 50_000, seed)
        if seed % 4 == 0:
            cache.put_object_later(oid, data, hashing.sums_of(data))
        elif seed % 4 == 1:
            cache.fill_object(oid, len(data), streaming(data, 65536)).close()
        elif seed % 4 == 2:
            cache.put_block(oid, 0, 262144, data[:262144])
        else:  # a part: all its blocks in one file, with the checksums the reader took
            cache.put_blocks_later(oid, 0, 262144, [data[:262144], data[262144:]], hashing.sums_of(data))
        seed += 1
        if seed == 5:
            ready.set()


def test_kill_9_during_fills_then_every_cache_read_is_correct(tmp_path):
    """A process killed at random moments of its fills leaves nothing a later reader would take for an object."""
    import signal
    context = multiprocessing.get_context("spawn")
    location = str(tmp_path / "cache")
    rng = random.Random(1)
    for round_ in range(6):
        ready = context.Event()
        process = context.Process(target=_fill_forever, args=(location, ready))
        process.start()
        assert ready.wait(60)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
    # what a crash of the machine could leave on top: damaged and torn files
    cache = ObjectCache(location, 8 * 1024 * 1024)
    names = files_under(tmp_path / "cache" / "objects")
    for number, name in enumerate(names[:4]):
        damage(tmp_path / "cache" / "objects" / name, ["data", "torn", "zeros", "empty"][number])
    served = 0
    for seed in range(400):
        oid, data = make_object(300_000 + seed % 7 * 50_000, seed)
        got = cached(cache, oid, len(data))
        assert got is None or got == data, seed
        for index in range(2):
            block = cache.get_block(oid, index, 262144)
            assert block is None or block == data[index * 262144:(index + 1) * 262144], seed
        served += got is not None
    assert served > 0
    assert cache.stats()["damaged"] >= min(4, len(names))
