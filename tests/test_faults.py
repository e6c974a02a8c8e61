"""Faults: backends that go away mid-transfer, a full cache disk, gc racing with inserts — nothing is lost.

Every test runs the real components (the private MariaDB, moto's S3 server over HTTP, real files and a real
tmpfs); a test that disturbs a server (restart) uses a dedicated instance of its own, never the session's.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

import djfs
from djfs.testing.relay import Relay
from djfs import hashing
from djfs.cache import open_cache
from djfs.errors import CorruptObjectError, DjfsError, DuplicateError, StoreError
from djfs.stores import clear_store_cache
from djfs.testing.mariadb import MariaDBServer
from djfs.testing.s3 import MotoServer

from cachefiles import cached_data

GC_RACE_SECONDS = float(os.environ.get("DJFS_GC_RACE_SECONDS", "20"))


# -- helpers ------------------------------------------------------------------------------------------------

def declare_items(schema):
    @schema
    class Item(djfs.Manual):
        definition = """
        k : int
        ---
        v = null : external
        """
    return Item


def value_of(k: int) -> np.ndarray:
    """The value of key k: deterministic, so a deleted key re-inserted gets the same hash again."""
    return np.random.default_rng(k).integers(0, 1 << 30, size=200 + k % 97)


def check_all(table) -> dict[int, bool]:
    """Fetch every row and compare it with its value; returns {key: ok}."""
    keys, values = table.fetch("k", "v", order_by="k")
    return {int(k): bool(np.array_equal(v, value_of(int(k)))) for k, v in zip(keys, values)}


def stored_objects(schema) -> set[str]:
    return {info.key.rsplit("/", 1)[-1] for info in schema.external.store().list()}


def entries(schema) -> dict[str, str]:
    return dict(schema.connection.query(f"SELECT hash, status FROM {schema.external.full_table_name}").fetchall())


def verify_cache(location, schema) -> list[str]:
    """Check every cached object against its hash; returns the hashes cached. No temporary file may remain
    once the background writes are done."""
    open_cache(location, djfs.config["cache-size"]).flush()
    tmp = os.listdir(os.path.join(location, "tmp"))
    assert tmp == [], f"temporary files left in the cache: {tmp}"
    origins = dict(schema.connection.query(f"SELECT hash, origin FROM {schema.external.full_table_name}").fetchall())
    cached = []
    for directory, _, names in os.walk(os.path.join(location, "objects")):
        for name in names:
            data = cached_data(os.path.join(directory, name))
            assert name in origins, f"cached file {name} has no entry"
            assert hashing.object_hash(data, bytes(origins[name])) == name, f"cached file {name} is corrupt"
            cached.append(name)
    return cached


def SlowLink(upstream_port: int, rate: float) -> Relay:
    """A TCP hop between djfs and the S3 server delivering responses at ``rate`` bytes/s: a slow network, so
    that a server restart reliably lands in the middle of a download."""
    return Relay(upstream_port, rate=rate)


# -- the S3 server restarted in the middle of a large fetch -----------------------------------------------------

BIG = 64 << 20


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True], ids=["direct", "cached"])
@pytest.mark.parametrize("after_restart", ["same", "tampered"])
def test_s3_restart_during_large_fetch_never_gives_wrong_bytes(schema, db_config, tmp_path, cached, after_restart):
    """A 64 MiB value is being fetched (straight into memory, or through the cache) when the S3 server is
    stopped and started again with the object back in place — the same bytes, or other bytes of the same size
    (moto forgets everything on a restart, so the test puts the object back while new connections are held,
    as a server with persistent storage would come back).  The fetch returns the right value or raises; it
    never returns other bytes, and the cache keeps nothing partial or wrong."""
    server = MotoServer().start()
    link = SlowLink(server.port, rate=1e12)  # slow only while the fetch under test runs
    try:
        with djfs.config.override(**{
                "external-location": f"s3+http://127.0.0.1:{link.port}/big",
                "external-account": server.credentials[0], "external-token": server.credentials[1],
                "store-timeout": 5, "store-retries": 3,
                "cache-location": str(tmp_path / "cache") if cached else None, "cache-size": "1GiB"}):
            clear_store_cache()
            bucket = server.create_bucket("djfs-restart")
            schema.set_external_storage(bucket)
            table = declare_items(schema)
            value = np.random.default_rng(9).bytes(BIG)
            table.insert1({"k": 1, "v": value})
            hash_ = table.connection.query(f"SELECT v FROM {table.full_table_name}").fetchone()[0]
            key = hashing.object_path(hash_)
            store = schema.external.store()
            direct = server.store(bucket, "big", multipart_threshold=store.multipart_threshold,
                                  part_size=store.part_size)
            stored = direct.get(key)
            assert len(stored) > BIG
            replacement = stored
            if after_restart == "tampered":
                replacement = bytearray(stored)
                replacement[len(stored) // 2] ^= 0x01   # one bit in the middle of the data
                replacement = bytes(replacement)

            outcome: dict = {}

            def fetch() -> None:
                try:
                    outcome["value"] = table.fetch1("v")
                except Exception as error:  # noqa: BLE001 - examined below
                    outcome["error"] = error

            with link._lock:
                link.delivered = 0
                link.rate = 48 << 20
            thread = threading.Thread(target=fetch, name="big-fetch")
            thread.start()
            deadline = time.monotonic() + 30
            while link.delivered < len(stored) // 4 and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.005)
            at_stop = link.delivered
            link.hold()
            server.restart()
            assert 0 < at_stop < len(stored), f"the restart did not land mid-fetch ({at_stop} bytes delivered)"
            server.create_bucket(bucket)
            direct.put(key, replacement)
            link.release()
            thread.join(120)
            link.rate = 1e12
            assert not thread.is_alive(), "the fetch hangs"
            if "value" in outcome:
                assert outcome["value"] == value, "the fetch returned wrong bytes"
                assert after_restart == "same", "other bytes under the object's key were accepted"
            else:
                assert isinstance(outcome["error"], (StoreError, DjfsError)), repr(outcome["error"])
                if after_restart == "tampered":
                    assert isinstance(outcome["error"], (CorruptObjectError, StoreError))
            if cached:
                cached_hashes = verify_cache(str(tmp_path / "cache"), schema)
                assert cached_hashes in ([], [hash_])
                if after_restart == "tampered":
                    assert cached_hashes == []
            # the service is back: with the right object in place, the value is fetched again
            direct.put(key, stored)
            assert table.fetch1("v") == value
            if cached:
                assert verify_cache(str(tmp_path / "cache"), schema) == [hash_]
    finally:
        link.release()
        link.close()
        server.__exit__(None, None, None)  # stops it and closes its log
        clear_store_cache()


# -- gc racing with inserts ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_gc_racing_with_inserts_never_removes_a_live_object(schema, backend):
    """One thread inserts, deletes and re-inserts rows with external values for a sustained period while
    another runs gc with a grace period of zero in a loop; every row fetches its right value, during the run
    and after.

    An insert uploads its new objects *before* committing their entries; gc must not take such an object in
    flight for an orphan. Before inserts held an upload lock per object, grace=0 removed one within seconds
    (on S3) and this test ran with a grace of 3 s; now it runs with none.
    Entries marked ``deleted`` are collected whatever the grace, so deletes and revivals race with gc at
    full speed; ``test_gc_grace_zero_keeps_an_entry_revived_while_it_runs`` covers entries in one race.
    """
    backend(schema)
    table = declare_items(schema)
    grace = 0
    rng = random.Random(5)
    live: set[int] = set()
    deleted: set[int] = set()
    next_key = 0
    stop = threading.Event()
    gc_runs, gc_errors, gc_failed = [], [], []

    def collector() -> None:
        while not stop.is_set():
            try:
                report = schema.external.gc(grace=grace)
                gc_runs.append((len(report.entries), len(report.orphans)))
                gc_failed.extend(report.failed)
            except Exception as error:  # noqa: BLE001 - every error is a finding
                gc_errors.append(repr(error))

    thread = threading.Thread(target=collector, name="gc-loop", daemon=True)
    thread.start()
    checks = 0
    deadline = time.monotonic() + GC_RACE_SECONDS
    next_check = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline and thread.is_alive():
            action = rng.random()
            if action < 0.45 or not live:
                keys = list(range(next_key, next_key + rng.randint(1, 3)))
                next_key += len(keys)
                table.insert([{"k": k, "v": value_of(k)} for k in keys])
                live.update(keys)
            elif action < 0.75:
                victims = rng.sample(sorted(live), min(len(live), rng.randint(1, 2)))
                (table & [{"k": k} for k in victims]).delete()
                live.difference_update(victims)
                deleted.update(victims)
            elif deleted:
                back = rng.sample(sorted(deleted), min(len(deleted), rng.randint(1, 2)))
                table.insert([{"k": k, "v": value_of(k)} for k in back])
                live.update(back)
                deleted.difference_update(back)
            if time.monotonic() >= next_check:
                found = check_all(table)
                assert set(found) == live and all(found.values()), \
                    f"bad rows during the run: {sorted(k for k, ok in found.items() if not ok)}"
                checks += 1
                next_check = time.monotonic() + 2.0
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert not gc_errors, gc_errors[:3]
    assert not gc_failed, gc_failed[:3]
    found = check_all(table)
    assert set(found) == live and all(found.values())
    assert checks >= 3 and len(gc_runs) >= 10, (checks, len(gc_runs))
    removed = sum(entries for entries, _ in gc_runs)
    assert removed > 0, "gc never removed anything: the race was not exercised"
    # quiet now: one more gc leaves exactly the live rows' objects and entries, nothing dangling or leaked
    schema.external.gc(grace=0)
    hashes = set(table.connection.query(f"SELECT v FROM {table.full_table_name}").fetchall())
    hashes = {h for (h,) in hashes}
    assert set(entries(schema)) == hashes
    assert stored_objects(schema) == hashes


def test_gc_grace_zero_keeps_the_objects_of_an_insert_in_flight(schema, backend, monkeypatch):
    """An insert stopped between its upload and its commit: gc(grace=0), from another session, sees its object
    without an entry, yet keeps it (the inserter holds its upload lock); the insert then commits a good row.
    A failed insert releases its locks, and then its object is an orphan that gc removes."""
    backend(schema)
    table = declare_items(schema)
    from djfs.objects.external import ExternalTable
    uploaded, proceed = threading.Event(), threading.Event()
    commit = ExternalTable.commit

    def paused_commit(self, objects):
        uploaded.set()
        assert proceed.wait(60)
        return commit(self, objects)
    monkeypatch.setattr(ExternalTable, "commit", paused_commit)
    failures: list[BaseException] = []

    def insert(row: dict) -> None:
        try:
            table.insert1(row)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    inserter = threading.Thread(target=insert, args=({"k": 1, "v": value_of(1)},))
    inserter.start()
    try:
        assert uploaded.wait(60), failures
        (in_flight,) = stored_objects(schema)  # in the store, no entry yet
        assert entries(schema) == {}
        time.sleep(1.1)  # S3 gives modification times in whole seconds: make sure it looks older than grace 0
        report = schema.external.gc(grace=0)
        assert report.orphans == [] and not report.failed, report
        assert stored_objects(schema) == {in_flight}
    finally:
        proceed.set()
        inserter.join(60)
    assert not failures, failures
    assert check_all(table) == {1: True}

    proceed.clear()
    uploaded.clear()
    inserter = threading.Thread(target=insert, args=({"k": 1, "v": value_of(2)},))  # a duplicate key: fails
    inserter.start()
    assert uploaded.wait(60)
    proceed.set()
    inserter.join(60)
    assert len(failures) == 1 and isinstance(failures[0], DuplicateError), failures
    (orphan,) = stored_objects(schema) - {in_flight}
    time.sleep(1.1)
    assert schema.external.gc(grace=0).orphans == [orphan]
    assert stored_objects(schema) == {in_flight} and check_all(table) == {1: True}


def test_gc_grace_zero_keeps_an_entry_revived_while_it_runs(schema, backend):
    """gc(grace=0) reads its candidates while an insert that revives a deleted entry is still open; the insert
    commits while gc waits for the entry's lock. gc must see the new row and keep the object (and not fail)."""
    backend(schema)
    table = declare_items(schema)
    table.insert([{"k": k, "v": value_of(k)} for k in range(6)])
    hashes = dict(table.connection.query(f"SELECT v, k FROM {table.full_table_name}").fetchall())
    table.delete()
    # revive the entry gc reaches last, so that it has read (and locked) other entries before
    revived = hashes[max(hashes)]
    result: dict = {}

    def collect() -> None:
        try:
            result["report"] = schema.external.gc(grace=0)
        except Exception as error:  # noqa: BLE001
            result["error"] = error

    connection = table.connection
    with connection.transaction():
        table.insert1({"k": revived, "v": value_of(revived)})
        time.sleep(1.1)  # the revived entry's timestamp is now older than gc's NOW(): only its row protects it
        thread = threading.Thread(target=collect)
        thread.start()
        time.sleep(1.0)  # gc has read its candidates and waits for the revived entry's lock
    thread.join(60)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    report = result["report"]
    assert not report.failed and max(hashes) not in report.entries
    assert sorted(report.entries) == sorted(h for h in hashes if h != max(hashes))
    np.testing.assert_array_equal((table & {"k": revived}).fetch1("v"), value_of(revived))
    assert stored_objects(schema) == {max(hashes)}
    assert entries(schema) == {max(hashes): "stored"}


