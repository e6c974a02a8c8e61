"""Bad input and security: hostile database values are refused before any store is touched, damaged objects are
detected, credentials never leak, and a database user sees only what it was granted.

All against the real components: the session's private MariaDB (users are created there with GRANT), moto's
S3 server over HTTP, real files.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import threading
import traceback
import uuid

import numpy as np
import psutil
import pymysql
import pytest

import djfs
from djfs import hashing
from djfs.cache import CacheError
from djfs.errors import (ConnectionLostError, CorruptObjectError, DjfsError, InvalidHashError, QueryError,
                         StoreError)
from djfs.settings import ConfigError
from djfs.stores import clear_store_cache, open_store

# -- helpers ------------------------------------------------------------------------------------------------


def declare_movies(schema):
    @schema
    class Movie(djfs.Manual):
        definition = """
        movie_id : int
        ---
        frames = null : external
        """
    return Movie


def admin(mariadb) -> pymysql.connections.Connection:
    """A raw root session on the private server, for what an attacker or a broken tool would write."""
    return pymysql.connect(**mariadb.connect_args(), autocommit=True)


class Trap:
    """Proof that nothing touched a store: an S3 endpoint that records every connection made to it (and
    serves none), and an audit hook that records every file opened or listed under the watched folders."""

    _installed = False
    _current: "Trap | None" = None

    def __init__(self, *folders) -> None:
        self.folders = [os.fspath(folder) for folder in folders]
        self.touched: list = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        if not Trap._installed:
            sys.addaudithook(Trap._audit)
            Trap._installed = True

    def location(self, prefix: str = "trap") -> str:
        return f"s3+http://127.0.0.1:{self.port}/{prefix}"

    def _accept(self) -> None:
        while True:
            try:
                client, address = self._listener.accept()
            except OSError:
                return
            self.touched.append(("connection", address))
            client.close()

    @staticmethod
    def _audit(event: str, args: tuple) -> None:
        trap = Trap._current
        if trap is None or event not in ("open", "os.listdir", "os.scandir", "os.remove", "os.rename",
                                         "os.mkdir", "os.utime", "socket.connect"):
            return
        target = args[1] if event == "socket.connect" else (args[0] if args else None)
        if event == "socket.connect":
            if isinstance(target, tuple) and target[1:2] == (trap.port,):
                trap.touched.append((event, target))
            return
        if isinstance(target, (str, bytes, os.PathLike)):
            path = os.fsdecode(target)
            if "passwd" in path or any(path.startswith(folder) for folder in trap.folders):
                trap.touched.append((event, path))

    def __enter__(self) -> "Trap":
        Trap._current = self
        return self

    def __exit__(self, *exc) -> None:
        Trap._current = None
        self._listener.close()


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


# -- hostile hashes in the database ----------------------------------------------------------------------------

TRAVERSAL_43 = "../" * 11 + "etc/passwd"
HOSTILE_HASHES = {
    "traversal": "../../etc/passwd",
    "traversal-43": TRAVERSAL_43,
    "44-characters": "A" * 44,
    "42-characters": "A" * 42,
    "dollar": "abc$" + "a" * 39,
    "slash": "a" * 21 + "/" + "a" * 21,
    "plus": "a" * 42 + "+",          # standard base64, not the URL-safe alphabet
    "padding": "a" * 42 + "=",
    "dot": "." * 43,
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HASHES))
def test_hostile_hash_in_a_row_is_refused_before_any_store_is_touched(schema, db_config, mariadb, tmp_path, name):
    """A row's external column and ``~external`` hold a hostile value (written with raw SQL, foreign key checks
    off); fetching it raises InvalidHashError, and neither the file store, the cache nor an S3 endpoint (a trap
    that records connections) is touched."""
    bad = HOSTILE_HASHES[name]
    assert len(TRAVERSAL_43) == 43
    root = tmp_path / "store"
    root.mkdir()
    cache = tmp_path / "cache"
    with djfs.config.override(**{"external-location": f"file://{root}", "cache-location": str(cache)}):
        schema.set_external_storage("lab")
        movies = declare_movies(schema)
        movies.insert([{"movie_id": 1, "frames": np.arange(10)}, {"movie_id": 2, "frames": np.arange(20)}])
        good = movies.connection.query(f"SELECT frames FROM {movies.full_table_name} WHERE movie_id = 2").fetchone()[0]
        raw = admin(mariadb)
        try:
            cursor = raw.cursor()
            cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
            table, external = movies.full_table_name, schema.external.full_table_name
            if len(bad) > 43:  # a tampered schema: wider columns (a foreign key column can't change: drop it)
                cursor.execute("SELECT constraint_name FROM information_schema.referential_constraints WHERE "
                               "constraint_schema = %s AND table_name = %s", (schema.database, movies.table_name))
                (constraint,) = cursor.fetchone()
                cursor.execute("SELECT column_comment FROM information_schema.columns WHERE table_schema = %s "
                               "AND table_name = %s AND column_name = 'frames'", (schema.database, movies.table_name))
                (comment,) = cursor.fetchone()
                cursor.execute(f"ALTER TABLE {table} DROP FOREIGN KEY `{constraint}`")
                cursor.execute(f"ALTER TABLE {table} MODIFY frames varchar(64) CHARACTER SET ascii NULL "
                               f"COMMENT %s", (comment,))
                cursor.execute(f"ALTER TABLE {external} MODIFY hash varchar(64) CHARACTER SET ascii "
                               "COLLATE ascii_bin NOT NULL")
            # an entry under the hostile name, copied from a good one: found if the name were looked up
            cursor.execute(f"INSERT INTO {external} (hash, store, folder, size, origin, status, compressed, view, "
                           "view_size, view_header, data_offset) SELECT %s, store, folder, size, origin, status, "
                           f"compressed, view, view_size, view_header, data_offset FROM {external} WHERE hash = %s",
                           (bad, good))
            cursor.execute(f"UPDATE {table} SET frames = %s WHERE movie_id = 1", (bad,))
            cursor.execute(f"SELECT frames FROM {table} WHERE movie_id = 1")
            assert cursor.fetchone()[0] == bad  # stored as written: nothing truncated or padded it away
        finally:
            raw.close()
        before = files_under(root)
        trap = Trap(root, cache)
        djfs.config["external-location"] = trap.location()  # any store access now fails loudly and is seen
        djfs.config["external-account"], djfs.config["external-token"] = "trap-key", "trap-secret"
        clear_store_cache()
        with trap:
            with pytest.raises(InvalidHashError, match="refusing malformed external hash"):
                (movies & {"movie_id": 1}).fetch1("frames")
            with pytest.raises(InvalidHashError):
                movies.fetch("frames")
            with pytest.raises(InvalidHashError):
                schema.external.get(bad)
            with pytest.raises(InvalidHashError):
                schema.external.read_object({"hash": bad, "size": 10, "origin": b"", "store": "", "folder": "lab"})
        assert trap.touched == [], trap.touched
        assert files_under(root) == before
        assert not os.path.exists(cache) or files_under(cache) == []


def test_hostile_hash_in_external_table_is_reported_by_gc(schema, db_config, mariadb, tmp_path):
    """gc meets hostile names in ``~external``: it reports them as failed, removes nothing outside the store,
    and still collects the good garbage."""
    root = tmp_path / "store"
    root.mkdir()
    bait = tmp_path / "bait"
    bait.write_text("must survive")
    with djfs.config.override(**{"external-location": f"file://{root}"}):
        schema.set_external_storage("lab")
        movies = declare_movies(schema)
        movies.insert([{"movie_id": 1, "frames": np.arange(10)}, {"movie_id": 2, "frames": np.arange(20)}])
        (movies & {"movie_id": 2}).delete()
        raw = admin(mariadb)
        try:
            cursor = raw.cursor()
            external = schema.external.full_table_name
            for bad in ("../../bait", "../../../" + "x" * 34, "a" * 42 + "."):
                cursor.execute(f"INSERT INTO {external} (hash, folder, size, origin, status, view_size) "
                               "VALUES (%s, 'lab', 1, '', 'deleted', 1)", (bad,))
            cursor.execute(f"INSERT INTO {external} (hash, folder, size, origin, status, view_size) "
                           "VALUES (%s, '../..', 1, '', 'deleted', 1)", ("b" * 43,))
        finally:
            raw.close()
        with Trap(tmp_path / "bait") as trap:
            report = schema.external.gc(grace=0)
        assert trap.touched == []
        assert bait.read_text() == "must survive"
        failed = dict(report.failed)
        assert {"../../bait", "a" * 42 + ".", "b" * 43} <= set(failed)
        assert "malformed" in failed["../../bait"] and "folder" in failed["b" * 43]
        assert len(report.entries) == 1                       # movie 2's object, the one real piece of garbage
        assert movies.fetch1("frames").tolist() == list(range(10))


def test_hostile_folder_store_and_size_in_external_table(schema, backend, mariadb):
    """Other hostile ``~external`` values: a folder that escapes the store, an unknown store name, a size far
    beyond the object's — each a clear djfs error, never a path outside the store or a huge allocation."""
    backend(schema)
    movies = declare_movies(schema)
    value = np.arange(1000)
    movies.insert1({"movie_id": 1, "frames": value})
    external = schema.external.full_table_name
    raw = admin(mariadb)
    try:
        cursor = raw.cursor()

        def tamper(column, bad):
            cursor.execute(f"SELECT {column} FROM {external}")
            (saved,) = cursor.fetchone()
            cursor.execute(f"UPDATE {external} SET {column} = %s", (bad,))
            return saved

        for folder in ("../..", "..", "a/b", "/etc", "Bad_Bucket!"):
            saved = tamper("folder", folder)
            with pytest.raises(StoreError, match="folder|bucket"):
                movies.fetch1("frames")
            tamper("folder", saved)
        saved = tamper("store", "../x")
        with pytest.raises(ConfigError, match="unknown configuration key"):
            movies.fetch1("frames")
        tamper("store", saved)
        saved = tamper("size", 1 << 50)   # a petabyte: must be refused, not allocated
        with pytest.raises(CorruptObjectError):
            movies.fetch1("frames")
        tamper("size", saved + 1)
        with pytest.raises(CorruptObjectError):
            movies.fetch1("frames")
        tamper("size", saved)
        np.testing.assert_array_equal(movies.fetch1("frames"), value)
    finally:
        raw.close()


