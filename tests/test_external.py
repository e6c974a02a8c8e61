"""The ``external`` type end to end, on both stores: declare, insert, fetch, delete, gc, cache."""

from __future__ import annotations

import base64
import threading
import time
import uuid

import numpy as np
import pytest

import djfs
from djfs import blob, hashing
from djfs.cache import open_cache
from djfs.errors import CorruptObjectError, DeclarationError, MissingObjectError, QueryError, StoreError
from djfs.objects.external import origin_of


@pytest.fixture
def movies(schema, backend):
    backend(schema)

    @schema
    class Movie(djfs.Manual):
        definition = """
        # motion-aligned movies
        movie_id : int
        ---
        aligned = null : external   # motion-aligned movie
        note = "" : varchar(64)
        """
    return Movie


def hash_of(table, key):
    """The hash an external attribute holds, read with plain SQL."""
    where = " AND ".join(f"`{k}` = %s" for k in key)
    return table.connection.query(f"SELECT aligned FROM {table.full_table_name} WHERE {where}",
                                  tuple(key.values())).fetchone()[0]


def objects_in(schema):
    store = schema.external.store()
    return {info.key.rsplit("/", 1)[-1] for info in store.list()}


def test_insert_fetch_like_a_blob(movies, schema):
    values = {1: np.random.default_rng(1).standard_normal((64, 32, 3)).astype(np.float32),
              2: {"a": [1, 2.5, "x"], "b": None}, 3: b"raw \x00 bytes", 4: "text", 5: np.arange(10**5)}
    movies.insert([{"movie_id": k, "aligned": v} for k, v in values.items()] + [{"movie_id": 6}])
    fetched = dict(zip(*movies.fetch("movie_id", "aligned", order_by="movie_id")))
    for key, value in values.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(fetched[key], value)
        else:
            assert fetched[key] == value
    assert fetched[6] is None
    assert (movies & {"movie_id": 2}).fetch1("aligned") == values[2]
    assert len(objects_in(schema)) == 5
    # the value stored is exactly what a blob attribute would hold
    entry = schema.external.connection.query(
        f"SELECT hash, origin, size FROM {schema.external.full_table_name} WHERE view = 'bytes'").fetchone()
    data = schema.external.store().get(hashing.object_path(entry[0]))
    assert data == blob.pack(values[3]) and len(data) == entry[2]


def test_hash_is_documented_layout(movies, schema):
    value = np.arange(12, dtype=np.int16).reshape(3, 4)
    movies.insert1({"movie_id": 7, "aligned": value})
    stored = movies.fetch1("aligned")
    np.testing.assert_array_equal(stored, value)
    hash_ = hash_of(movies, {"movie_id": 7})
    origin = origin_of(movies.full_table_name, {"movie_id": 7})
    assert origin == f'{movies.full_table_name}\n{{"movie_id":7}}'.encode()
    digest = __import__("hashlib").sha256(blob.pack(value) + b"\x00" + origin).digest()
    assert hash_ == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert len(hash_) == 43 and hashing.is_valid(hash_)
    row = schema.external.entry(hash_)
    assert row["status"] == "stored" and row["view"] == "npy" and row["size"] == len(blob.pack(value))
    # the view metadata describe a real .npy without touching the store
    npy = bytes(row["view_header"]) + blob.pack(value)[row["data_offset"]:]
    assert len(npy) == row["view_size"]
    import io
    np.testing.assert_array_equal(np.load(io.BytesIO(npy)), value)


def test_external_rules(movies, schema):
    movies.insert1({"movie_id": 1, "aligned": np.ones(3)})
    with pytest.raises(QueryError, match="aligned.*restriction"):
        movies & {"aligned": "x"}

    class Keyed(djfs.Manual):
        definition = "movie : external\n---\nx : int"
    with pytest.raises(DeclarationError, match="primary key"):
        schema(Keyed, context={})

    class Defaulted(djfs.Manual):
        definition = "k : int\n---\nm = 5 : external"
    with pytest.raises(DeclarationError, match="only default to null"):
        schema(Defaulted, context={})
    assert movies.heading["aligned"].is_external and movies.heading["aligned"].nullable
    assert schema.external.exists() and "~external" in schema.list_tables()


