"""The mount under faults, bad input and hostile users: nothing is lost, nothing wrong is served, no one gets in.

Real components only: MariaDB (the session's server, or a dedicated one for a test that takes it down), moto's
S3 server over HTTP (a dedicated one for a test that stops or freezes it), real FUSE mounts whose daemon runs as
``python -m djfs.cli mount -f``.  What ``tests/test_mount.py`` already covers (a stopped S3 server giving EIO and
recovering, the session's database stopped and started, a first list of hostile names, read-only refusals) is
not repeated here; this module adds:

* faults: ``kill -9`` of the daemon in the middle of cold reads (a whole-object cache fill and a block stream)
  over a throttled link, then ``djfs umount`` of the dead mount and a new daemon on the same mount point and
  cache; a dedicated MariaDB frozen (SIGSTOP) and restarted under a mounted daemon; a dedicated S3 server
  frozen (SIGSTOP) and stopped in the middle of block reads, with the time to EIO held against the configured
  ``store_timeout``/``store_retries``;
* bad input: a long list of hostile path names (SQL metacharacters, quotes, escapes of '/', NUL and overlong
  UTF-8, case and trailing-space aliases that MariaDB's collation would match, ``..``, 4,000-character names),
  and a property-based round trip of arbitrary primary-key values through the mount's own escaping;
* security: permission bits, owner and ``allow_other`` as another uid sees them; credentials absent from the
  debug log, the mount's files and xattrs and the process list; a SELECT-on-one-schema user's view.

Figures the tests measure are recorded with ``record_property`` for ``scripts/robustness_report.py``.
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import djfs
from djfs import blob, hashing
from djfs.cache.blockfiles import parse_block_file_name
from djfs.fs import paths
from djfs.fs.mount import is_mounted, mount_entry
from djfs.stores import clear_store_cache
from djfs.testing.mariadb import MariaDBServer
from djfs.testing.s3 import MotoServer
from cachefiles import cached_data
from fixtures_fuse import Mount, Mounts, errno_of, listing_or_errno, module_schema, s3_config, wait_for
from test_faults import SlowLink

MiB = 1 << 20
FAST = ["listing_timeout=0.5", "entry_timeout=0.5", "attr_timeout=0.5", "negative_timeout=0"]
#: what a daemon must never log while it is fed bad input
LOG_ALARMS = ("MySQL error", "SQL syntax", "database:", "Traceback", "ERROR", "failed")


# -- helpers ------------------------------------------------------------------------------------------------


def timed_errno(function, *args) -> tuple[int | None, float]:
    start = time.monotonic()
    code = errno_of(function, *args)
    return code, time.monotonic() - start


def within(function, seconds: float) -> tuple[object, float | None]:
    """Run ``function`` on a thread: (its result or exception, seconds taken), or (None, None) if it did not
    return within ``seconds`` (the thread is left running: a blocked system call can't be interrupted)."""
    outcome: list = []

    def run() -> None:
        start = time.monotonic()
        try:
            result: object = function()
        except Exception as error:  # noqa: BLE001 - returned to the caller
            result = error
        outcome.append((result, time.monotonic() - start))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    return outcome[0] if outcome else (None, None)


def expected_file(value) -> bytes:
    """The bytes the mount must show for a value, from the value ``fetch`` returns (the view rules)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.ndim >= 1:
        return blob.npy_header(value.dtype, value.shape, fortran_order=True) + value.tobytes(order="F")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return blob.pack(value, compress=False)


def read_whole(path: Path, chunk: int = 256 << 10) -> bytes:
    with open(path, "rb", buffering=0) as file:
        parts = []
        while part := file.read(chunk):
            parts.append(part)
    return b"".join(parts)


def config_of(mount: Mount) -> dict:
    return json.loads(Path(mount.env["DJ_CONFIG"]).read_text())


def origins_of(schema) -> dict[str, bytes]:
    rows = schema.connection.query(f"SELECT hash, origin FROM {schema.external.full_table_name}").fetchall()
    return {hash_: bytes(origin) for hash_, origin in rows}


def verify_cache(location: Path, origins: dict[str, bytes], stored: dict[str, bytes]) -> tuple[int, int]:
    """Every whole object under ``objects/`` verifies against its hash, and every block under ``blocks/`` is
    exactly that range of the stored object.  Returns (objects, blocks) checked."""
    objects = blocks = 0
    for directory, _, names in os.walk(location / "objects"):
        for name in names:
            assert name in origins, f"cached object {name} is not an object of this schema"
            data = cached_data(Path(directory) / name)
            assert hashing.object_hash(data, origins[name]) == name, f"cached object {name} is partial or wrong"
            objects += 1
    for directory, _, names in os.walk(location / "blocks"):
        for name in names:
            hash_ = Path(directory).name
            assert hash_ in stored, f"cached block {hash_}/{name} of an unknown object"
            parsed = parse_block_file_name(name)
            assert parsed is not None, f"{hash_}/{name} is not a block file"
            block_size, index, count = parsed
            data = cached_data(Path(directory) / name)
            expected = stored[hash_][index * block_size:(index + count) * block_size]
            assert data == expected, f"cached block {hash_}/{name} is partial or wrong ({len(data)} bytes)"
            blocks += 1
    return objects, blocks


def declare_values(schema):
    @schema
    class Value(djfs.Manual):
        definition = """
        k : int
        ---
        note = "" : varchar(64)
        v = null : external
        """
    return Value


# == faults ==================================================================================================


def test_kill_9_during_cold_reads_loses_nothing(schema, db_config, s3_server, mounts, record_property):
    """The daemon is killed (SIGKILL) while two cold reads run over a throttled link to S3: a 12 MiB value being
    filled whole into the cache and a 40 MiB array read by 1 MiB blocks with read-ahead.  The readers get an
    error, never wrong bytes; the cache holds nothing partial (whole objects verify, blocks equal the stored
    ranges); ``djfs umount`` clears the dead mount; a new daemon on the same mount point and cache removes the
    crash's temporary files (once they are old enough) and serves the right bytes."""
    link = SlowLink(s3_server.port, rate=1e12)
    try:
        account, token = s3_server.credentials
        with djfs.config.override(**{"external-location": s3_server.location("kill"), "external-account": account,
                                     "external-token": token}):
            clear_store_cache()
            schema.set_external_storage(s3_server.create_bucket(f"djfs-kill-{uuid.uuid4().hex[:12]}"))
            table = declare_values(schema)
            rng = np.random.default_rng(11)
            values = {1: rng.bytes(12 * MiB), 2: rng.random((10, 1024, 1024), dtype=np.float32)}
            table.insert([{"k": k, "v": v} for k, v in values.items()])
            store = schema.external.store()
            hashes = dict(table.connection.query(f"SELECT k, v FROM {table.full_table_name}").fetchall())
            stored = {hashes[k]: store.get(hashing.object_path(hashes[k])) for k in values}
            expected = {k: expected_file((table & {"k": k}).fetch1("v")) for k in values}
            origins = origins_of(schema)
        clear_store_cache()
        cache = mounts.base / "kill-cache"
        config = {"external-location": f"s3+http://127.0.0.1:{link.port}/kill", "external-account": account,
                  "external-token": token, "store-timeout": 10, "store-retries": 1, "cache-location": str(cache),
                  "cache-size": "1GiB"}
        options = [f"schemas={schema.database}", "whole_max=16MiB", "block_size=1MiB", "readahead=4"] + FAST
        mount = mounts.mount(config, options)
        directory = mount.path(schema.database, "Value")
        files = {1: directory / "k=1" / "v.bin", 2: directory / "k=2" / "v.npy"}
        assert {k: path.stat().st_size for k, path in files.items()} == {k: len(e) for k, e in expected.items()}

        with link._lock:
            link.delivered = 0
            link.rate = 8 * MiB            # 52 MiB to read: the kill lands well inside both reads
        outcomes: dict[int, object] = {}

        def read(k: int) -> None:
            try:
                outcomes[k] = read_whole(files[k])
            except OSError as error:
                outcomes[k] = error

        readers = [threading.Thread(target=read, args=(k,), name=f"reader-{k}") for k in files]
        for reader in readers:
            reader.start()
        assert wait_for(lambda: link.delivered >= 6 * MiB, timeout=30), "the cold reads did not start"
        delivered = link.delivered
        os.kill(mount.process.pid, signal.SIGKILL)
        killed_at = time.time()
        mount.process.wait(timeout=10)
        for reader in readers:
            reader.join(15)
        assert not any(reader.is_alive() for reader in readers), "a reader hangs on the dead mount"
        assert delivered < 52 * MiB
        for k, outcome in outcomes.items():
            assert isinstance(outcome, OSError), f"file {k} was read whole before the kill: not a cold read"
            assert outcome.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO), outcome

        # the dead mount: still in the mount table, unusable; the cache holds nothing partial or wrong
        assert is_mounted(str(mount.mountpoint))
        assert errno_of(os.listdir, mount.mountpoint) == errno.ENOTCONN
        objects_before, blocks_before = verify_cache(cache, origins, stored)
        leftovers = sorted(os.listdir(cache / "tmp"))
        assert leftovers, "no cache fill was in progress at the kill"
        assert all(name.split(".")[0] in stored for name in leftovers), leftovers
        for name in leftovers:  # the crash's temporary files, aged past the cache's one-hour limit
            os.utime(cache / "tmp" / name, (killed_at - 7200, killed_at - 7200))

        result = mount.run_cli("umount", str(mount.mountpoint))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(str(mount.mountpoint)) and mount_entry(str(mount.mountpoint)) is None
        listing = subprocess.run(["ls", "-la", str(mount.mountpoint)], capture_output=True, text=True)
        assert listing.returncode == 0, listing.stderr
        assert os.listdir(mount.mountpoint) == []

        link.rate = 1e12
        mount.start()                      # a new daemon, same mount point, same cache, same log
        assert mount.alive
        assert not [name for name in leftovers if (cache / "tmp" / name).exists()], "stale temporaries kept"
        for k, path in files.items():
            assert read_whole(path) == expected[k], f"file {k} differs after the restart"
        objects_after, blocks_after = verify_cache(cache, origins, stored)
        assert (cache / "objects" / hashes[1][:2] / hashes[1]).exists()  # filled whole this time
        assert objects_after >= 1
        record_property("kill9_bytes_in_flight", delivered)
        record_property("kill9_tmp_leftovers", len(leftovers))
        record_property("cache_files_verified", objects_before + blocks_before + objects_after + blocks_after)
        record_property("bytes_verified", sum(len(e) for e in expected.values()))
    finally:
        link.release()
        link.close()
        clear_store_cache()