# -- MariaDB restarted around inserts of external values ------------------------------------------------------

def test_mariadb_restart_around_external_inserts(tmp_path):
    """A thread keeps inserting rows with external values while a dedicated MariaDB server restarts: inserts
    fail cleanly while it is down, the library reconnects by itself on its next call, and afterwards every row
    fetches its right value, every insert that returned is there, and no entry or object dangles."""
    server = MariaDBServer(tmp_path / "db").start()
    root = tmp_path / "store"
    root.mkdir()
    try:
        with djfs.config.override(**{"external-location": f"file://{root}"}):
            clear_store_cache()
            connection = djfs.Connection(server.host, server.port, server.user, server.password)
            schema = djfs.Schema("faults_restart", connection=connection)
            schema.set_external_storage("lab")
            table = declare_items(schema)
            table.insert([{"k": k, "v": value_of(k)} for k in range(10)])
            outcomes: dict[int, Exception | None] = {}
            stop = threading.Event()

            def writer() -> None:
                k = 1000
                while not stop.is_set():
                    try:
                        table.insert1({"k": k, "v": value_of(k)})
                        outcomes[k] = None
                    except DjfsError as error:
                        outcomes[k] = error
                    k += 1
                    time.sleep(0.01)

            thread = threading.Thread(target=writer, name="writer")
            thread.start()
            try:
                time.sleep(0.5)
                server.restart()
                deadline = time.monotonic() + 30
                restarted = max(outcomes)
                while time.monotonic() < deadline and not any(
                        error is None for k, error in outcomes.items() if k > restarted + 5):
                    time.sleep(0.1)
            finally:
                stop.set()
                thread.join(60)
            assert not thread.is_alive()
            failed = sorted(k for k, error in outcomes.items() if error is not None)
            succeeded = sorted(k for k, error in outcomes.items() if error is None)
            assert failed, "no insert saw the server go away: the restart did not overlap the writes"
            assert succeeded and succeeded[-1] > failed[-1], "the writer did not recover after the restart"
            for k in failed:
                assert isinstance(outcomes[k], djfs.errors.ConnectionLostError), repr(outcomes[k])
            # this thread's session was dropped too: its next call reconnects
            table.insert1({"k": 10, "v": value_of(10)})
            found = check_all(table)
            assert all(found.values()), sorted(k for k, ok in found.items() if not ok)
            assert set(range(11)) | set(succeeded) <= set(found)
            assert set(found) <= set(range(11)) | set(outcomes)
            # nothing dangles: after a quiet gc, entries and objects are exactly those of the rows
            schema.external.gc(grace=0)
            hashes = {h for (h,) in connection.query(f"SELECT v FROM {table.full_table_name}").fetchall()}
            assert set(entries(schema)) == hashes
            assert stored_objects(schema) == hashes
            connection.close()
    finally:
        server.stop()
        clear_store_cache()