# -- damaged objects -----------------------------------------------------------------------------------------


def test_truncated_or_extended_store_object_is_detected(schema, backend, tmp_path):
    """Stored objects cut short or grown, read with the default verification policy: a CorruptObjectError
    naming the object, directly and through the cache, and nothing cached."""
    backend(schema)
    movies = declare_movies(schema)
    values = {1: np.arange(5000.0), 2: np.arange(4000.0)}
    movies.insert([{"movie_id": k, "frames": v} for k, v in values.items()])
    store = schema.external.store()
    hashes = dict(movies.connection.query(f"SELECT movie_id, frames FROM {movies.full_table_name}").fetchall())
    one, two = (hashing.object_path(hashes[k]) for k in (1, 2))
    store.put(one, store.get(one)[:-100])          # truncated
    store.put(two, store.get(two) + b"\0" * 100)   # extended
    for k in (1, 2):
        with pytest.raises(CorruptObjectError, match=hashes[k][:20]):
            (movies & {"movie_id": k}).fetch1("frames")
    cache = tmp_path / "cache"
    djfs.config["cache-location"] = str(cache)
    for k in (1, 2):
        with pytest.raises(CorruptObjectError, match=hashes[k][:20]):
            (movies & {"movie_id": k}).fetch1("frames")
    schema.external.cache().flush()
    assert files_under(cache / "objects") == [] and files_under(cache / "tmp") == []