class DatabaseRig:
    """A dedicated MariaDB with a small schema of external values in a file store, mounted."""

    def __init__(self, mounts: Mounts, tmp_path: Path, db_timeout: float) -> None:
        self.server = MariaDBServer(tmp_path / "db").start()
        self.root = tmp_path / "store"
        self.root.mkdir()
        self.db_timeout = db_timeout
        with djfs.config.override(**{"external-location": f"file://{self.root}"}):
            clear_store_cache()
            self.connection = djfs.Connection(self.server.host, self.server.port, self.server.user,
                                              self.server.password)
            schema = djfs.Schema("mount_db_outage", connection=self.connection)
            schema.set_external_storage("lab")
            self.table = declare_values(schema)
            values = {k: np.arange(1000.0 * k) for k in range(1, 6)}
            self.table.insert([{"k": k, "note": f"n{k}", "v": v} for k, v in values.items()])
            self.expected = {k: expected_file((self.table & {"k": k}).fetch1("v")) for k in values}
        self.mount = mounts.mount({"external-location": f"file://{self.root}"},
                                  ["schemas=mount_db_outage", f"db_timeout={db_timeout}", "sql_threads=4"] + FAST,
                                  DJ_HOST=self.server.host, DJ_PORT=str(self.server.port), DJ_USER=self.server.user,
                                  DJ_PASS=self.server.password)
        self.table_dir = self.mount.path("mount_db_outage", "Value")
        assert sorted(os.listdir(self.table_dir)) == [f"k={k}" for k in values]
        self.cached = self.table_dir / "k=1" / "v.npy"
        assert self.cached.read_bytes() == self.expected[1]
        self.row_json = (self.table_dir / "k=1" / "row.json").read_bytes()
        self.known = self.table_dir / "k=2" / "v.npy"
        assert self.known.stat().st_size == len(self.expected[2])  # its metadata known, its bytes never read
        self.kept_listings = self.mount.stats().get("fuse_api") == "low"  # the kernel keeps what was listed

    @property
    def deadline(self) -> float:
        """What one database request may cost the mount: ``Database.call`` waits db_timeout + 5 s."""
        return self.db_timeout + 5.0

    def outage_checks(self, label: str) -> dict[str, float]:
        """While the database is unavailable: known files are served and listings fail with EIO, each within
        the deadline of one database request, all five within two; returns the timings.  An operation over its
        time fails the test at once (its thread is left to finish when the database comes back).  With the
        low-level API the kernel keeps the listings it was given (until told a table changed): the table's is
        served as it was, and a row directory never listed fails instead."""
        time.sleep(0.6)  # every kernel entry and listing cache entry has expired
        listed = sorted(f"k={k}" for k in self.expected)
        if self.kept_listings:  # kept until the watcher lets the table go (2 s after its last use here)
            listings = [("list table (kept)", lambda: listing_or_errno(self.table_dir) in (listed, errno.EIO)),
                        ("list an unlisted row", lambda: errno_of(os.listdir, self.table_dir / "k=4") == errno.EIO)]
        else:
            listings = [("list table", lambda: errno_of(os.listdir, self.table_dir) == errno.EIO)]
        operations = [
            ("read cached file", lambda: self.cached.read_bytes() == self.expected[1]),
            ("read row.json", lambda: (self.table_dir / "k=1" / "row.json").read_bytes() == self.row_json),
            ("read known, uncached file", lambda: self.known.read_bytes() == self.expected[2]),  # the store is up
            *listings,
            ("list root", lambda: errno_of(os.listdir, self.mount.mountpoint) == errno.EIO)]
        timings: dict[str, float] = {}
        for name, operation in operations:
            budget = min(self.deadline, 2 * self.deadline - sum(timings.values()))
            outcome, seconds = within(operation, budget)
            assert seconds is not None, (f"{label}: {name} still waits after {budget:.1f} s (deadline of one "
                                         f"request {self.deadline:.0f} s; before it: {timings})")
            assert outcome is True, f"{label}: {name} gave {outcome!r}"
            timings[name] = seconds
        assert self.mount.alive
        return timings

    def recovered(self) -> bool:
        # the root: a listing that failed in the outage (the table's may be kept by the kernel)
        return wait_for(lambda: errno_of(os.listdir, self.mount.mountpoint) is None and
                        errno_of(os.listdir, self.table_dir) is None, timeout=self.deadline + 5)

    def close(self) -> None:
        self.connection.close()
        self.server.stop()
        clear_store_cache()