def test_missing_configuration_is_named(schema, db_config, tmp_path):
    with djfs.config.override(**{"external-location": None}):
        @schema
        class NoStore(djfs.Manual):
            definition = "k : int\n---\nm : external"
        with pytest.raises(StoreError, match="'external-location' is not set"):
            NoStore.insert1({"k": 1, "m": 1})
        djfs.config["external-location"] = f"file://{tmp_path}"
        with pytest.raises(StoreError, match="set_external_storage"):
            NoStore.insert1({"k": 1, "m": 1})
        schema.set_external_storage("folder")

        @schema
        class Named(djfs.Manual):
            definition = "k : int\n---\nm : external-raw"
        with pytest.raises(StoreError, match="'external-location-raw' is not set"):
            Named.insert1({"k": 1, "m": 1})
        assert len(NoStore) == 0 and len(Named) == 0
        NoStore.insert1({"k": 1, "m": 1})
        assert NoStore.fetch1("m") == 1


def test_named_store(schema, raw_store):

    @schema
    class Two(djfs.Manual):
        definition = """
        k : int
        ---
        a : external
        b : external-raw
        """
    same = np.arange(100)
    Two.insert1({"k": 1, "a": same, "b": same})
    a, b = Two.fetch1("a", "b")
    np.testing.assert_array_equal(a, same)
    np.testing.assert_array_equal(b, same)
    assert Two.heading["b"].store == "raw"
    # the same value in two stores: two entries (the store name is part of the origin)
    stores = dict(schema.connection.query(f"SELECT store, COUNT(*) FROM {schema.external.full_table_name} "
                                          "GROUP BY store").fetchall())
    assert stores == {"": 1, "raw": 1}
    assert sum(1 for _ in raw_store.rglob("*") if _.is_file()) == 1


def test_failed_insert_after_upload_leaves_no_dangling_row(movies, schema):
    movies.insert1({"movie_id": 1, "aligned": np.ones(5)})
    before = objects_in(schema)
    # the second row is a duplicate key: the upload of row 3's object happens, then the transaction fails
    with pytest.raises(djfs.errors.DuplicateError):
        movies.insert([{"movie_id": 3, "aligned": np.full(5, 3.0)}, {"movie_id": 1, "aligned": np.zeros(5)}])
    assert movies.fetch("movie_id").tolist() == [1]
    entries = schema.connection.query(f"SELECT hash FROM {schema.external.full_table_name}").fetchall()
    assert len(entries) == 1  # no entry without a row either
    # every row points at an object that exists
    for (hash_,) in entries:
        assert schema.external.store().exists(hashing.object_path(hash_))
    # at most orphan objects remain; gc sweeps them once older than the grace period
    orphans = objects_in(schema) - before
    assert len(orphans) <= 2
    report = schema.external.gc(grace=0)
    assert set(report.orphans) == orphans
    assert objects_in(schema) == before
    np.testing.assert_array_equal(movies.fetch1("aligned"), np.ones(5))


def test_delete_marks_deleted_and_reinsert_revives(movies, schema):
    value = np.arange(20.0)
    movies.insert1({"movie_id": 1, "aligned": value})
    hash_ = schema.connection.query(f"SELECT hash FROM {schema.external.full_table_name}").fetchone()[0]
    (movies & {"movie_id": 1}).delete()
    assert schema.external.entry(hash_)["status"] == "deleted"
    assert hash_ in objects_in(schema)  # the object stays until gc
    movies.insert1({"movie_id": 1, "aligned": value})
    assert schema.external.entry(hash_)["status"] == "stored"
    np.testing.assert_array_equal(movies.fetch1("aligned"), value)
    # replace with another value: the old entry is marked deleted in the same transaction
    movies.insert1({"movie_id": 1, "aligned": value + 1}, replace=True)
    assert schema.external.entry(hash_)["status"] == "deleted"
    np.testing.assert_array_equal(movies.fetch1("aligned"), value + 1)