@pytest.mark.parametrize("damage", ["flipped", "truncated", "extended"])
def test_corrupted_cache_file_is_detected_reported_and_repaired(schema, backend, tmp_path, caplog, damage):
    """A cached object damaged on disk (a bit flipped, cut short or grown) is detected by the cache file's
    block checksums on every read, logged, dropped from the cache, and the right value is served from the store
    and cached again."""
    backend(schema)
    movies = declare_movies(schema)
    value = np.random.default_rng(1).random(20000)
    movies.insert1({"movie_id": 1, "frames": value})
    hash_ = movies.connection.query(f"SELECT frames FROM {movies.full_table_name}").fetchone()[0]
    cache_dir = tmp_path / "cache"
    djfs.config["cache-location"] = str(cache_dir)
    np.testing.assert_array_equal(movies.fetch1("frames"), value)
    schema.external.cache().flush()  # the cache is filled in the background
    cached = cache_dir / "objects" / hash_[:2] / hash_
    good = cached.read_bytes()
    data = bytearray(good)
    if damage == "flipped":
        data[len(data) // 2] ^= 0x10
    elif damage == "truncated":
        del data[-10:]
    else:
        data += b"\0" * 10
    cached.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="djfs"):
        np.testing.assert_array_equal(movies.fetch1("frames"), value)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(hash_ in message and "cache" in message for message in warnings), warnings
    schema.external.cache().flush()
    assert cached.read_bytes() == good             # repaired: cached again, verified
    np.testing.assert_array_equal(movies.fetch1("frames"), value)