def test_database_restarted_under_the_mount(mounts, tmp_path, record_property):
    """A dedicated MariaDB is stopped, then started again, under a mounted daemon.  While it is down, known
    files (cached, and known but never read) stay readable and listings fail with EIO, all within the deadline
    of one request.  After the restart the same daemon lists again, on every SQL thread at once (each had its
    session dropped), and shows a row inserted after the restart, with the right bytes."""
    rig = DatabaseRig(mounts, tmp_path, db_timeout=1.0)
    try:
        pid = rig.mount.process.pid
        rig.server.stop()
        try:
            timings = rig.outage_checks("stopped")
        finally:
            rig.server.start()
        assert rig.recovered()
        with djfs.config.override(**{"external-location": f"file://{rig.root}"}):
            clear_store_cache()
            rig.table.insert1({"k": 6, "note": "after", "v": np.arange(77.0)})  # the library reconnects itself
        assert wait_for(lambda: "k=6" in os.listdir(rig.table_dir), timeout=3)
        assert (rig.table_dir / "k=6" / "v.npy").read_bytes() == expected_file(np.arange(77.0))
        results: list[str] = []
        lock = threading.Lock()

        def note(k: int) -> None:
            value = json.loads((rig.table_dir / f"k={k}" / "row.json").read_bytes())["note"]
            with lock:
                results.append(value)
        threads = [threading.Thread(target=note, args=(k,)) for k in range(1, 7) for _ in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results) == sorted([f"n{k}" for k in range(1, 6)] * 2 + ["after"] * 2)
        assert rig.mount.process.pid == pid and rig.mount.alive
        record_property("db_outage_eio_seconds", round(max(timings.values()), 2))
    finally:
        rig.close()


def test_database_frozen_gives_eio_in_time_and_keeps_serving_known_files(mounts, tmp_path, record_property):
    """A dedicated MariaDB is frozen (SIGSTOP: connections hang, like a network partition) under a mounted
    daemon.  Known files must stay readable and listings must fail with EIO, each within the deadline of one
    database request (db_timeout + 5 s), not once per lookup the kernel makes; after SIGCONT the daemon lists
    again."""
    rig = DatabaseRig(mounts, tmp_path, db_timeout=1.0)
    try:
        os.kill(rig.server.pid(), signal.SIGSTOP)
        try:
            timings = rig.outage_checks("frozen")
        finally:
            os.kill(rig.server.pid(), signal.SIGCONT)
        assert rig.recovered()
        record_property("db_frozen_eio_seconds", round(max(timings.values()), 2))
    finally:
        rig.close()


