"""Listings through a real mount: paging past a page, 100,000 rows at one level, readdirplus, and freshness.

Every row change here is made by another connection (the test process's own), as a colleague's pipeline would.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest

import djfs
from djfs import blob
from djfs.fs import paths
from djfs.testing.tables import item_table
from fixtures_fuse import errno_of, module_schema, quiet_windows, wait_for

FAST = ["listing_timeout=0.3", "entry_timeout=0.2", "attr_timeout=0.2", "negative_timeout=0"]
SUBJECTS = [f"s{index:02d}" for index in range(23)] + ["a/b", "ü z", "%41"]
ROWS = 100_000


@pytest.fixture(scope="module")
def lab(mariadb, tmp_path_factory):
    """Two tables in MySQL only: one with two key levels and files per row, one with 100,000 rows."""
    with module_schema(mariadb, "listing", {"cache-location": str(tmp_path_factory.mktemp("listing") / "cache")}
                       ) as lab:
        schema, name, connection = lab.schema, lab.name, lab.connection

        @schema
        class Session(djfs.Manual):
            definition = """
            subject : varchar(32)
            session : int
            ---
            note = "" : varchar(64)
            trace = null : longblob
            """

        Session.insert([dict(subject=subject, session=number, note=f"{subject}/{number}",
                             trace=np.arange(number + 1, dtype=np.int32))
                        for subject in SUBJECTS for number in range(7)])
        # one statement for 100,000 rows: the test stays fast
        Item = item_table(schema, ROWS, factor=3)
        yield SimpleNamespace(name=name, Session=Session, Item=Item, connection=connection, settings=lab.settings)


def subject_dir(lab, subject: str) -> str:
    return paths.component(lab.Session.heading["subject"], subject)


def expected_tree(lab) -> dict[str, list[str]]:
    with djfs.config.override(**lab.settings):
        keys = lab.Session.fetch("subject", "session", as_dict=True)
    tree: dict[str, list[str]] = {}
    for key in keys:
        tree.setdefault(subject_dir(lab, key["subject"]), []).append(f"session={key['session']}")
    return {subject: sorted(sessions) for subject, sessions in tree.items()}


def test_every_level_pages_past_a_tiny_page_size(lab, mounts):
    """page_size=4: every level takes several pages (this gave EIO from the second page on before the fix)."""
    mount = mounts.mount({}, FAST + [f"schemas={lab.name}", "page_size=4"])
    table = mount.path(lab.name, "Session")
    expected = expected_tree(lab)
    assert sorted(os.listdir(table)) == sorted(expected)
    for subject, sessions in expected.items():
        assert sorted(os.listdir(table / subject)) == sessions
        assert sorted(os.listdir(table / subject / "session=6")) == ["row.json", "trace.npy"]
    document = json.loads((table / subject_dir(lab, "a/b") / "session=3" / "row.json").read_bytes())
    assert document == {"subject": "a/b", "session": 3, "note": "a/b/3"}
    assert np.load(table / subject_dir(lab, "ü z") / "session=5" / "trace.npy").tolist() == list(range(6))


def ls_recursive(path) -> list[str]:
    return subprocess.run(["ls", "-lR", str(path)], capture_output=True, text=True, check=True).stdout.splitlines()


def calls(stats: dict, *names: str) -> int:
    """The FUSE requests of these kinds the daemon counted (``calls.<name>``)."""
    return sum(stats.get(f"calls.{name}", 0) for name in names)


#: the requests of a listing and of a stat, by API (mfusepy's callback names; the low-level requests)
LISTING_CALLS = {"high": ("readdir_fuse_3",), "low": ("readdirplus", "readdir", "opendir")}
STAT_CALLS = {"high": ("getattr_fuse_3",), "low": ("getattr", "lookup")}


@pytest.mark.parametrize("api", ["low", "high"])
def test_ls_lR_costs_queries_per_page_not_per_row_and_no_getattr_per_entry(lab, mounts, api):
    mount = mounts.mount({}, ["listing_timeout=30", "entry_timeout=30", "attr_timeout=30",
                              f"schemas={lab.name}", "page_size=50", f"fuse_api={api}"])
    assert mount.stats().get("fuse_api", "high") == api
    table = mount.path(lab.name, "Session")
    os.listdir(mount.path(lab.name))
    before = mount.stats()
    lines = ls_recursive(table)
    after = mount.stats()
    files = [line for line in lines if line.startswith("-")]
    rows = sum(len(sessions) for sessions in expected_tree(lab).values())
    assert len(files) == 2 * rows
    assert all(line.split()[4] != "0" for line in files)  # sizes: row.json and trace.npy are never empty
    queries = after["sql_queries"] - before["sql_queries"]
    pages = 1 + sum(-(-(7 + 1) // 50) for _ in SUBJECTS)  # the subjects' page, then one per subject
    assert queries <= pages + 3, (queries, pages)  # + the table's probe (and its heading)
    # readdirplus: the listing gave the kernel every entry's attributes; ls did not stat them one by one
    getattrs = after.get("getattrs", 0) - before.get("getattrs", 0)
    assert getattrs < rows // 4, getattrs
    # every row's directory was made from its subject's listing, no path resolved (Tree._list_row_from_parent)
    assert after["rows_from_listings"] - before["rows_from_listings"] == rows
    directories = 1 + len(SUBJECTS) + rows
    first_readdirs = calls(after, *LISTING_CALLS[api]) - calls(before, *LISTING_CALLS[api])
    assert first_readdirs >= 2 * directories  # with offsets: each directory's end is asked for by a call
    if api == "high":
        # listed again while unchanged: only the probe may reach the database, and the rows come from memory;
        # the kernel holds every entry, so each listing goes to libfuse whole and libfuse answers its end itself
        before = mount.stats()
        assert ls_recursive(table) == lines
        after = mount.stats()
        assert after["sql_queries"] - before["sql_queries"] <= 1
        assert calls(after, *LISTING_CALLS[api]) - calls(before, *LISTING_CALLS[api]) == directories
        assert calls(after, *STAT_CALLS[api]) == calls(before, *STAT_CALLS[api])
        return
    # the low-level API: the kernel keeps every listing, and ls -lR again reaches the daemon not at all (no
    # request, no SQL)
    windows = quiet_windows(mount, lambda: ls_recursive(table) == lines or pytest.fail("another listing"))
    assert windows[-1] == {}, windows


def test_one_hundred_thousand_rows_at_one_level(lab, mounts):
    mount = mounts.mount({}, FAST + [f"schemas={lab.name}"])
    table = mount.path(lab.name, "Item")
    os.listdir(mount.path(lab.name))
    before = mount.stats()
    names = os.listdir(table)
    after = mount.stats()
    assert len(names) == ROWS and len(set(names)) == ROWS
    assert set(names) == {f"item={index}" for index in range(ROWS)}
    queries = after["sql_queries"] - before["sql_queries"]
    assert queries <= ROWS // 10_000 + 1 + 3, queries  # pages (+1 to learn the last one ended) + probe, heading
    row = table / f"item={ROWS - 1}" / "row.json"
    assert json.loads(row.read_bytes()) == {"item": ROWS - 1, "value": 3 * (ROWS - 1)}
    assert os.stat(table / "item=12345").st_nlink == 2


def test_changes_made_elsewhere_show_up_and_unchanged_tables_are_not_listed_again(lab, mounts):
    mount = mounts.mount({}, FAST + [f"schemas={lab.name}"])
    table = mount.path(lab.name, "Session")
    subject = table / subject_dir(lab, "s05")
    row = subject / "session=2" / "row.json"
    assert json.loads(row.read_bytes())["note"] == "s05/2"
    sessions = sorted(os.listdir(subject))
    time.sleep(0.5)
    before = mount.stats()
    assert sorted(os.listdir(subject)) == sessions
    after = mount.stats()
    assert after["sql_queries"] - before["sql_queries"] <= 1  # the probe at most: the listing was reused

    other = lab.connection  # another connection than the daemon's
    with djfs.config.override(**lab.settings):
        other.query(f"INSERT INTO `{lab.name}`.`session` (subject, session, note) VALUES (%s, %s, %s)",
                    ("s05", 99, "late"))
    assert wait_for(lambda: "session=99" in os.listdir(subject), timeout=5)
    assert json.loads((subject / "session=99" / "row.json").read_bytes())["note"] == "late"

    with djfs.config.override(**lab.settings):
        other.query(f"UPDATE `{lab.name}`.`session` SET note = %s WHERE subject = %s AND session = %s",
                    ("edited", "s05", 2))
    assert wait_for(lambda: json.loads(row.read_bytes())["note"] == "edited", timeout=5)

    trace = subject / "session=3" / "trace.npy"
    size = trace.stat().st_size
    with djfs.config.override(**lab.settings):  # only a blob kept in the table changes: UPDATE_TIME tells
        other.query(f"UPDATE `{lab.name}`.`session` SET trace = %s WHERE subject = %s AND session = %s",
                    (blob.pack(np.arange(100, dtype=np.int32)), "s05", 3))
    assert wait_for(lambda: trace.stat().st_size != size, timeout=5)
    assert np.load(trace).tolist() == list(range(100))

    with djfs.config.override(**lab.settings):
        other.query(f"DELETE FROM `{lab.name}`.`session` WHERE subject = %s AND session IN (%s, %s)",
                    ("s05", 99, 4))
    assert wait_for(lambda: sorted(os.listdir(subject)) == [s for s in sessions if s != "session=4"], timeout=5)
    assert wait_for(lambda: not (subject / "session=4").exists(), timeout=5)
    assert errno_of(os.listdir, subject / "session=4") == errno.ENOENT


def test_no_extended_attributes_but_the_stats(lab, mounts):
    """SELinux labels and ACLs are 'not supported' (ls -l then stops asking per entry), other names 'not set'."""
    mount = mounts.mount({}, FAST + [f"schemas={lab.name}"])
    row = mount.path(lab.name, "Session", subject_dir(lab, "s01"), "session=1")
    for path in (row, row / "row.json"):
        for name in ("security.selinux", "system.posix_acl_access"):
            assert errno_of(os.getxattr, path, name) == errno.EOPNOTSUPP
        assert errno_of(os.getxattr, path, "user.djfs.stats") == errno.ENODATA
    assert "sql_queries" in mount.stats()


def test_the_change_probe_sees_every_change_the_mount_shows_and_nothing_else(db_config, connection, schema_name):
    """Against the real server: inserts, deletes, updates of each kind of column change the token; reads and
    changes of bytes the mount reads afresh at open (a blob's tail) don't."""
    from djfs.fs.tree import Database, Table, Tree
    from djfs.relational.heading import Heading
    connection.query(f"CREATE DATABASE `{schema_name}`")
    connection.query(f"CREATE TABLE `{schema_name}`.`t` (k int NOT NULL, a varchar(8) COLLATE utf8mb4_bin, "
                     f"b varchar(8) COLLATE utf8mb4_general_ci, doc longtext, data longblob, PRIMARY KEY (k))")
    connection.query(f"INSERT INTO `{schema_name}`.`t` VALUES (1, NULL, 'x', '{{}}', %s), (2, 'p', 'q', NULL, NULL)",
                     (b"head" + b"\0" * 4000 + b"tail",))
    database = Database(djfs.config)
    try:
        tree = Tree(database)
        table = Table(schema_name, "t", Heading.load(connection, schema_name, "t"))
        token = tree.probe(table)[0]
        assert tree.probe(table)[0] == token  # unchanged: the same token

        def changed(sql: str, args=()) -> bool:
            nonlocal token
            connection.query(sql.format(t=f"`{schema_name}`.`t`"), args)
            before, token = token, tree.probe(table)[0]
            return token != before
        assert changed("INSERT INTO {t} (k) VALUES (3)")
        assert changed("DELETE FROM {t} WHERE k = 3")
        assert changed("UPDATE {t} SET a = 'x', b = NULL WHERE k = 1")  # the same text, another column
        assert changed("UPDATE {t} SET doc = '[1]' WHERE k = 1")
        assert changed("UPDATE {t} SET data = %s WHERE k = 1", (b"HEAD" + b"\0" * 4000 + b"tail",))  # a header
        assert changed("UPDATE {t} SET data = %s WHERE k = 1", (b"HEAD" + b"\0" * 4001 + b"tail",))  # a size
        assert changed("UPDATE {t} SET k = 5 WHERE k = 2")
        assert not changed("UPDATE {t} SET data = %s WHERE k = 1", (b"HEAD" + b"\0" * 4001 + b"TAIL",))
        assert not changed("SELECT * FROM {t}")
    finally:
        database.close()


def size_of(path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("libfuse", ["3", "2"])
def test_changes_made_elsewhere_reach_a_kernel_that_keeps_entries_for_long(lab, mounts, libfuse):
    """Default kernel timeouts (libfuse 3: 60 s, told to forget what changed; libfuse 2: 1 s): stat-ed and listed
    paths whose rows change elsewhere show the new size, vanish, or appear within about listing_timeout; with
    libfuse 3 the kernel meanwhile answers repeated stats itself."""
    mount = mounts.mount({}, ["listing_timeout=0.3", f"schemas={lab.name}", f"libfuse={libfuse}"])
    subject_name = "s07" if libfuse == "3" else "s08"
    subject = mount.path(lab.name, "Session", subject_dir(lab, subject_name))
    os.listdir(mount.path(lab.name))
    ls_recursive(subject)  # the kernel holds the subject's rows and their files
    row, gone, trace = subject / "session=2" / "row.json", subject / "session=5", subject / "session=3" / "trace.npy"
    sizes = {path: os.stat(path).st_size for path in (row, gone / "row.json", trace)}
    if libfuse == "3":  # the kernel keeps what it was given past the old 1 s timeouts: no call for a stat
        time.sleep(1.5)
        before = mount.stats()
        assert {path: os.stat(path).st_size for path in sizes} == sizes
        after = mount.stats()
        assert calls(after, *STAT_CALLS["high"], *STAT_CALLS["low"]) == \
            calls(before, *STAT_CALLS["high"], *STAT_CALLS["low"])

    other = lab.connection
    with djfs.config.override(**lab.settings):
        other.query(f"UPDATE `{lab.name}`.`session` SET note = %s WHERE subject = %s AND session = %s",
                    ("a much longer note than before", subject_name, 2))
        other.query(f"UPDATE `{lab.name}`.`session` SET trace = %s WHERE subject = %s AND session = %s",
                    (blob.pack(np.arange(50, dtype=np.int32)), subject_name, 3))
        other.query(f"DELETE FROM `{lab.name}`.`session` WHERE subject = %s AND session = %s", (subject_name, 5))
        other.query(f"INSERT INTO `{lab.name}`.`session` (subject, session, note) VALUES (%s, %s, %s)",
                    (subject_name, 70, "new"))
        other.query(f"CREATE TABLE `{lab.name}`.`extra_{libfuse}` (k int NOT NULL, PRIMARY KEY (k))")
    longer = sizes[row] + len("a much longer note than before") - len("s07/2")
    assert wait_for(lambda: size_of(row) == longer, timeout=10)
    assert json.loads(row.read_bytes())["note"] == "a much longer note than before"
    assert wait_for(lambda: size_of(trace) != sizes[trace], timeout=10)
    assert np.load(trace).tolist() == list(range(50))
    assert wait_for(lambda: size_of(gone / "row.json") is None and size_of(gone) is None, timeout=10)
    assert errno_of(os.listdir, gone) == errno.ENOENT
    assert "session=5" not in os.listdir(subject)
    assert wait_for(lambda: size_of(subject / "session=70" / "row.json") is not None, timeout=10)
    assert "session=70" in os.listdir(subject)
    assert wait_for(lambda: f"Extra{libfuse}" in os.listdir(mount.path(lab.name)), timeout=10)
    if libfuse == "3":
        assert mount.stats()["invalidated_paths"] > 0


def small_table(connection, schema_name: str, rows: int) -> None:
    """A new schema with one table ``t`` (k, note, data): rows k = 1, 2, ... noted 'a', 'b', ...; only k = 3 holds
    a blob (three int64)."""
    connection.query(f"CREATE DATABASE `{schema_name}`")
    connection.query(f"CREATE TABLE `{schema_name}`.`t` (k int NOT NULL, note varchar(32), data longblob, "
                     f"PRIMARY KEY (k))")
    for k in range(1, rows + 1):
        connection.query(f"INSERT INTO `{schema_name}`.`t` VALUES (%s, %s, %s)",
                         (k, "abcdefgh"[k - 1], blob.pack(np.arange(3)) if k == 3 else None))


def test_the_watcher_has_the_kernel_forget_only_rows_that_changed(db_config, connection, schema_name):
    """Against the real server, without FUSE: what a listing handed out is compared with the table's rows once
    they changed; only the rows that vanished or changed (their directories and files) and the table's directory
    are to be forgotten, unchanged rows are not; a dropped table is forgotten whole, once."""
    from djfs.fs.tree import Database, Tree
    from djfs.fs.watch import Holdings, Watcher
    small_table(connection, schema_name, 4)
    database = Database(djfs.config)
    forgotten: list[str] = []
    try:
        holdings = Holdings()
        tree = Tree(database, schemas=[schema_name], listing_timeout=0.05, holdings=holdings)
        watcher = Watcher(tree, holdings, lambda path: forgotten.append(path) or 0, interval=0.05, hold=60,
                          catalog_interval=60)

        def rounds_until(done) -> bool:
            return wait_for(lambda: watcher.round() or done(), timeout=10)
        base = f"/{schema_name}/T"
        assert [name for name, _ in tree.list(base)] == ["k=1", "k=2", "k=3", "k=4"]
        assert sorted(name for name, _ in tree.list(f"{base}/k=3")) == ["data.npy", "row.json"]
        time.sleep(0.1)
        watcher.round()
        assert forgotten == []  # unchanged: nothing to forget

        connection.query(f"UPDATE `{schema_name}`.`t` SET note = 'changed' WHERE k = 2")
        connection.query(f"DELETE FROM `{schema_name}`.`t` WHERE k = 3")
        connection.query(f"INSERT INTO `{schema_name}`.`t` VALUES (9, 'new', NULL)")
        expected = {base, f"{base}/k=2", f"{base}/k=2/row.json", f"{base}/k=3", f"{base}/k=3/row.json",
                    f"{base}/k=3/data.npy"}
        assert rounds_until(lambda: set(forgotten) >= expected)  # once the probe (0.05 s or more) asks again
        assert set(forgotten) == expected
        forgotten.clear()
        time.sleep(0.1)
        watcher.round()
        assert forgotten == []  # synchronised: the same change is not forgotten twice

        connection.query(f"DROP TABLE `{schema_name}`.`t`")
        assert rounds_until(lambda: {base, f"{base}/k=1", f"{base}/k=2/row.json", f"{base}/k=9"} <= set(forgotten))
        forgotten.clear()
        watcher.round()
        assert forgotten == []

        # two key levels: a first-level directory whose rows all go is forgotten with its rows and their files
        connection.query(f"CREATE TABLE `{schema_name}`.`u` (a int NOT NULL, b int NOT NULL, PRIMARY KEY (a, b))")
        connection.query(f"INSERT INTO `{schema_name}`.`u` VALUES (1, 1), (1, 2), (2, 1)")
        base = f"/{schema_name}/U"
        assert [name for name, _ in tree.list(f"/{schema_name}")] == ["U"]  # listing the schema refreshes it
        tree.list(base)
        for directory in ("a=1", "a=2"):
            for row, _ in tree.list(f"{base}/{directory}"):
                tree.list(f"{base}/{directory}/{row}")
        time.sleep(0.1)
        watcher.round()
        assert forgotten == []
        connection.query(f"DELETE FROM `{schema_name}`.`u` WHERE a = 1")
        expected = {base, f"{base}/a=1", f"{base}/a=1/b=1", f"{base}/a=1/b=1/row.json", f"{base}/a=1/b=2",
                    f"{base}/a=1/b=2/row.json"}
        assert rounds_until(lambda: set(forgotten) >= expected)
        assert set(forgotten) == expected
    finally:
        database.close()


def test_the_watcher_has_the_kernel_forget_missing_names_once_they_may_exist(db_config, connection, schema_name,
                                                                            monkeypatch):
    """Against the real server, without FUSE: names a lookup did not find are recorded (where the kernel keeps
    them as missing) and given to be forgotten once their table's change token moves, or their table appears;
    not before, and never twice; a record past negative_timeout goes quietly; beyond MISSING_MAX the oldest
    is forgotten at once rather than kept."""
    from djfs.fs import watch
    from djfs.fs.tree import Database, NotFound, Tree
    small_table(connection, schema_name, 2)
    database = Database(djfs.config)
    forgotten: list[str] = []
    try:
        holdings = watch.Holdings(negative_timeout=60)
        tree = Tree(database, schemas=[schema_name], listing_timeout=0.05, holdings=holdings)
        watcher = watch.Watcher(tree, holdings, lambda path: forgotten.append(path) or 0, interval=0.05,
                                hold=60, catalog_interval=60)
        base = f"/{schema_name}/T"
        for path in (f"{base}/k=7", f"{base}/k=8", f"/{schema_name}/U", f"{base}/k=1/nothing.npy"):
            with pytest.raises(NotFound):
                tree.lookup(path)
        time.sleep(0.1)
        watcher.round()
        assert forgotten == []  # nothing changed
        connection.query(f"INSERT INTO `{schema_name}`.`t` VALUES (7, 'new', NULL)")
        expected = {f"{base}/k=7", f"{base}/k=8", f"{base}/k=1/nothing.npy"}
        assert wait_for(lambda: watcher.round() or set(forgotten) >= expected, timeout=10)
        assert set(forgotten) == expected and all(isinstance(path, watch.Gone) for path in forgotten)
        forgotten.clear()
        connection.query(f"CREATE TABLE `{schema_name}`.`u` (a int NOT NULL, PRIMARY KEY (a))")
        assert wait_for(lambda: watcher.round() or forgotten, timeout=10) == [f"/{schema_name}/U"]
        forgotten.clear()
        time.sleep(0.1)
        watcher.round()
        assert forgotten == [] and holdings.missing == {}

        monkeypatch.setattr(watch, "MISSING_MAX", 2)
        table = tree.table(schema_name, "t", stale_ok=False)
        for k in (20, 21, 22):
            holdings.absent(f"{base}/k={k}", table, tree.version(table, stale_ok=True))
        assert list(holdings.missing) == [f"{base}/k=21", f"{base}/k=22"]
        holdings.missing[f"{base}/k=22"] = (time.monotonic() - 1, *holdings.missing[f"{base}/k=22"][1:])
        watcher.round()
        assert forgotten == [f"{base}/k=20"]  # the evicted one; the table is unchanged, k=22 expired
        assert list(holdings.missing) == [f"{base}/k=21"]
    finally:
        database.close()


def test_row_directories_are_listed_from_their_tables_listing_and_stay_current(db_config, connection, schema_name):
    """Against the real server, without FUSE: once a table is listed, its rows' directories are made from that
    listing's records (counted in ``rows_from_listings``), no path resolved, no query; a row changed or deleted
    afterwards is listed changed or gone once the table's probe sees it (``listing_timeout``); an altered table
    (another heading) is listed with its new columns once its heading is asked again (``heading_timeout``)."""
    from djfs.fs.tree import Database, NotFound, Tree
    small_table(connection, schema_name, 5)
    database = Database(djfs.config)
    try:
        tree = Tree(database, schemas=[schema_name], listing_timeout=0.05, heading_timeout=3, catalog_timeout=60)
        base = f"/{schema_name}/T"

        def files(k: int) -> dict:
            return {name: spec for name, spec in tree.list(f"{base}/k={k}")}

        def note(k: int) -> str:
            return json.loads(files(k)["row.json"].content)["note"]
        assert [name for name, _ in tree.list(base)] == [f"k={k}" for k in range(1, 6)]
        queries = database.queries
        assert [sorted(files(k)) for k in range(1, 5)] == [["row.json"]] * 2 + [["data.npy", "row.json"]] + \
            [["row.json"]]
        assert tree.rows_from_listings == 4
        assert database.queries - queries <= 1  # the table's probe, if it was due: no query per row
        assert files(3)["data.npy"].size == 128 + 3 * 8  # the .npy header, then three int64
        assert note(4) == "d"
        # a stat of a file after its directory was listed (libfuse 2's ls -l) takes the row the listing made
        assert tree.lookup(f"{base}/k=3/data.npy").file is files(3)["data.npy"]

        connection.query(f"UPDATE `{schema_name}`.`t` SET note = 'changed' WHERE k = 2")
        connection.query(f"DELETE FROM `{schema_name}`.`t` WHERE k = 3")
        assert wait_for(lambda: note(2) == "changed", timeout=2)  # the probe's time (well before the heading's)
        with pytest.raises(NotFound):
            tree.list(f"{base}/k=3")
        # listed again at the new token: its rows are made from the new listing again
        assert [name for name, _ in tree.list(base)] == ["k=1", "k=2", "k=4", "k=5"]
        made = tree.rows_from_listings
        assert note(1) == "a" and note(4) == "d"
        assert tree.rows_from_listings == made + 2

        connection.query(f"ALTER TABLE `{schema_name}`.`t` ADD COLUMN extra int NOT NULL DEFAULT 7")
        assert wait_for(lambda: json.loads(files(5)["row.json"].content).get("extra") == 7, timeout=10)
        assert json.loads(files(1)["row.json"].content)["extra"] == 7  # listed before the change: not kept
    finally:
        database.close()