# -- the cache's disk full ----------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs: a cache disk that fills up."""
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(path)], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        result = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if result.returncode:
            subprocess.run(["umount", "-l", str(path)], check=True)


def test_full_cache_disk_falls_back_to_the_store(schema, backend, small_disk, caplog):
    """The cache (bounded at 1 GiB) lives on an 8 MiB disk: objects that don't fit are served from the store,
    the ones that fit are cached, and every file the cache keeps is complete and verified."""
    backend(schema)
    table = declare_items(schema)
    rng = np.random.default_rng(3)
    sizes = {1: 1 << 20, 2: 1 << 20, 3: 3 << 20, 4: 6 << 20, 5: 12 << 20, 6: 5 << 20}
    values = {k: rng.bytes(size) for k, size in sizes.items()}
    table.insert([{"k": k, "v": v} for k, v in values.items()])
    hashes = dict(table.connection.query(f"SELECT k, v FROM {table.full_table_name}").fetchall())
    djfs.config["cache-location"] = str(small_disk)
    djfs.config["cache-size"] = "1GiB"
    with caplog.at_level(logging.WARNING, logger="djfs"):
        for k in sorted(values):                       # one at a time: small ones first, then the disk fills
            assert (table & {"k": k}).fetch1("v") == values[k]
        keys, fetched = table.fetch("k", "v")          # all at once, fills competing for the space left
        assert {int(k): v for k, v in zip(keys, fetched)} == values
        keys, fetched = table.fetch("k", "v")          # and again, partly from the cache
        assert {int(k): v for k, v in zip(keys, fetched)} == values
    cached = verify_cache(str(small_disk), schema)
    assert hashes[1] in cached and hashes[2] in cached and hashes[3] in cached
    assert hashes[5] not in cached                     # 12 MiB never fits on 8 MiB
    assert shutil.disk_usage(small_disk).used <= 8 << 20
    assert any("not caching" in record.getMessage() and "no space" in record.getMessage()
               for record in caplog.records), [r.getMessage() for r in caplog.records]
    assert not [name for name in os.listdir(small_disk / "tmp")]