def test_s3_frozen_and_stopped_during_block_reads(schema, db_config, mounts, record_property):
    """A dedicated S3 server is frozen (SIGSTOP: connections hang) and later stopped in the middle of block reads
    of large arrays.  Reads of uncached data fail with EIO within the bound the configured store_timeout and
    store_retries give, never hang and never return wrong bytes; cached files, listings and stat keep working;
    after SIGCONT, and after a restart with the objects put back through the store, the same daemon serves the
    right bytes and the cache holds only correct objects and blocks."""
    server = MotoServer().start()
    try:
        account, token = server.credentials
        with djfs.config.override(**{"external-location": server.location("down"), "external-account": account,
                                     "external-token": token}):
            clear_store_cache()
            bucket = server.create_bucket(f"djfs-down-{uuid.uuid4().hex[:12]}")
            schema.set_external_storage(bucket)
            table = declare_values(schema)
            rng = np.random.default_rng(5)
            values = {1: rng.bytes(100_000), 2: rng.bytes(200_000), 3: rng.random((6, MiB), dtype=np.float32),
                      4: rng.random((6, MiB), dtype=np.float32)}
            table.insert([{"k": k, "v": v} for k, v in values.items()])
            expected = {k: expected_file((table & {"k": k}).fetch1("v")) for k in values}
            store = schema.external.store()
            hashes = dict(table.connection.query(f"SELECT k, v FROM {table.full_table_name}").fetchall())
            stored = {hashes[k]: store.get(hashing.object_path(hashes[k])) for k in values}
            origins = origins_of(schema)
        store_timeout, store_retries = 1.0, 1
        # botocore: (retries + 1) attempts of connect + read timeouts, with backoff; djfs retries a body read
        bound = 2 * (store_retries + 1) * 2 * store_timeout + 6.0
        cache = mounts.base / "down-cache"
        mount = mounts.mount({**s3_config(server, "down"), "cache-location": str(cache)},
                             [f"schemas={schema.database}", "whole_max=1MiB", "block_size=1MiB", "readahead=4",
                              f"store_timeout={store_timeout}", f"store_retries={store_retries}",
                              "failure_ttl=0.5"] + FAST)
        directory = mount.path(schema.database, "Value")
        files = {1: directory / "k=1" / "v.bin", 2: directory / "k=2" / "v.bin", 3: directory / "k=3" / "v.npy",
                 4: directory / "k=4" / "v.npy"}
        assert files[1].read_bytes() == expected[1]   # cached whole
        stats = {k: path.stat() for k, path in files.items()}
        moto = server._process

        def continue_after_outage(k: int, label: str) -> float:
            """Read the first 3 MiB of file k, take S3 away (by ``stop``), read on: EIO within the bound."""
            with open(files[k], "rb", buffering=0) as file:
                head = file.read(3 * MiB)
                assert head == expected[k][:3 * MiB]
                stop()
                start = time.monotonic()
                try:
                    rest = b""
                    while part := file.read(1 * MiB):
                        rest += part
                except OSError as error:
                    assert error.errno == errno.EIO, f"{label}: {error}"
                else:
                    raise AssertionError(f"{label}: {len(rest)} bytes read from a dead store")
                return time.monotonic() - start

        # -- frozen ---------------------------------------------------------------------------------------
        stop = lambda: os.kill(moto.pid, signal.SIGSTOP)  # noqa: E731
        try:
            worst = continue_after_outage(3, "frozen")
            assert worst < bound, f"EIO after {worst:.1f} s, bound {bound:.1f} s"
            code, elapsed = timed_errno(files[2].read_bytes)
            assert code == errno.EIO and elapsed < bound, (code, elapsed)
            worst = max(worst, elapsed)
            start = time.monotonic()
            assert files[1].read_bytes() == expected[1]
            assert sorted(os.listdir(directory)) == [f"k={k}" for k in values]
            assert files[4].stat().st_size == stats[4].st_size
            assert time.monotonic() - start < 2.0, "cached files and listings waited for the frozen store"
            assert mount.alive
        finally:
            os.kill(moto.pid, signal.SIGCONT)
        time.sleep(0.6)  # failure_ttl
        assert wait_for(lambda: errno_of(files[2].read_bytes) is None, timeout=bound)
        assert read_whole(files[3]) == expected[3] and files[2].read_bytes() == expected[2]

        # -- stopped, restarted empty, objects put back through the store --------------------------------------
        stop = server.stop
        try:
            elapsed = continue_after_outage(4, "stopped")
            assert elapsed < bound, f"EIO after {elapsed:.1f} s"
            worst = max(worst, elapsed)
            assert files[3].read_bytes() == expected[3]   # its blocks are in the disk cache
        finally:
            server.restart()
            server.create_bucket(bucket)
            with djfs.config.override(**{"external-location": server.location("down"), "external-account": account,
                                         "external-token": token}):
                clear_store_cache()
                store = schema.external.store()
                for hash_, data in stored.items():
                    store.put(hashing.object_path(hash_), data)
        time.sleep(0.6)
        assert wait_for(lambda: errno_of(files[4].read_bytes) is None, timeout=bound)
        for k in values:
            assert read_whole(files[k]) == expected[k], k
        objects, blocks = verify_cache(cache, origins, stored)
        assert objects >= 2 and blocks >= 6
        assert mount.alive
        record_property("s3_outage_eio_seconds", round(worst, 2))
        record_property("s3_outage_eio_bound_seconds", bound)
        record_property("cache_files_verified", objects + blocks)
        record_property("bytes_verified", sum(len(e) for e in expected.values()))
    finally:
        server.__exit__(None, None, None)
        clear_store_cache()


# == bad input ===============================================================================================

SUBJECTS = ["m1", "M1", "a/b", "a%2Fb", "..", ".", "", "nul\0x", "%", "_", "m_", "ü", "u",
            "x'; DROP TABLE `#scan`; --", 'q"uote\\', "' OR 1=1 --", "m1\\"]


