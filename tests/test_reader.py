"""The mount's reader against a real S3 server (moto) through a link that sees every request: parallel parts
in order, retried parts, bounded read-ahead, shared parts, the cache keeping what was read, verification."""

from __future__ import annotations

import io
import os
import random
import threading
import time
import uuid

import numpy as np
import pytest

import djfs
from djfs import hashing
from djfs.cache import ObjectCache
from djfs.errors import CorruptObjectError
from djfs.fs.reader import Reader, Stats, StoredObject, join
from fixtures_fuse import s3_config, wait_for
from s3link import S3Link

KiB = 1 << 10
BLOCK = 256 * KiB
PART = 1 << 20
ORIGIN = b'lab.movie\n{"movie_id":1}'


@pytest.fixture
def link(s3_server):
    with S3Link(s3_server) as link:
        yield link


def put_object(s3_server, bucket: str, size: int, seed: int = 0) -> tuple[bytes, hashing.ObjectId, str]:
    data = random.Random(seed).randbytes(size)
    hash_ = hashing.object_hash(data, ORIGIN)
    key = hashing.object_path(hash_)
    s3_server.store(bucket).put(key, data)
    return data, hashing.object_id(hash_, ORIGIN), key


def make_reader(tmp_path, **options) -> Reader:
    options = {"block_size": BLOCK, "part_size": PART, "whole_max": 0, "readahead": 4, "threads": 8,
               "stats": Stats(), **options}
    return Reader(ObjectCache(tmp_path / "cache", 1 << 30), **options)


def read_sequentially(reader: Reader, obj: StoredObject, chunk: int = 128 * KiB, stop: int | None = None) -> bytes:
    handle = reader.open_stored(obj, b"", 0, obj.size)
    try:
        out = []
        for offset in range(0, obj.size if stop is None else stop, chunk):
            out.append(join(handle.pieces(offset, chunk)))
        return b"".join(out)
    finally:
        handle.close()