# -- invalid configuration of stores ------------------------------------------------------------------------


@pytest.mark.parametrize("location, message", [
    ("ftp://host/path", "external-location"),
    ("/absolute/path/without/scheme", "external-location"),
    ("s3//host/prefix", "external-location"),
    ("", "external-location"),
    (42, "external-location"),
])
def test_bad_store_location_fails_when_set(location, message):
    with pytest.raises(ConfigError, match=message):
        djfs.Config()["external-location"] = location
    with pytest.raises(ConfigError, match="external-location-raw"):
        djfs.Config()["external-location-raw"] = location


@pytest.mark.parametrize("location, folder, message", [
    ("file://server/share", "lab", "names host 'server'"),
    ("file:///data/../etc", "lab", r"'\.' or '\.\.' components"),
    ("file:///data?x=1", "lab", "no '\\?query'"),
    ("file:///data#part", "lab", "fragment"),
    ("file:///data", "../etc", "folder"),
    ("file:///data", "a/b", "folder"),
    ("s3://AKIAEXAMPLE:wJalr-SECRET-KEY@s3.example.org/lab", "bucket", "credentials don't belong"),
    ("s3+http:///prefix", "bucket", "needs a host"),
    ("s3://s3.example.org:99999/lab", "bucket", "malformed"),
    ("s3://s3.example.org/lab prefix", "bucket", "invalid key prefix"),
    ("s3://s3.example.org/../lab", "bucket", "invalid key prefix"),
    ("s3://s3.example.org/lab?color=red", "bucket", "unknown option"),
    ("s3://s3.example.org/lab", "Upper_Case", "invalid S3 bucket name"),
    ("s3://s3.example.org/lab", "192.168.0.1", "invalid S3 bucket name"),
    ("s3://s3.example.org/lab", "x" * 64, "invalid S3 bucket name"),
])
def test_bad_store_location_or_folder_is_a_clear_error_before_any_access(location, folder, message):
    """Locations the setting accepts by scheme but that can't name a store: a LocationError saying what is
    wrong, raised when the store is opened — before any file or network access — and never echoing a secret."""
    clear_store_cache()
    with Trap("/data", "/etc") as trap:
        with pytest.raises(StoreError, match=message) as caught:
            open_store(location, folder)
    assert trap.touched == []
    assert "SECRET" not in str(caught.value) and "SECRET" not in repr(caught.value)