@pytest.fixture(scope="module")
def hostile(mariadb, module_mounts, tmp_path_factory):
    """A schema whose key values are hostile (in a file store), and a mount of it with short timeouts."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "store").mkdir()
    with module_schema(mariadb, "hostile", {"external-location": f"file://{root / 'store'}"}, "lab") as lab:
        schema, name, settings = lab.schema, lab.name, lab.settings

        @schema
        class Scan(djfs.Lookup):
            definition = """
            subject : varchar(64)
            scan : int
            ---
            raw : external
            """

        @schema
        class Item(djfs.Manual):
            definition = """
            run : int
            subject : varchar(64)
            n : bigint
            ---
            payload : external
            values : longblob
            """
        Scan.insert([{"subject": subject, "scan": 1, "raw": f"row of {subject!r}".encode()} for subject in SUBJECTS])
        mount = module_mounts.mount(settings | {"cache-location": str(root / "cache")},
                                    [f"schemas={name}", "listing_timeout=0.1", "entry_timeout=0", "attr_timeout=0",
                                     "negative_timeout=0"])
        yield type("Hostile", (), dict(schema=schema, name=name, Scan=Scan, Item=Item, mount=mount,
                                       settings=settings, connection=lab.connection))


def hostile_names(subject_attribute) -> tuple[list[tuple[str, ...]], dict[tuple[str, ...], str]]:
    """(paths below the schema that must not resolve, {path: subject of the one row it must show})."""
    def subject(value: str) -> str:
        return paths.component(subject_attribute, value)
    missing: list[tuple[str, ...]] = []
    # schemas and tables that exist in MySQL but are not the view's, and SQL in their places
    for name in ("~external", "#scan", "scan", "_scan", "Scan'--", "Scan`", "`Scan`", "Scan%00", "Scan.Roi",
                 "SCAN", "Scan ", "Scan\\", "Scan;", "*", "%", "_can", "Sc%an", "Item' OR '1'='1"):
        missing.append((name,))
    # aliases of existing rows that MariaDB would match: case, trailing spaces (PAD SPACE), escapes, wildcards
    for text in ("subject=m1 ", "subject=m1%20", "subject=m1%09", "subject=%6D1", "subject=m%31", "subject=a%2fb",
                 "subject=%2E%2E", "subject=%2e", "subject=%2E", "subject=nul%00X", "subject=u%CC%88",
                 "subject=%75", "subject=%5F", "subject=m%5F", "subject=m%", "subject=m%25", "subject=%25%25",
                 "subject=M%31", "subject=%00", "subject=nul%00", "subject=nul%2500x", "subject=nul\\0x",
                 "subject=nul\\x00x", "subject=nul%u0000x", "subject=nul&#0;x", "subject=%C0%80",
                 "subject=nul%C0%80x", "subject=a%C0%AFb", "subject=a%E2%88%95b", "subject=a%EF%BC%8Fb",
                 "subject=..%2F..%2Fetc%2Fpasswd", "subject=%2F", "subject=%2Fetc%2Fpasswd", "subject=%FF",
                 "subject=%", "subject=%4", "subject=%G1", "subject=' OR '1'='1", "subject=m1' OR '1'='1",
                 "subject=m1'--", "subject=m1\"", "subject=m1`", "subject=m1;", "subject=\\", "subject=m1\\\\",
                 "subject='", "subject=\"", "subject=m1' UNION SELECT 1 --", "subject=1 OR 1=1", "subject",
                 "subject==m1", "=m1", "scan=1", "Subject=m1", "subject =m1", " subject=m1", "subject=m1=",
                 "SUBJECT=m1", "subject=m1%"):
        missing.append(("Scan", text))
    for text in ("scan=1 OR 1=1", "scan=1;", "scan=0x1", "scan=1e0", "scan=01", "scan=+1", "scan=1.0", "scan=-0",
                 "scan= 1", "scan=1 ", "scan=%31", "scan=\u0661", "scan=１", "scan=99999999999999999999999999",
                 "scan=-99999999999999999999999999", "scan=1'", "scan=", "scan", "scan=1%00", "subject=m1",
                 "scan=2", "scan=-1", "scan=2147483648"):
        missing.append(("Scan", "subject=m1", text))
    for text in ("raw.npy", "raw", "raw.bin%00", "raw.bin ", "row.json.", "ROW.JSON", "row.json/x", "~raw.bin",
                 "raw.bin'--", "*.bin", "scan=1", "subject=m1"):
        missing.append(("Scan", "subject=m1", "scan=1", text))
    # over-long names: one component of 256+ bytes (the kernel refuses), long ones that fit, deep paths
    for text in ("subject=" + "x" * 247, "subject=" + "x" * 248, "subject=" + "é" * 123, "subject=" + "é" * 124,
                 "subject=" + "%41" * 82, "x" * 4000, "subject=" + "m1" * 2000):
        missing.append(("Scan", text))
    missing.append(("Scan", *["subject=" + "y" * 200] * 20))
    missing.append(("Scan", "subject=m1", "scan=1", "raw.bin", *[".."] * 3, "subject=m2"))
    # the right row for every existing name, whatever it holds
    rows = {("Scan", subject(value), "scan=1"): value for value in SUBJECTS}
    rows[("Scan", "subject=m1", "scan=1", "..", "..", "subject=M1", "scan=1")] = "M1"  # '..' resolved by the kernel
    return missing, rows


def test_hostile_paths_find_nothing_or_exactly_their_row(hostile, record_property):
    """Hundreds of hostile names through stat, listdir, open and getxattr: a name that is not the one spelling
    of a row gives ENOENT (ENOTDIR below a file; ENAMETOOLONG where the kernel refuses a name itself — older
    kernels for a component over 255 bytes, every kernel for a path of 4,096 bytes or more), never an SQL error
    in the daemon's log nor another row; each row's own name shows exactly that row."""
    mount = hostile.mount
    base = mount.path(hostile.name)
    log_start = len(mount.log.read_bytes()) if mount.log.exists() else 0
    queries = mount.stats()["sql_queries"]
    missing, rows = hostile_names(hostile.Scan.heading["subject"])
    allowed = {errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG}
    tried = 0
    wrong: list[str] = []
    for parts in missing:
        path = os.path.join(base, *parts)
        for operation in (os.stat, os.lstat, os.listdir, lambda p: open(p, "rb").close(),
                          lambda p: os.getxattr(p, "user.djfs.stats"), lambda p: os.access(p, os.R_OK) or
                          (_ for _ in ()).throw(FileNotFoundError(errno.ENOENT, "no access", p))):
            code = errno_of(operation, path)
            tried += 1
            if code not in allowed:
                wrong.append(f"{parts!r}: {errno.errorcode.get(code, code)}")
        long_component = any(len(part.encode()) > 255 for part in parts)
        code = errno_of(os.stat, path)
        if not long_component and len(path.encode()) < 4096 and code != errno.ENOENT and code != errno.ENOTDIR:
            wrong.append(f"{parts!r}: stat gave {errno.errorcode.get(code, code)}, not ENOENT")
    assert not wrong, wrong[:10]
    for parts, subject in rows.items():
        directory = os.path.join(base, *parts)
        document = json.loads(Path(directory, "row.json").read_bytes())
        assert document == {"subject": subject, "scan": 1}, (parts, document)
        assert Path(directory, "raw.bin").read_bytes() == f"row of {subject!r}".encode()
        tried += 1
    listed = sorted(os.listdir(base / "Scan"))
    assert listed == sorted(paths.component(hostile.Scan.heading["subject"], s) for s in SUBJECTS)
    assert len(hostile.Scan()) == len(SUBJECTS)  # nothing was dropped or changed
    log = mount.log.read_bytes()[log_start:].decode("utf-8", "replace")
    alarms = [line for line in log.splitlines() if any(alarm in line for alarm in LOG_ALARMS)]
    assert not alarms, alarms[:5]
    assert mount.stats()["sql_queries"] > queries  # the names did reach the daemon
    record_property("hostile_paths", len(missing) + len(rows))
    record_property("hostile_operations", tried)


def test_every_listed_name_can_be_looked_up(hostile):
    """A row whose key is legal in the database but whose escaped name would be longer than a file name may be:
    the table still lists, and every name it lists can be looked up (nothing is listed that no program can
    open); the other rows are unaffected."""
    schema = hostile.schema

    @schema
    class Label(djfs.Lookup):
        definition = """
        label : varchar(255)
        ---
        text : varchar(16)
        """
    long_values = ["\U0001F4BE" * 100, "é" * 200, "%" * 255]
    with djfs.config.override(**hostile.settings):
        Label.insert([{"label": "plain", "text": "p"}] + [{"label": v, "text": str(i)} for i, v in enumerate(long_values)])
    table = hostile.mount.path(hostile.name, "Label")
    assert wait_for(lambda: "Label" in os.listdir(table.parent), timeout=3)
    names = os.listdir(table)
    assert "label=plain" in names
    assert json.loads((table / "label=plain" / "row.json").read_bytes()) == {"label": "plain", "text": "p"}
    unreachable = {len(name.encode()): errno.errorcode.get(errno_of(os.stat, table / name), "ok")
                   for name in names if errno_of(os.stat, table / name) is not None}
    assert not unreachable, f"listed names that can't be looked up (bytes: errno): {unreachable}"
    listing = subprocess.run(["ls", "-l", str(table)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr


TEXT = st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from(list("/%.'\"\\`;\0 _=*?"))), max_size=20)
SPECIAL = st.sampled_from(["", ".", "..", "/", "%", "%2F", "%00", "\0", "../..", "a/../b", "'", '"', "\\", "%25",
                           " ", "x ", " x", "=", "n=1", "é", "e\u0301", "\U0001F4BE"])
_runs = itertools.count(1)


def test_any_key_value_round_trips_through_the_mount(hostile, record_property):
    """Property: whatever the primary-key values (text of any Unicode, including '/', '%', '..', quotes and NUL;
    any 64-bit integer), a row inserted with them is listed under the names the mount's own escaping gives
    (djfs.fs.paths.component), alone, and its files show exactly that row."""
    mount, Item = hostile.mount, hostile.Item
    table_dir = mount.path(hostile.name, "Item")
    heading = Item.heading
    examples = []

    @settings(max_examples=50, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(subject=st.one_of(TEXT, SPECIAL), n=st.one_of(st.integers(-(1 << 63), (1 << 63) - 1),
                                                         st.sampled_from([0, -1, 1 << 31, -(1 << 63)])))
    def round_trip(subject: str, n: int) -> None:
        run = next(_runs)
        payload = json.dumps([subject, n]).encode()
        with djfs.config.override(**hostile.settings):
            Item.insert1({"run": run, "subject": subject, "n": n, "payload": payload, "values": np.array([n])})
        run_dir = table_dir / f"run={run}"
        subject_name = paths.component(heading["subject"], subject)
        assert wait_for(lambda: run_dir.exists(), timeout=3), f"run={run} never showed up"
        assert os.listdir(run_dir) == [subject_name]
        assert os.listdir(run_dir / subject_name) == [f"n={n}"]
        row = run_dir / subject_name / f"n={n}"
        assert sorted(os.listdir(row)) == ["payload.bin", "row.json", "values.npy"]
        assert json.loads((row / "row.json").read_bytes()) == {"run": run, "subject": subject, "n": n}
        assert (row / "payload.bin").read_bytes() == payload
        assert np.load(io.BytesIO((row / "values.npy").read_bytes())).tolist() == [n]
        examples.append(subject)

    round_trip()
    assert len(examples) >= 40
    log = mount.log.read_bytes().decode("utf-8", "replace")
    assert not [line for line in log.splitlines() if any(alarm in line for alarm in LOG_ALARMS)]
    record_property("hypothesis_examples", len(examples))


# == security ================================================================================================

NOBODY = 65534


def as_user(uid: int, gid: int, *command: str) -> subprocess.CompletedProcess:
    """Run a command as another user (no supplementary groups), as ``setpriv`` does it."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *command],
                          capture_output=True, text=True, timeout=30)