def run_threads(function, arguments: list[tuple]) -> None:
    threads = [threading.Thread(target=function, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def read_in_full_once(tmp_path, obj: StoredObject, data: bytes) -> Reader:
    """A reader that reads the object in full and is closed (its cache writes done): the cache as it left it."""
    reader = make_reader(tmp_path)
    try:
        assert read_sequentially(reader, obj) == data
    finally:
        reader.close()
    return reader


def counter(reader: Reader, name: str) -> int:
    return reader.stats.snapshot().get(name, 0)


def settle(reader: Reader, link: S3Link, quiet: float = 0.3) -> None:
    """Wait until the reader's requests have all been answered and no new one came for ``quiet`` seconds."""
    def quiet_now() -> bool:
        before = counter(reader, "store_requests")
        time.sleep(quiet)
        return link.in_flight == 0 and counter(reader, "store_requests") == before
    assert wait_for(quiet_now, timeout=20)


def test_parts_are_fetched_in_parallel_and_assembled_in_order(s3_server, s3_bucket, link, tmp_path):
    data, oid, key = put_object(s3_server, s3_bucket, 16 << 20)
    reader = make_reader(tmp_path)
    obj = StoredObject(oid, len(data), link.store(s3_bucket), key)
    handle = reader.open_stored(obj, b"", 0, obj.size)
    chunk, out = 128 * KiB, []
    try:
        for offset in range(0, obj.size, chunk):
            if offset == 12 * BLOCK:  # the window is 12 blocks ahead: from now on parts overlap
                link.meet(3)          # three requests must be waiting at once, or the barrier breaks after 20 s
            out.append(join(handle.pieces(offset, chunk)))
    finally:
        handle.close()
        reader.close()
    assert b"".join(out) == data
    assert not link.barrier_broken and link.most_in_flight >= 3
    assert counter(reader, "parts") >= 3
    assert counter(reader, "store_bytes") == len(data) and counter(reader, "blocks_fetched_again") == 0
    assert counter(reader, "objects_verified") == 1  # its content digest was checked once it was all in


def test_a_failed_part_is_retried(s3_server, s3_bucket, link, tmp_path):
    data, oid, key = put_object(s3_server, s3_bucket, 5 << 20, seed=1)
    reader = make_reader(tmp_path)
    obj = StoredObject(oid, len(data), link.store(s3_bucket, retries=0), key)  # the store itself won't retry
    read_sequentially(reader, obj, stop=2 * BLOCK)   # the stream is under way
    link.cuts = 2                                    # the next two responses drop mid-body
    try:
        assert read_sequentially(reader, obj) == data
    finally:
        reader.close()
    assert link.cuts == 0 and counter(reader, "part_retries") >= 1


def test_a_reader_that_stops_early_costs_about_what_it_read(s3_server, s3_bucket, link, tmp_path):
    data, oid, key = put_object(s3_server, s3_bucket, 16 << 20, seed=2)
    reader = make_reader(tmp_path, readahead=8)
    obj = StoredObject(oid, len(data), link.store(s3_bucket), key)
    try:
        assert read_sequentially(reader, obj, stop=4 * BLOCK) == data[:4 * BLOCK]
        time.sleep(0.5)  # let parts in flight land: none is started after the reader stopped
        fetched = counter(reader, "store_bytes")
        assert 4 * BLOCK <= fetched <= 8 * BLOCK, fetched  # about twice what it read, not the object's 64 blocks
        assert link.answered < 16 * BLOCK
    finally:
        reader.close()


def test_a_young_window_keeps_several_requests_in_flight(s3_server, s3_bucket, link, tmp_path):
    """From the stream's first blocks on, the window is fetched in several requests at once (not one request as
    large as the window): on a remote S3 each connection is capped, so a young window in one request crawls."""
    data, oid, key = put_object(s3_server, s3_bucket, 8 << 20, seed=13)
    reader = make_reader(tmp_path)
    obj = StoredObject(oid, len(data), link.store(s3_bucket, timeout=30), key)  # outlasts the barrier
    handle = reader.open_stored(obj, b"", 0, obj.size)
    out = []
    try:
        for index in range(8):
            if index == 2:  # the reader is proven sequential, its requests so far answered (blocks 0, 1, 2) ...
                assert wait_for(lambda: link.requests == 3 and link.in_flight == 0)
                link.meet(3)  # ... and its next two reads widen the window by 3 blocks in three requests at once
                              # (one or two requests would wait here until the barrier breaks, after 20 s)
            out.append(join(handle.pieces(index * BLOCK, BLOCK)))
    finally:
        handle.close()
        reader.close()
    assert b"".join(out) == data[:8 * BLOCK]
    assert not link.barrier_broken and counter(reader, "part_retries") == 0


def test_reads_handed_over_out_of_order_continue_the_stream(s3_server, s3_bucket, link, tmp_path):
    """The kernel's read-ahead requests reach the daemon on libfuse's threads, neighbours sometimes swapped: the
    stream goes on with its window (a swap had restarted it: a new window, from a block)."""
    data, oid, key = put_object(s3_server, s3_bucket, 24 << 20, seed=14)
    store = link.store(s3_bucket)
    chunk, read = 1 << 20, 12
    in_order = list(range(read))
    swapped = [0] + [n for pair in zip(in_order[2::2], in_order[1::2]) for n in pair] + [read - 1]
    assert sorted(swapped) == in_order
    fetched = {}
    for name, order in (("in order", in_order), ("swapped", swapped)):
        reader = make_reader(tmp_path / name.replace(" ", "-"), readahead=8)
        handle = reader.open_stored(StoredObject(oid, len(data), store, key), b"", 0, len(data))
        try:
            got = {n: join(handle.pieces(n * chunk, chunk)) for n in order}
            settle(reader, link)  # every part the window claimed has landed (close would cancel queued ones)
        finally:
            handle.close()
            reader.close()
        assert b"".join(got[n] for n in in_order) == data[:read * chunk]
        assert counter(reader, "readahead_restarts") == 0, name
        fetched[name] = counter(reader, "store_bytes")
    # the window reached as far ahead of the swapped reader as of the other (8 MiB, the most here)
    assert fetched["swapped"] >= fetched["in order"] - chunk, fetched
    print(fetched)


def test_concurrent_readers_of_one_object_share_parts(s3_server, s3_bucket, link, tmp_path):
    data, oid, key = put_object(s3_server, s3_bucket, 6 << 20, seed=3)
    reader = make_reader(tmp_path)
    obj = StoredObject(oid, len(data), link.store(s3_bucket), key)
    barrier = threading.Barrier(8)
    results: list[bytes] = []

    def read() -> None:
        barrier.wait()
        results.append(read_sequentially(reader, obj, chunk=random.choice([64, 128, 200]) * KiB))
    try:
        run_threads(read, [()] * 8)
    finally:
        reader.close()
    assert results == [data] * 8
    assert counter(reader, "blocks_fetched") == len(data) // BLOCK
    assert counter(reader, "blocks_fetched_again") == 0 and counter(reader, "store_bytes") == len(data)


def test_scattered_reads_fetch_small_ranges_concurrently(s3_server, s3_bucket, link, tmp_path):
    data, oid, key = put_object(s3_server, s3_bucket, 24 << 20, seed=4)
    reader = make_reader(tmp_path)
    obj = StoredObject(oid, len(data), link.store(s3_bucket), key)
    handle = reader.open_stored(obj, b"", 0, obj.size)
    blocks = random.Random(5).sample(range(0, len(data) // BLOCK, 12), 8)  # 3 MiB apart: no sequence
    offsets = [block * BLOCK + random.Random(block).randrange(0, BLOCK - 4 * KiB) for block in blocks]
    link.meet(4)  # independent misses of several threads are in flight at once
    results = {}

    def read(offset: int) -> None:
        results[offset] = join(handle.pieces(offset, 4 * KiB))
    try:
        run_threads(read, [(offset,) for offset in offsets])
    finally:
        handle.close()
        reader.close()
    assert all(results[offset] == data[offset:offset + 4 * KiB] for offset in offsets)
    assert not link.barrier_broken
    assert counter(reader, "store_bytes") == len(offsets) * BLOCK  # a block per read, not the object


def test_the_cache_keeps_what_was_read(s3_server, s3_bucket, link, tmp_path):
    data, oid, key = put_object(s3_server, s3_bucket, 4 << 20, seed=6)
    store = link.store(s3_bucket)
    read_in_full_once(tmp_path, StoredObject(oid, len(data), store, key), data)
    requests = link.requests
    again = make_reader(tmp_path)  # a remount: empty memory, the same disk cache
    try:
        assert read_sequentially(again, StoredObject(oid, len(data), store, key)) == data
    finally:
        again.close()
    assert link.requests == requests and counter(again, "store_requests") == 0


def test_a_stream_is_cached_by_parts_and_a_damaged_block_alone_is_fetched_again(s3_server, s3_bucket, link,
                                                                                tmp_path):
    data, oid, key = put_object(s3_server, s3_bucket, 16 << 20, seed=9)  # parts reach full size
    store = link.store(s3_bucket)
    read_in_full_once(tmp_path, StoredObject(oid, len(data), store, key), data)
    directory = tmp_path / "cache" / "blocks" / oid.key
    names = os.listdir(directory)
    assert len(names) < len(data) // BLOCK // 2, names    # parts in files of several blocks, not a file a block
    victim = max(names, key=lambda name: int(name.split("-")[2]) if name.count("-") == 2 else 1)
    assert victim.count("-") == 2                         # <block size>-<first>-<count>
    content = bytearray((directory / victim).read_bytes())
    content[BLOCK + 5] ^= 1                               # the second block of that part
    (directory / victim).write_bytes(bytes(content))
    requests = link.requests
    again = make_reader(tmp_path)                         # a remount on the same cache
    try:
        assert read_sequentially(again, StoredObject(oid, len(data), store, key)) == data
    finally:
        again.close()
    assert link.requests == requests + 1
    assert counter(again, "store_bytes") == BLOCK and counter(again, "blocks_fetched") == 1
    assert again.cache.stats()["damaged"] == 1


def read_by_descriptor(handle, offset: int, size: int) -> bytes:
    """What libfuse sends for a read: the bytes at the (fd, position)s the handle answers, else its pieces."""
    segments = handle.fd_segments(offset, size)
    if segments is None:
        return join(handle.pieces(offset, size))
    return b"".join(os.pread(fd, length, position) for fd, position, length in segments)


def test_a_remount_serves_checked_part_files_by_descriptor_and_never_a_damaged_block(s3_server, s3_bucket, link,
                                                                                     tmp_path):
    data, oid, key = put_object(s3_server, s3_bucket, 16 << 20, seed=10)  # parts reach full size
    store = link.store(s3_bucket)
    obj = StoredObject(oid, len(data), store, key)
    read_in_full_once(tmp_path, obj, data)
    requests = link.requests
    clean = make_reader(tmp_path)                          # a remount on the same cache
    handle = clean.open_stored(obj, b"", 0, obj.size)
    try:
        chunk = 128 * KiB
        assert b"".join(read_by_descriptor(handle, offset, chunk) for offset in range(0, obj.size, chunk)) == data
    finally:
        handle.close()
        clean.close()
    assert link.requests == requests
    assert counter(clean, "reads_by_descriptor") == obj.size // chunk
    directory = tmp_path / "cache" / "blocks" / oid.key
    victim = max(os.listdir(directory), key=lambda name: int(name.split("-")[2]) if name.count("-") == 2 else 1)
    _, first, count = (int(part) for part in victim.split("-"))
    assert count > 2
    content = bytearray((directory / victim).read_bytes())
    content[BLOCK + 7] ^= 1                                # the second block of that part file
    (directory / victim).write_bytes(bytes(content))
    again = make_reader(tmp_path)
    handle = again.open_stored(obj, b"", 0, obj.size)
    try:
        damaged = (first + 1) * BLOCK
        assert handle.fd_segments(damaged, 4096) is None   # a file with a damaged block is never read by fd
        assert read_by_descriptor(handle, damaged, 4096) == data[damaged:damaged + 4096]
        chunk = 128 * KiB
        assert b"".join(read_by_descriptor(handle, offset, chunk) for offset in range(0, obj.size, chunk)) == data
    finally:
        handle.close()
        again.close()
    assert link.requests == requests + 1                   # the damaged block alone, fetched again
    assert counter(again, "store_bytes") == BLOCK
    assert again.cache.stats()["damaged"] == 1


def test_a_reread_by_descriptor_fetches_the_cache_s_gaps_ahead(s3_server, s3_bucket, link, tmp_path):
    """Reads served from part files by descriptor move the read-ahead window too: the parts missing from the
    cache (evicted) are fetched before the reader reaches them, not one miss at a time when it does."""
    data, oid, key = put_object(s3_server, s3_bucket, 4 << 20, seed=12)
    store = link.store(s3_bucket)
    obj = StoredObject(oid, len(data), store, key)
    read_in_full_once(tmp_path, obj, data)
    directory = tmp_path / "cache" / "blocks" / oid.key
    half = len(data) // 2
    for name in os.listdir(directory):    # the second half of the object leaves the cache
        first = int(name.split("-")[1])
        if first * BLOCK >= half:
            os.unlink(directory / name)
    requests = link.requests
    again = make_reader(tmp_path)          # a remount on the same cache
    handle = again.open_stored(obj, b"", 0, obj.size)
    try:
        chunk = 128 * KiB
        first_half = b"".join(read_by_descriptor(handle, offset, chunk) for offset in range(0, half, chunk))
        assert first_half == data[:half] and counter(again, "reads_by_descriptor") == half // chunk
        assert wait_for(lambda: again.in_memory(obj, half, half + PART), timeout=10), \
            "the gap after the cached half was not fetched ahead of the reader"
        rest = b"".join(read_by_descriptor(handle, offset, chunk) for offset in range(half, obj.size, chunk))
        assert rest == data[half:]
    finally:
        handle.close()
        again.close()
    assert counter(again, "parts") >= 1 and counter(again, "store_bytes") == len(data) - half
    assert link.requests > requests


def test_each_pass_of_a_reread_has_the_files_ahead_read_from_the_disk(s3_server, s3_bucket, link, tmp_path,
                                                                      monkeypatch):
    """A re-read by descriptor asks for the part files ahead of it (``advise_blocks``), each once per pass; a
    second pass in the same daemon (the page cache may have let go of them meanwhile) asks again."""
    data, oid, key = put_object(s3_server, s3_bucket, 4 << 20, seed=13)
    obj = StoredObject(oid, len(data), link.store(s3_bucket), key)
    read_in_full_once(tmp_path, obj, data)
    blocks = len(data) // BLOCK
    reader = make_reader(tmp_path)
    advised: list[int] = []
    original = reader.cache.advise_blocks

    def advise(oid, first, end, block_size):
        advised.extend(index for index in range(first, end) if index < blocks)
        original(oid, first, end, block_size)
    monkeypatch.setattr(reader.cache, "advise_blocks", advise)
    try:
        for passes in (1, 2):
            handle = reader.open_stored(obj, b"", 0, obj.size)
            chunk = 128 * KiB
            assert b"".join(read_by_descriptor(handle, offset, chunk) for offset in range(0, obj.size, chunk)) == data
            handle.close()
            # every block file but the first (checked when the reader gets there) asked for, once in each pass
            expected = sorted(list(range(1, blocks)) * passes)
            assert wait_for(lambda: sorted(advised) == expected, timeout=10), (passes, sorted(advised))
    finally:
        reader.close()


def test_a_cold_read_copies_the_blocks_it_holds_and_never_checks_their_files_back(s3_server, s3_bucket, link,
                                                                                  tmp_path, monkeypatch):
    """Blocks just fetched from the store (held in memory) are served from memory even once their part files are
    on disk: a cold read reads no part file back to check it whole before handing it to libfuse."""
    from djfs.cache import CheckedFile
    data, oid, key = put_object(s3_server, s3_bucket, 4 << 20, seed=11)
    obj = StoredObject(oid, len(data), link.store(s3_bucket), key)
    checked = []
    original = CheckedFile.verify
    monkeypatch.setattr(CheckedFile, "verify", lambda file, *args: checked.append(file) or original(file, *args))
    reader = make_reader(tmp_path)
    handle = reader.open_stored(obj, b"", 0, obj.size)
    chunk, half = 128 * KiB, obj.size // 2
    try:
        first = b"".join(read_by_descriptor(handle, offset, chunk) for offset in range(0, half, chunk))
        reader.cache.flush()                               # the blocks fetched so far are in part files now
        assert any((tmp_path / "cache" / "blocks" / oid.key).iterdir())
        second = b"".join(read_by_descriptor(handle, offset, chunk) for offset in range(half, obj.size, chunk))
    finally:
        handle.close()
        reader.close()
    assert first + second == data
    assert counter(reader, "reads_by_descriptor") == 0
    assert checked == []


def test_a_corrupt_object_read_in_full_fails_and_leaves_nothing_cached(s3_server, s3_bucket, link, tmp_path,
                                                                       caplog):
    data, oid, key = put_object(s3_server, s3_bucket, 3 << 20, seed=7)
    damaged = bytearray(data)
    damaged[-5:] = b"xxxxx"
    s3_server.store(s3_bucket).put(key, bytes(damaged))
    reader = make_reader(tmp_path)
    obj = StoredObject(oid, len(data), link.store(s3_bucket), key)
    try:
        with pytest.raises(CorruptObjectError):
            read_sequentially(reader, obj)          # a read fails once the digest is known wrong
        with pytest.raises(CorruptObjectError, match=s3_bucket):
            reader.open_stored(obj, b"", 0, obj.size)
    finally:
        reader.close()
    assert "does not match its content digest" in caplog.text
    assert not (tmp_path / "cache" / "blocks" / oid.key).exists() or \
        not list((tmp_path / "cache" / "blocks" / oid.key).iterdir())


def test_blocks_are_checked_against_the_sums_of_a_verified_read(s3_server, s3_bucket, link, tmp_path):
    data, oid, key = put_object(s3_server, s3_bucket, 3 << 20, seed=8)
    store = link.store(s3_bucket)
    first = read_in_full_once(tmp_path, StoredObject(oid, len(data), store, key), data)
    assert counter(first, "objects_verified") == 1
    cache = ObjectCache(tmp_path / "cache", 1 << 30)
    assert cache.get_sums(oid, len(data)) == hashing.sums_of(data)
    cache.drop_blocks(oid.key)                                  # only the sums stay
    damaged = bytearray(data)
    damaged[BLOCK + 10] ^= 1
    s3_server.store(s3_bucket).put(key, bytes(damaged))         # replaced in the store
    second = make_reader(tmp_path)
    handle = second.open_stored(StoredObject(oid, len(data), store, key), b"", 0, len(data))
    try:
        assert join(handle.pieces(0, 1000)) == data[:1000]       # an intact block is served
        with pytest.raises(CorruptObjectError, match="checksums"):
            handle.pieces(BLOCK, 1000)                           # the damaged one is refused
    finally:
        handle.close()
        second.close()


def test_sums_recorded_later_are_found_without_a_remount(s3_server, s3_bucket, link, tmp_path):
    """A daemon that read an object before any block sums existed picks up sums recorded later (by a library
    fetch, another daemon) after the cache's rescan interval, and from then on refuses a damaged block."""
    data, oid, key = put_object(s3_server, s3_bucket, 3 << 20, seed=9)
    store = link.store(s3_bucket)
    obj = StoredObject(oid, len(data), store, key)
    reader = Reader(ObjectCache(tmp_path / "cache", 1 << 30, rescan_interval=0.2), block_size=BLOCK,
                    part_size=PART, whole_max=0, readahead=4, threads=8, stats=Stats())
    try:
        handle = reader.open_stored(obj, b"", 0, len(data))
        try:
            assert join(handle.pieces(0, 1000)) == data[:1000]  # no sums recorded yet: length-checked
        finally:
            handle.close()
        ObjectCache(tmp_path / "cache", 1 << 30).put_sums(oid, len(data), hashing.sums_of(data))  # recorded elsewhere
        damaged = bytearray(data)
        damaged[2 * BLOCK + 10] ^= 1
        s3_server.store(s3_bucket).put(key, bytes(damaged))     # then the store's copy goes bad
        time.sleep(0.3)                                          # past the rescan interval
        handle = reader.open_stored(obj, b"", 0, len(data))
        try:
            with pytest.raises(CorruptObjectError, match="checksums"):
                handle.pieces(2 * BLOCK, 1000)
        finally:
            handle.close()
    finally:
        reader.close()


def test_a_remounted_daemon_rereads_from_the_cache_without_requests(schema, s3_server, db_config, mounts):
    """Through real mounts: a cold sequential read of a large value keeps every block it read in the disk cache,
    so after an unmount and a new mount on the same cache the re-read makes no request to the store and is served
    by the part files' descriptors; a part file damaged before the next mount has its damaged block alone
    fetched again, never served.  (And the daemon loads boto3 before it mounts.)"""
    with djfs.config.override(**s3_config(s3_server, "reread")):
        schema.set_external_storage(s3_server.create_bucket(f"djfs-reread-{uuid.uuid4().hex[:12]}"))

        @schema
        class Value(djfs.Manual):
            definition = "k : int\n---\nv : external"
        value = np.random.default_rng(3).random(3 * (1 << 20))   # 24 MiB: read by blocks
        Value.insert1({"k": 1, "v": value})
    cache = mounts.base / "reread-cache"
    options = [f"schemas={schema.database}", "whole_max=1MiB", "block_size=1MiB"]
    contents = []
    for run in range(3):
        if run == 2:  # damage the second 256 KiB of a part file
            # the file of most blocks (a young read-ahead window's parts are of one block each)
            parts = [path for path in (cache / "blocks").glob("*/*") if path.name.count("-") in (1, 2)]
            victim = max(parts, key=lambda path: int(path.name.split("-")[2]) if path.name.count("-") == 2 else 1)
            damaged = bytearray(victim.read_bytes())
            damaged[hashing.CHECK_BLOCK + 3] ^= 1
            victim.write_bytes(bytes(damaged))
        mount = mounts.mount({**s3_config(s3_server, "reread"), "cache-location": str(cache)}, options)
        path = mount.path(schema.database, "Value", "k=1", "v.npy")
        assert wait_for(path.exists)
        before = mount.stats()
        contents.append(path.read_bytes())
        after = mount.stats()
        requests = after.get("store_requests", 0) - before.get("store_requests", 0)
        by_descriptor = after.get("reads_by_descriptor", 0) - before.get("reads_by_descriptor", 0)
        mount.stop()  # the daemon finishes its cache writes before it exits
        if run == 0:
            assert requests > 0
            log = mount.log_text()  # S3 configured: boto3 was loaded before the mount answered anything
            assert log.index("botocore's S3 model loaded") < log.index("mounting "), log
        else:
            assert requests == run - 1, requests      # none, then the damaged block's
            assert by_descriptor > 0
    assert contents[0] == contents[1] == contents[2]
    np.testing.assert_array_equal(np.load(io.BytesIO(contents[1])), value)