def test_store_location_and_cache_misconfigured_in_use(schema, db_config, tmp_path):
    """Through the library: a file store whose parent folder is missing (an unmounted share), a file store
    given S3 credentials, and a cache location that is a file — each a clear error naming the problem."""
    with djfs.config.override(**{"external-location": f"file://{tmp_path}/not-mounted/store"}):
        clear_store_cache()
        schema.set_external_storage("lab")
        movies = declare_movies(schema)
        with pytest.raises(StoreError, match="does not exist .*mounted"):
            movies.insert1({"movie_id": 1, "frames": np.arange(3)})
        assert len(movies) == 0 and not (tmp_path / "not-mounted").exists()
        djfs.config["external-location"] = f"file://{tmp_path}"
        djfs.config["external-account"], djfs.config["external-token"] = "key", "secret-token-value"
        clear_store_cache()
        with pytest.raises(StoreError, match="takes no external-account"):
            movies.insert1({"movie_id": 1, "frames": np.arange(3)})
        djfs.config["external-account"] = djfs.config["external-token"] = None
        movies.insert1({"movie_id": 1, "frames": np.arange(3)})
        (tmp_path / "a-file").write_text("x")
        djfs.config["cache-location"] = str(tmp_path / "a-file")
        with pytest.raises(CacheError, match="can't create the cache"):
            movies.fetch1("frames")
    clear_store_cache()


# -- credentials never leak ---------------------------------------------------------------------------------

DB_PASSWORD = "Db-Pw-7c1e9a4f-SECRET"
WRONG_PASSWORD = "Wrong-Pw-3b8d2f60-SECRET"
S3_ACCESS_KEY = "AKIADJFSFAKE00000001"
S3_SECRET = "S3-Secret-5e2a9c17d4-SECRET"
SECRETS = (DB_PASSWORD, WRONG_PASSWORD, S3_SECRET)
DB_USER = "djfs_cred"


@pytest.fixture
def db_user(mariadb, schema_name):
    """A database user with a distinctive password and all rights on the test's schema only."""
    raw = admin(mariadb)
    try:
        cursor = raw.cursor()
        cursor.execute(f"CREATE USER IF NOT EXISTS '{DB_USER}'@'%%' IDENTIFIED BY %s", (DB_PASSWORD,))
        cursor.execute(f"GRANT ALL PRIVILEGES ON `{schema_name}`.* TO '{DB_USER}'@'%'")
        yield DB_USER
    finally:
        raw.cursor().execute(f"DROP USER IF EXISTS '{DB_USER}'@'%'")
        raw.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def texts_of(error: BaseException) -> list[str]:
    """Everything an exception can show: message, repr, formatted traceback, and every chained exception."""
    texts = ["".join(traceback.format_exception(error))]
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        texts += [str(error), repr(error), repr(getattr(error, "args", ()))]
        error = error.__cause__ or error.__context__
    return texts