def proc_mounts_options(mountpoint: Path) -> tuple[str, set[str]]:
    """(file system type, options) of a mount point in /proc/mounts."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split(" ")
        if fields[1].replace("\\040", " ") == str(mountpoint):
            return fields[2], set(fields[3].split(","))
    raise AssertionError(f"{mountpoint} is not in /proc/mounts")


def walk(top: Path) -> tuple[list[Path], list[Path]]:
    directories, files = [top], []
    for directory, names, file_names in os.walk(top):
        directories += [Path(directory, name) for name in names]
        files += [Path(directory, name) for name in file_names]
    return directories, files


def declare_movies(schema):
    @schema
    class Movie(djfs.Manual):
        definition = """
        movie_id : int
        ---
        title : varchar(32)
        frames : external
        thumbnail : longblob
        """
    return Movie


def fill_movies(schema, offset: int = 0) -> dict[str, bytes]:
    """Two movies; returns {path below the schema: expected bytes} of their value files."""
    movies = declare_movies(schema)
    expected = {}
    for k in (1, 2):
        row = {"movie_id": k, "title": f"movie {k + offset}", "frames": np.arange(5000.0) * k + offset,
               "thumbnail": np.full((8, 8), k + offset, np.int16)}
        movies.insert1(row)
        expected[f"Movie/movie_id={k}/frames.npy"] = expected_file(row["frames"])
        expected[f"Movie/movie_id={k}/thumbnail.npy"] = expected_file(row["thumbnail"])
    return expected


@pytest.fixture
def open_base(mariadb):
    """Mounts below a directory every user may traverse (pytest's own tmp directories are 0700), so that what
    another user is refused, FUSE refuses."""
    base = Path(tempfile.mkdtemp(prefix="djfs-perm-", dir="/tmp"))
    base.chmod(0o755)
    registry = Mounts(base, mariadb)
    try:
        yield registry
    finally:
        registry.stop_all()
        shutil.rmtree(base, ignore_errors=True)


def test_permissions_owner_and_allow_other(schema, db_config, open_base, record_property):
    """By default every file is 0444 and every directory 0555, owned by the mounting user, and the mount is
    ``ro`` without ``allow_other``: another uid gets EACCES for everything, even with the bits allowing it.
    With ``allow_other`` it can list and read.  ``uid``, ``gid``, ``file_mode`` and ``dir_mode`` are shown and
    enforced by the kernel (default_permissions): other users are refused by the bits, the owner and the group
    are let in."""
    store = open_base.base / "store"
    store.mkdir()
    with djfs.config.override(**{"external-location": f"file://{store}"}):
        clear_store_cache()
        schema.set_external_storage("lab")
        expected = fill_movies(schema)
    config = {"external-location": f"file://{store}"}
    plain = open_base.mount(config, [f"schemas={schema.database}"])
    kind, options = proc_mounts_options(plain.mountpoint)
    assert kind == "fuse.djfs" and "ro" in options and "allow_other" not in options, (kind, options)
    directories, files = walk(plain.mountpoint)
    assert len(files) == 6 and len(directories) == 5  # root, schema, table, two rows
    for path in directories:
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o555 and stat.S_ISDIR(info.st_mode), path
        assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid()), path
    for path in files:
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o444 and stat.S_ISREG(info.st_mode), path
        assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid()), path
    some_file = plain.path(schema.database, "Movie", "movie_id=1", "row.json")
    refused = 0
    for command in (["ls", str(plain.mountpoint)], ["stat", str(plain.path(schema.database))],
                    ["cat", str(some_file)], ["ls", str(plain.path(schema.database, "Movie"))]):
        result = as_user(NOBODY, NOBODY, *command)
        assert result.returncode != 0 and "Permission denied" in result.stderr, (command, result)
        refused += 1
    assert as_user(NOBODY, NOBODY, "ls", str(open_base.base)).returncode == 0  # the way there is open

    shared = open_base.mount(config, [f"schemas={schema.database}", "allow_other"])
    assert "allow_other" in proc_mounts_options(shared.mountpoint)[1]
    result = as_user(NOBODY, NOBODY, "ls", str(shared.path(schema.database, "Movie")))
    assert result.returncode == 0 and result.stdout.split() == ["movie_id=1", "movie_id=2"], result
    for name, data in expected.items():
        result = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "cat",
                                 str(shared.path(schema.database, name))], capture_output=True, timeout=30)
        assert result.returncode == 0 and result.stdout == data, name

    owned = open_base.mount(config, [f"schemas={schema.database}", "allow_other", "uid=4321", "gid=4322",
                                     "file_mode=0440", "dir_mode=0550"])
    directories, files = walk(owned.mountpoint)
    assert len(files) == 6
    for path in directories:
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o550, 4321, 4322), path
    for path in files:
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o440, 4321, 4322), path
    target = owned.path(schema.database, "Movie", "movie_id=2", "frames.npy")
    for uid, gid in ((NOBODY, NOBODY), (4323, 4323)):
        for command in (["ls", str(owned.mountpoint)], ["cat", str(target)]):
            result = as_user(uid, gid, *command)
            assert result.returncode != 0 and "Permission denied" in result.stderr, (uid, command, result)
            refused += 1
    for uid, gid in ((4321, 4321), (4399, 4322)):  # the owner; a member of the group
        result = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "cat",
                                 str(target)], capture_output=True, timeout=30)
        assert result.returncode == 0 and result.stdout == expected["Movie/movie_id=2/frames.npy"], (uid, result)
    record_property("access_refusals", refused)


DB_PASSWORD = "Mount-Db-Pw-4f0c2b9e-SECRET"
WRONG_PASSWORD = "Mount-Wrong-Pw-8a7d-SECRET"
S3_ACCESS_KEY = "AKIADJFSMOUNT0000001"
S3_SECRET = "Mount-S3-Secret-71c3e5a0-SECRET"


@pytest.fixture
def secret_user(mariadb, schema_name):
    """A database user with a distinctive password and all rights on the test's schema only."""
    user = f"djfs_m_{uuid.uuid4().hex[:8]}"
    raw = pymysql.connect(**mariadb.connect_args(), autocommit=True)
    try:
        raw.cursor().execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (DB_PASSWORD,))
        raw.cursor().execute(f"GRANT ALL PRIVILEGES ON `{schema_name}`.* TO '{user}'@'%'")
        yield user
    finally:
        raw.cursor().execute(f"DROP USER IF EXISTS '{user}'@'%'")
        raw.close()