def test_gc_dry_run_then_run(movies, schema):
    movies.insert([{"movie_id": i, "aligned": np.full(10, i)} for i in range(5)])
    (movies & "movie_id < 2").delete()
    assert len(objects_in(schema)) == 5
    dry = schema.external.gc(dry_run=True)
    assert dry.dry_run and len(dry.entries) == 2 and len(objects_in(schema)) == 5
    report = schema.external.gc()
    assert len(report.entries) == 2 and not report.failed and report.freed > 0
    assert len(objects_in(schema)) == 3
    assert len(schema.connection.query(f"SELECT * FROM {schema.external.full_table_name}").fetchall()) == 3
    assert [v[0] for v in movies.fetch("aligned", order_by="movie_id")] == [2, 3, 4]
    # a young orphan (an insert in flight) survives; an old one is swept
    store = schema.external.store()
    young = hashing.object_hash(b"young", b"")
    store.put(hashing.object_path(young), b"young")
    assert young not in schema.external.gc(grace=3600).orphans
    assert young in objects_in(schema)
    time.sleep(1.1)
    assert young in schema.external.gc(grace=1).orphans
    assert young not in objects_in(schema)


@pytest.fixture
def file_clip(schema, db_config, tmp_path):
    """A table with one external attribute on a file store at ``tmp_path/store/lab``."""
    root = tmp_path / "store"
    root.mkdir()
    with djfs.config.override(**{"external-location": f"file://{root}"}):
        schema.set_external_storage("lab")

        @schema
        class Clip(djfs.Manual):
            definition = "k : int\n---\nm : external"
        yield Clip, root


def test_gc_keeps_entries_it_could_not_remove(schema, file_clip):
    Clip, root = file_clip
    Clip.insert([{"k": 1, "m": np.ones(4)}, {"k": 2, "m": np.zeros(4)}])
    rows = schema.connection.query(f"SELECT hash FROM {schema.external.full_table_name}").fetchall()
    Clip.delete()
    # make one object impossible to remove: a non-empty directory in its place
    stuck = root / "lab" / hashing.object_path(rows[0][0])
    stuck.unlink()
    stuck.mkdir()
    (stuck / "x").write_bytes(b"x")
    report = schema.external.gc()
    assert [name for name, _ in report.failed] == [rows[0][0]] and report.entries == [rows[1][0]]
    assert schema.external.entry(rows[0][0])["status"] == "deleted"   # kept for the next run
    (stuck / "x").unlink()
    stuck.rmdir()
    assert schema.external.gc().entries == [rows[0][0]]


def test_cache_off_cold_warm_identical(movies, schema, tmp_path):
    """The same values without a cache, from a fresh cache (cold) and from the cache alone (warm): the store is
    emptied before the warm read, so only the cache can serve it."""
    values = [np.random.default_rng(i).integers(0, 1000, size=(50, 7)) for i in range(4)]
    movies.insert([{"movie_id": i, "aligned": v} for i, v in enumerate(values)])
    no_cache = movies.fetch("aligned", order_by="movie_id")
    djfs.config["cache-location"] = str(tmp_path / "fresh-cache")
    try:
        cache = schema.external.cache()
        assert cache.usage() == 0
        cold = movies.fetch("aligned", order_by="movie_id")
        cache.flush()  # filled in the background, after the values were returned
        assert cache.stats()["objects"] == 4
        store = schema.external.store()
        for info in list(store.list()):
            store.remove(info.key)
        assert objects_in(schema) == set()
        hits = cache.stats()["hits"]
        warm = movies.fetch("aligned", order_by="movie_id")
        assert cache.stats()["hits"] - hits == 4
        for a, b, c, v in zip(no_cache, cold, warm, values):
            np.testing.assert_array_equal(a, v)
            np.testing.assert_array_equal(b, v)
            np.testing.assert_array_equal(c, v)
    finally:
        djfs.config["cache-location"] = None


@pytest.fixture
def verify_always():
    with djfs.config.override(**{"verify-reads": "always"}):
        yield