def test_credentials_never_in_logs_errors_or_reprs(mariadb, s3_server, schema_name, db_user, tmp_path, caplog):
    """With every logger at DEBUG (djfs, boto3, botocore, urllib3 …), insert, fetch, delete and gc through a
    password-protected database user and an S3 secret, then fail: an S3 call to a missing bucket, one to a
    dead endpoint, a failed database login, a failed query. No log record, exception (message, repr,
    traceback, chained causes) or repr of djfs's objects shows the password or the secret."""
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    reprs: list[str] = []
    with djfs.config.override(**{
            "database.host": mariadb.host, "database.port": mariadb.port, "database.user": db_user,
            "database.password": DB_PASSWORD, "external-location": s3_server.location("cred"),
            "external-account": S3_ACCESS_KEY, "external-token": S3_SECRET, "store-retries": 0,
            "store-timeout": 3, "cache-location": str(tmp_path / "cache")}):
        clear_store_cache()
        try:
            connection = djfs.conn(reset=True)
            schema = djfs.Schema(schema_name, connection=connection)
            schema.set_external_storage(s3_server.create_bucket(f"djfs-cred-{uuid.uuid4().hex[:12]}"))
            movies = declare_movies(schema)
            movies.insert([{"movie_id": k, "frames": np.arange(100 * k)} for k in range(1, 4)])
            assert movies.fetch("frames", order_by="movie_id")[2].tolist() == list(range(300))
            (movies & {"movie_id": 1}).delete()
            schema.external.gc(grace=0)
            store = schema.external.store()
            reprs += [repr(djfs.config), str(djfs.config), repr(djfs.config.masked()), repr(connection),
                      repr(schema), repr(movies), repr(schema.external), repr(store), store.describe(),
                      repr(vars(store)), repr(schema.external.cache())]
            # failing S3 calls: a bucket that does not exist, an endpoint that is down
            schema.set_external_storage("djfs-no-such-bucket")
            with pytest.raises(StoreError) as caught:
                movies.insert1({"movie_id": 9, "frames": np.arange(5)})
            errors.append(caught.value)
            djfs.config["external-location"] = f"s3+http://127.0.0.1:{closed_port()}/cred"
            clear_store_cache()
            with pytest.raises(StoreError) as caught:
                movies.insert1({"movie_id": 9, "frames": np.arange(5)})
            errors.append(caught.value)
            reprs += [repr(schema.external.store())]
            # a failed query, failed logins (the wrong password given directly, and through the configuration)
            with pytest.raises(QueryError) as caught:
                connection.query("SELECT * FROM `no_such_schema`.`no_such_table`")
            errors.append(caught.value)
            wrong = djfs.Connection(mariadb.host, mariadb.port, db_user, WRONG_PASSWORD)
            with pytest.raises(ConnectionLostError) as caught:
                wrong.query("SELECT 1")
            errors.append(caught.value)
            reprs.append(repr(wrong))
            djfs.config["database.password"] = WRONG_PASSWORD
            with pytest.raises(ConnectionLostError) as caught:
                djfs.conn(reset=True).query("SELECT 1")
            errors.append(caught.value)
            reprs += [repr(djfs.config), repr(djfs.conn())]
        finally:
            djfs.conn(reset=True)
            clear_store_cache()
    assert "Access denied" in str(errors[-1]) and db_user in str(errors[-1])   # useful, yet secret-free
    assert "djfs-no-such-bucket" in str(errors[0])
    formatter = logging.Formatter()
    logged = [caplog.text]
    for record in caplog.records:
        logged += [record.getMessage(), repr(record.args)]
        if record.exc_info:
            logged.append(formatter.formatException(record.exc_info))
    assert any(record.name.startswith("botocore") for record in caplog.records)  # DEBUG really was captured
    assert any(record.name.startswith("djfs") for record in caplog.records)
    for secret in SECRETS:
        for where, texts in (("log", logged), ("repr", reprs), ("error", [t for e in errors for t in texts_of(e)])):
            leaks = [text[:200] for text in texts if secret in text]
            assert not leaks, f"{secret!r} appears in a {where}: {leaks[:2]}"