def test_credentials_never_leak_from_the_mount(schema, db_config, s3_server, secret_user, mounts, record_property):
    """A mount started as a user would (``djfs mount`` in the background, ``--debug`` logging, the database
    password in DJ_PASS, the S3 secret in the $DJ_CONFIG file) lists and reads everything, meets missing names,
    an object gone from its bucket (a store error) and reports its counters.  Neither secret appears in the
    daemon's log, the mount's files, names or xattrs, the daemon's command line or ``ps``; a mount refused for
    a wrong password says why without showing it."""
    s3 = {"external-location": s3_server.location("cred"), "external-account": S3_ACCESS_KEY,
          "external-token": S3_SECRET, "store-timeout": 2, "store-retries": 0}
    with djfs.config.override(**s3):
        clear_store_cache()
        schema.set_external_storage(s3_server.create_bucket(f"djfs-cred-{uuid.uuid4().hex[:12]}"))
        expected = fill_movies(schema)
        hash_ = schema.connection.query(f"SELECT frames FROM `{schema.database}`.`movie` WHERE movie_id = 2"
                                        ).fetchone()[0]
        schema.external.store().remove(hashing.object_path(hash_))   # movie 2's frames: a store error
    clear_store_cache()
    mount = mounts.mount(s3, start=False, DJ_USER=secret_user, DJ_PASS=DB_PASSWORD)
    result = mount.run_cli("mount", str(mount.mountpoint), "-o", f"schemas={schema.database},entry_timeout=0",
                           "--debug", "--log-file", str(mount.log))
    assert result.returncode == 0, result.stderr
    outputs = [result.stdout, result.stderr]
    pid = wait_for(lambda: next((p.pid for p in psutil_processes() if str(mount.mountpoint) in p.cmdline()), None))
    assert pid, "no daemon process"
    directories, files = walk(mount.mountpoint)
    contents = []
    for path in files:
        try:
            contents.append(path.read_bytes())
        except OSError as error:
            assert error.errno == errno.EIO and path.name == "frames.npy", (path, error)
            contents.append(b"")
    assert contents and expected["Movie/movie_id=1/frames.npy"] in contents
    assert errno_of(os.stat, mount.path(schema.database, "Nope")) == errno.ENOENT
    xattrs = [os.getxattr(mount.mountpoint, "user.djfs.stats")]
    for path in directories + files:
        for name in os.listxattr(path):
            xattrs.append(os.getxattr(path, name))
    names = [str(path) for path in directories + files]
    ps = subprocess.run(["ps", "-eww", "-o", "pid,user,args"], capture_output=True, text=True, check=True).stdout
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    log = mount.log.read_bytes()
    assert b"unique:" in log or b"opcode" in log or b"DEBUG" in log, "the daemon did not log at debug level"
    assert b"missing" in log or b"NoSuchKey" in log or b"can't read" in log, "the store error was not logged"

    env = dict(mount.env, DJ_PASS=WRONG_PASSWORD)
    other = mounts.base / "refused"
    other.mkdir()
    refused = subprocess.run([sys.executable, "-m", "djfs.cli", "mount", str(other), "--log-file",
                              str(mounts.base / "refused.log")], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "Access denied" in refused.stderr, refused.stderr
    assert not is_mounted(str(other))
    outputs += [refused.stdout, refused.stderr]
    places = {"daemon log": [log], "file contents": contents, "xattrs": xattrs, "names": [n.encode() for n in names],
              "daemon cmdline": [cmdline], "ps": [ps.encode()], "command output": [o.encode() for o in outputs]}
    for secret in (DB_PASSWORD, WRONG_PASSWORD, S3_SECRET):
        for where, blobs in places.items():
            assert not [b for b in blobs if secret.encode() in b], f"{secret} appears in the {where}"
    record_property("secret_places_checked", sum(len(blobs) for blobs in places.values()))


def psutil_processes():
    import psutil
    for process in psutil.process_iter():
        try:
            process.cmdline()
        except Exception:  # noqa: BLE001 - gone or inaccessible
            continue
        yield process


READER = "djfs_mount_reader"
READER_PASSWORD = "Mount-Reader-Pw-2d6e-SECRET"


def test_select_only_user_sees_only_its_schema(mariadb, connection, mounts, tmp_path, record_property):
    """A database user granted SELECT on one schema mounts everything it may see: exactly that schema (not the
    others on the server, not the system schemas), whose files it reads; paths into another schema, right as
    they are, are not found, and nothing of it is ever read."""
    root = tmp_path / "store"
    root.mkdir()
    names = [f"djfs_mnt_grant_{os.getpid()}_{part}" for part in ("a", "b")]
    raw = pymysql.connect(**mariadb.connect_args(), autocommit=True)
    try:
        with djfs.config.override(**{"external-location": f"file://{root}"}):
            clear_store_cache()
            expected = {}
            for index, name in enumerate(names):
                schema = djfs.Schema(name, connection=connection)
                schema.set_external_storage(name)
                expected[name] = fill_movies(schema, offset=100 * index)
        raw.cursor().execute(f"CREATE USER '{READER}'@'%%' IDENTIFIED BY %s", (READER_PASSWORD,))
        raw.cursor().execute(f"GRANT SELECT ON `{names[0]}`.* TO '{READER}'@'%'")
        all_schemas = {row[0] for row in connection.query("SHOW DATABASES").fetchall()}
        assert len(all_schemas - {names[0]}) >= 4  # the other schema, system ones, other tests'
        mount = mounts.mount({"external-location": f"file://{root}"}, FAST, DJ_USER=READER, DJ_PASS=READER_PASSWORD)
        assert os.listdir(mount.mountpoint) == [names[0]]
        assert os.listdir(mount.path(names[0])) == ["Movie"]
        for name, data in expected[names[0]].items():
            assert mount.path(names[0], name).read_bytes() == data
        refused = 0
        for parts in [(names[1],), (names[1], "Movie"), (names[1], "Movie", "movie_id=1"),
                      (names[1], "Movie", "movie_id=1", "row.json"), (names[1], "Movie", "movie_id=1", "frames.npy"),
                      ("mysql",), ("mysql", "User"), ("information_schema",), ("performance_schema",), ("sys",),
                      (names[0], "~external"), (names[0], "Movie", "movie_id=1", "..", "..", "..", names[1])]:
            for operation in (os.stat, os.listdir, lambda p: open(p, "rb").close()):
                assert errno_of(operation, mount.path(*parts)) == errno.ENOENT, parts
                refused += 1
        log = mount.log_text()
        assert "denied" not in log.lower(), log[-2000:]   # nothing of the other schema was even asked for
        record_property("access_refusals", refused)
    finally:
        raw.cursor().execute(f"DROP USER IF EXISTS '{READER}'@'%'")
        for name in names:
            raw.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        raw.close()
        clear_store_cache()