def test_corrupted_or_truncated_object_is_an_error(movies, schema, tmp_path, verify_always):
    movies.insert([{"movie_id": 1, "aligned": np.arange(1000.0)}, {"movie_id": 2, "aligned": np.arange(999.0)}])
    hashes = [hash_of(movies, {"movie_id": 1}), hash_of(movies, {"movie_id": 2})]
    store = schema.external.store()
    good = store.get(hashing.object_path(hashes[0]))
    store.put(hashing.object_path(hashes[0]), good[:-1] + bytes([good[-1] ^ 1]))   # one bit flipped
    store.put(hashing.object_path(hashes[1]), store.get(hashing.object_path(hashes[1]))[:-8])  # truncated
    for cache in (None, str(tmp_path / "cache")):
        djfs.config["cache-location"] = cache
        try:
            with pytest.raises((CorruptObjectError, MissingObjectError, StoreError)):
                (movies & {"movie_id": 1}).fetch1("aligned")
            with pytest.raises((CorruptObjectError, StoreError)):
                (movies & {"movie_id": 2}).fetch1("aligned")
            if cache:
                assert schema.external.cache().path(hashes[0]) is None  # nothing bad was cached
        finally:
            djfs.config["cache-location"] = None
    store.remove(hashing.object_path(hashes[0]))
    with pytest.raises(MissingObjectError):
        (movies & {"movie_id": 1}).fetch1("aligned")


def test_file_reads_are_hash_checked_by_default_and_size_checked_on_request(file_clip, tmp_path):
    """Ten bytes overwritten at the end of an object on a file store: by default an error naming the store path,
    with or without a cache, and nothing cached; ``verify-reads = size`` returns the damaged value."""
    Clip, root = file_clip
    value = np.random.default_rng(3).random(500)
    Clip.insert1({"k": 1, "m": value})
    path = root / "lab" / hashing.object_path(hash_of_column(Clip, "m"))
    data = bytearray(path.read_bytes())
    data[-10:] = bytes(10)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObjectError, match=str(root / "lab")):
        Clip.fetch1("m")
    djfs.config["cache-location"] = str(tmp_path / "cache")
    with pytest.raises(CorruptObjectError, match=str(root / "lab")):
        Clip.fetch1("m")
    cache = open_cache(tmp_path / "cache", djfs.config["cache-size"])
    cache.flush()
    assert cache.stats()["objects"] == 0     # never cached
    djfs.config["cache-location"] = None
    djfs.config["verify-reads"] = "size"
    assert Clip.fetch1("m")[-1] != value[-1]   # the opt-out: sizes only


def hash_of_column(table, column):
    return table.connection.query(f"SELECT `{column}` FROM {table.full_table_name}").fetchone()[0]


def test_malformed_hash_in_database_refused(movies, schema):
    movies.insert1({"movie_id": 1, "aligned": np.ones(3)})
    for bad in ("../../etc/passwd", "a" * 44, "abc$" + "a" * 39):
        with pytest.raises(djfs.errors.InvalidHashError):
            schema.external.get(bad)


def test_parallel_many_small(schema, s3_server, db_config):
    """Many small values of one fetch are read from S3 in parallel: with the network held, several requests
    are in flight at once (counted as open connections through a relay), which a serial fetch never has."""
    import psutil
    from djfs.testing.relay import Relay
    with djfs.config.override(**{"external-location": s3_server.location("lab"),
                                 "external-account": s3_server.credentials[0],
                                 "external-token": s3_server.credentials[1]}):
        schema.set_external_storage(s3_server.create_bucket(f"djfs-{uuid.uuid4().hex[:16]}"))

        @schema
        class Many(djfs.Manual):
            definition = "k : int\n---\nm : external"
        values = [np.random.default_rng(i).random(1000) for i in range(60)]
        Many.insert([{"k": i, "m": v} for i, v in enumerate(values)])
        with Relay(int(s3_server.endpoint.rsplit(":", 1)[1])) as relay:
            djfs.config["external-location"] = f"s3+http://127.0.0.1:{relay.port}/lab"
            relay.hold()
            fetched: list = []
            fetching = threading.Thread(target=lambda: fetched.append(Many.fetch("m", order_by="k")))
            fetching.start()

            def in_flight() -> int:
                return sum(1 for c in psutil.Process().net_connections("tcp")
                           if c.raddr and c.raddr.port == relay.port and c.status == psutil.CONN_ESTABLISHED)
            deadline = time.monotonic() + 30
            most = 0
            while most < 4 and time.monotonic() < deadline:
                most = max(most, in_flight())
                time.sleep(0.01)
            relay.release()
            fetching.join(60)
        assert most >= 4, f"at most {most} requests in flight: the fetch is serial"
        for got, want in zip(fetched[0], values):
            np.testing.assert_array_equal(got, want)