def test_credentials_never_in_the_process_list(mariadb, s3_server, schema_name, db_user, tmp_path):
    """A separate process uses djfs (configured by a private JSON file) against the database and S3; while it
    runs, no command line, thread or process entry shown by ``ps`` holds the password or the secret."""
    bucket = s3_server.create_bucket(f"djfs-ps-{uuid.uuid4().hex[:12]}")
    config = tmp_path / "dj_local_conf.json"
    config.touch(0o600)
    config.write_text(json.dumps({
        "database.host": mariadb.host, "database.port": mariadb.port, "database.user": db_user,
        "database.password": DB_PASSWORD, "external-location": s3_server.location("ps"),
        "external-account": S3_ACCESS_KEY, "external-token": S3_SECRET, "cache-location": str(tmp_path / "c")}))
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import djfs
        schema = djfs.Schema(sys.argv[1])
        schema.set_external_storage(sys.argv[2])

        @schema
        class Movie(djfs.Manual):
            definition = "movie_id : int\\n---\\nframes : external"
        Movie.insert1({"movie_id": 1, "frames": np.arange(1000)})
        assert Movie.fetch1("frames").tolist() == list(range(1000))
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DJ_", "AWS_"))}
    environment["DJ_CONFIG"] = str(config)
    child = subprocess.Popen([sys.executable, "-c", script, schema_name, bucket], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
                             cwd=tmp_path)
    try:
        ready = {}
        reader = threading.Thread(target=lambda: ready.setdefault("line", child.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        assert ready.get("line", "").strip() == "ready", child.stderr.read() if child.poll() is not None else "hangs"
        listings = [subprocess.run(command, capture_output=True, text=True, check=True).stdout for command in (
            ["ps", "-eww", "-o", "pid,ppid,user,args"], ["ps", "-eLww", "-o", "pid,tid,comm,args"], ["ps", "auxww"])]
        assert str(child.pid) in listings[0]   # the child is in the listing
        process = psutil.Process(child.pid)
        listings += [" ".join(p.cmdline()) + " " + p.name() for p in [process, *process.children(recursive=True)]]
        listings += [thread_name.read_text() for thread_name in
                     pathlib.Path(f"/proc/{child.pid}/task").glob("*/comm")]
        for secret in SECRETS:
            assert not [text for text in listings if secret in text], f"{secret!r} in the process list"
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(30) == 0, child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# -- a user with SELECT on one schema only ------------------------------------------------------------------

READER = "djfs_reader"
READER_PASSWORD = "Reader-Pw-19af-SECRET"


def test_user_with_select_on_one_schema_sees_and_reads_only_that_schema(mariadb, connection, tmp_path):
    """Two schemas with external values; a user granted SELECT on the first only. Through the library it
    fetches the first schema's values, can't write them, doesn't see the second schema (not listed; a Schema
    of it is an error) and can't read its tables, not even through a subquery."""
    root = tmp_path / "store"
    root.mkdir()
    names = [f"djfs_test_{os.getpid()}_grant_{part}" for part in ("a", "b")]
    raw = admin(mariadb)
    try:
        with djfs.config.override(**{"external-location": f"file://{root}"}):
            clear_store_cache()
            for index, name in enumerate(names):
                schema = djfs.Schema(name, connection=connection)
                schema.set_external_storage(name)
                declare_movies(schema).insert1({"movie_id": 1, "frames": np.arange(10) + index})
            raw.cursor().execute(f"CREATE USER '{READER}'@'%%' IDENTIFIED BY %s", (READER_PASSWORD,))
            raw.cursor().execute(f"GRANT SELECT ON `{names[0]}`.* TO '{READER}'@'%'")
            reader = djfs.Connection(mariadb.host, mariadb.port, READER, READER_PASSWORD)
            mine = djfs.Schema(names[0], connection=reader, create_schema=False)
            mine.set_external_storage(names[0])
            movies = declare_movies(mine)
            assert movies.fetch1("frames").tolist() == list(range(10))
            listed = {row[0] for row in reader.query("SELECT schema_name FROM information_schema.schemata")}
            assert names[0] in listed and names[1] not in listed
            assert names[1] not in {row[0] for row in reader.query("SHOW DATABASES")}
            tables = {row[0] for row in reader.query("SELECT DISTINCT table_schema FROM information_schema.tables")}
            assert names[1] not in tables
            with pytest.raises(DjfsError, match="does not exist"):
                djfs.Schema(names[1], connection=reader, create_schema=False)
            with pytest.raises(QueryError, match="denied"):
                djfs.Schema(names[1], connection=reader)
            for table in ("movie", "~external"):
                with pytest.raises(QueryError, match="denied"):
                    reader.query(f"SELECT * FROM `{names[1]}`.`{table}`")
            with pytest.raises(QueryError, match="denied"):
                (movies & f"movie_id IN (SELECT movie_id FROM `{names[1]}`.`movie`)").fetch()
            with pytest.raises(DjfsError, match="denied"):
                movies.insert1({"movie_id": 2, "frames": np.arange(3)})
            with pytest.raises(DjfsError, match="denied"):
                (movies & {"movie_id": 1}).delete()
            assert len(movies) == 1
            reader.close()
            clear_store_cache()
    finally:
        raw.cursor().execute(f"DROP USER IF EXISTS '{READER}'@'%'")
        for name in names:
            raw.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        raw.close()
