"""Verified reads: every byte that leaves a store for a caller is checked against the object's content digest,
whatever kind of object it is (djfs's SHA-256 with an origin, DataJoint's MD5 keyed by a UUID), through the
library, the cache and the mount; a mismatch is an error naming the store, and never reaches the cache."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import uuid

import numpy as np
import pytest

import djfs
from djfs import hashing
from djfs.cache import ObjectCache
from djfs.cache.through import read_object
from djfs.errors import CorruptObjectError
from djfs.stores import FileStore
from djfs.stores.verified import fetch_verified
from fixtures_fuse import s3_config, wait_for

MiB = 1 << 20


def datajoint_attachment(name: str, content: bytes) -> tuple[hashing.ObjectId, str]:
    """A DataJoint 0.14 attachment's identity: MD5 of ``name || NUL || bytes``, keyed by that UUID in hex."""
    digest = hashlib.md5(name.encode() + b"\0" + content).digest()
    key = uuid.UUID(bytes=digest).hex
    return hashing.ObjectId(key, digest, hashlib.md5, prefix=name.encode() + b"\0"), key


@pytest.mark.parametrize("size", [0, 1000, 3 * MiB + 17])
def test_an_object_of_another_kind_is_verified_and_cached_by_its_own_key(tmp_path, size):
    content = random.Random(size).randbytes(size)
    oid, key = datajoint_attachment("scan.tif", content)
    store = FileStore(tmp_path / "store")
    path = f"{key[:2]}/{key}"
    store.put(path, content)
    cache = ObjectCache(tmp_path / "cache", 100 * MiB)
    assert bytes(read_object(store, path, oid, size, cache)) == content
    cache.flush()
    assert cache.path(key) == tmp_path / "cache" / "objects" / key[:2] / key
    store.remove(path)                                        # from the cache alone now
    assert bytes(read_object(store, path, oid, size, cache)) == content

    damaged = bytearray(content)
    if size:
        damaged[-1] ^= 1
        store.put(path, bytes(damaged))
        fresh = ObjectCache(tmp_path / "fresh", 100 * MiB)
        with pytest.raises(CorruptObjectError, match=str(tmp_path / "store")):
            read_object(store, path, oid, size, fresh)
        fresh.flush()
        assert fresh.path(key) is None                        # nothing cached
        assert bytes(read_object(store, path, oid, size, fresh, verify=False)) == damaged  # verify-reads = size


def test_verification_records_the_block_sums_it_checked(tmp_path):
    content = random.Random(1).randbytes(5 * MiB + 3)
    store = FileStore(tmp_path / "store")
    store.put("ab/cd/x", content)
    oid = hashing.object_id(hashing.object_hash(content, b"o"), b"o")
    data, sums = fetch_verified(store, "ab/cd/x", oid, len(content))
    assert data == content and sums == hashing.sums_of(content)
    cache = ObjectCache(tmp_path / "cache", 100 * MiB)
    cache.put_object(oid, data, sums)
    assert cache.get_sums(oid, len(content)) == sums         # kept apart from the copy: it is large
    cache.clear()
    assert cache.get_sums(oid, len(content)) is None


def test_a_large_object_is_verified_while_its_parts_arrive_in_parallel(store, tmp_path):
    """On S3 (small parts in the test fixture) the parts land in any order: the digest follows them in order."""
    content = np.random.default_rng(2).bytes(17 * MiB + 5)
    oid = hashing.object_id(hashing.object_hash(content, b"o"), b"o")
    store.put("ab/cd/large", content)
    data, sums = fetch_verified(store, "ab/cd/large", oid, len(content))
    assert data == content and sums == hashing.sums_of(content)
    damaged = bytearray(content)
    damaged[9 * MiB] ^= 1                                    # in a middle part
    store.put("ab/cd/large", bytes(damaged))
    with pytest.raises(CorruptObjectError, match="does not match"):
        fetch_verified(store, "ab/cd/large", oid, len(content))


@pytest.fixture
def damaged_values(schema, s3_server, db_config):
    """A small value (cached whole on open) and a large one (read by blocks), both damaged in the store."""
    with djfs.config.override(**s3_config(s3_server, "verify")):
        bucket = s3_server.create_bucket(f"djfs-verify-{uuid.uuid4().hex[:12]}")
        schema.set_external_storage(bucket)

        @schema
        class Value(djfs.Manual):
            definition = "k : int\n---\nv : external"
        rng = np.random.default_rng(9)
        Value.insert([{"k": 1, "v": rng.random(50_000)}, {"k": 2, "v": rng.random(3 * MiB // 8 * 3)}])
        store = schema.external.store()
        hashes = dict(Value.connection.query(f"SELECT k, v FROM {Value.full_table_name}").fetchall())
        for hash_ in hashes.values():
            key = hashing.object_path(hash_)
            data = bytearray(store.get(key))
            data[-10:] = bytes(10)                               # ten bytes overwritten at the end
            store.put(key, bytes(data))
        yield Value, hashes, bucket


def test_the_mount_answers_eio_for_a_damaged_object_and_logs_it(schema, s3_server, mounts, damaged_values):
    Value, hashes, bucket = damaged_values
    cache = mounts.base / "verify-cache"
    mount = mounts.mount({**s3_config(s3_server, "verify"), "cache-location": str(cache)},
                         [f"schemas={schema.database}", "whole_max=1MiB", "block_size=1MiB"])
    directory = mount.path(schema.database, "Value")
    small, large = directory / "k=1" / "v.npy", directory / "k=2" / "v.npy"
    assert wait_for(lambda: small.exists() and large.exists())
    with pytest.raises(OSError) as caught:
        small.read_bytes()                                    # filled whole on open: the digest fails
    assert caught.value.errno == errno.EIO
    with pytest.raises(OSError) as caught:
        large.read_bytes()                                    # read in full: the digest fails at the end
    assert caught.value.errno == errno.EIO
    with pytest.raises(OSError) as caught:
        large.read_bytes()                                    # and every read after
    assert caught.value.errno == errno.EIO
    log = mount.log_text()
    assert all(hash_ in log for hash_ in hashes.values()) and "does not match its content digest" in log
    assert bucket in log                                      # the store is named
    mount.stop()
    for hash_ in hashes.values():                             # nothing of them kept
        assert not (cache / "objects" / hash_[:2] / hash_).exists()
        blocks = cache / "blocks" / hash_
        assert not blocks.exists() or not os.listdir(blocks)
