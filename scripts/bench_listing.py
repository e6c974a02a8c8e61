#!/usr/bin/env python3
"""Speed of listings through the djfs mount against the physical limits measured in the same run (not a test).

Starts its own MariaDB, stores a table of 10,000 rows with one ``external`` value each on a file store (so 20,000
files: ``frames.npy`` and ``row.json`` per row) and a table of 100,000 rows at one key level, and prints, each the
median of a few repetitions on a fresh mount, with the SQL queries the daemon ran (``user.djfs.stats``) and its
resident memory:

1. ``ls -lR`` of the 10,000-row table, cold (fresh mount) and warm (right after);  goals <= 3 s and <= 1 s;
2. ``ls`` of the 100,000-row table (fresh mount);  goal: a few seconds;
3. the daemon's RSS growth over all of it;  goal: well under 100 MiB;

against the same SQL the mount runs (its pages and its change probe), sent directly with pymysql, ``ls -lR`` /
``ls`` of an equivalent real directory tree on local disk, and ``ls -lR`` of the same tree served from memory by a
Python FUSE file system with djfs's own readdirplus (the ceiling of FUSE through mfusepy on this machine).  As
``[info]``: the same tree served from memory through libfuse's low-level API with listings kept by the kernel
(``djfs.testing.memoryfs``: opendir answered ENOSYS), cold and warm, with the requests that reached Python.

Usage: python scripts/bench_listing.py [--repeat 3] [-o mount_option ...]  (``-o fuse_api=high``: the mount through
mfusepy's high-level API instead of libfuse 3's low-level one)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MiB = 1 << 20
ROWS = 10_000
ITEMS = 100_000
SCHEMA = "bench_listing"


def memory_main(mountpoint: str) -> None:
    """The ceiling of any Python FUSE file system here: the same tree (10,000 directories of two files) served
    from a dict by djfs's own ``FileSystem`` (readdirplus, no opendir, no xattrs, the kernel's timeouts of 60 s
    and listings whose entries the kernel holds handed to libfuse whole), no SQL, no cache."""
    import ctypes
    import errno

    from djfs.fs.libfuse import load_mfusepy
    mfusepy = load_mfusepy()
    from djfs.fs.callbacks import fill_stat
    from djfs.fs.operations import FileSystem
    from djfs.testing.memoryfs import DIRECTORY as directory
    from djfs.testing.memoryfs import table_tree

    tree = table_tree(ROWS)
    attributes = {f"{base}/{name}".replace("//", "/"): value for base, entries in tree.items()
                  for name, value in entries}
    attributes["/"] = directory
    given: dict[str, float] = {}

    class Memory(mfusepy.Operations):
        use_ns = True
        opendir = releasedir = None

        def readdir(self, path: str, fh: int) -> list:  # libfuse 2 only (FileSystem answers libfuse 3)
            return [".", "..", *(name for name, _ in tree[path])]

        def getattr(self, path: str, fh=None) -> dict:
            if path not in attributes:
                raise mfusepy.FuseOSError(errno.ENOENT)
            return attributes[path]

        def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
            raise mfusepy.FuseOSError(errno.EOPNOTSUPP)

        def directory(self, path: str, offset: int = 0, keep: bool = True) -> list:
            return [(".", None), ("..", None), *tree[path]]

        def entries_held(self, path: str) -> bool:  # as djfs: a listing's entries are trusted for 60 s
            return time.monotonic() - given.get(path, -1e9) < 58

        def entries_given(self, path: str) -> None:
            given[path] = time.monotonic()

        def fill_entry(self, entry, path: str, name: str, value) -> None:
            ctypes.memset(ctypes.byref(entry), 0, ctypes.sizeof(entry))
            fill_stat(entry, value)

        def entry_type(self, path: str, name: str, value) -> tuple[int, int]:
            return (value or directory)["st_mode"], 0

    FileSystem(Memory(), mountpoint, foreground=True, ro=True, fsname="memory", entry_timeout=60, attr_timeout=60)


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def drop_page_cache() -> bool:
    """Forget clean pages, dentries and inodes (root only): 'cold' local listings then read the disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3")
        return True
    except OSError:
        return False


class Bench:
    def __init__(self, root: Path, options: list[str]) -> None:
        self.root = root
        self.options = options

    def setup(self) -> None:
        import djfs
        from djfs.testing.mariadb import MariaDBServer
        from djfs.testing.tables import item_table

        print(f"starting MariaDB in {self.root} ...", flush=True)
        self.db = MariaDBServer(self.root / "mariadb").start()
        (self.root / "store").mkdir()
        settings = {"database.host": self.db.host, "database.port": self.db.port, "database.user": self.db.user,
                    "database.password": self.db.password, "external-location": f"file://{self.root / 'store'}",
                    "cache-location": str(self.root / "cache"), "progress": False}
        for key, value in settings.items():
            djfs.config[key] = value
        config_file = self.root / "config.json"
        config_file.write_text(json.dumps({key: value for key, value in settings.items()
                                           if not key.startswith("database.")}))
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("DJ_", "AWS_"))}
        self.env.update(DJ_HOST=self.db.host, DJ_PORT=str(self.db.port), DJ_USER=self.db.user,
                        DJ_PASS=self.db.password or "", DJ_CONFIG=str(config_file))
        self.connection = djfs.conn(reset=True)
        schema = djfs.Schema(SCHEMA, connection=self.connection)
        schema.set_external_storage("bench")

        @schema
        class Trial(djfs.Manual):
            definition = """
            trial : int
            ---
            frames : external
            """
        print(f"storing {ROWS} external values and {ITEMS} plain rows ...", flush=True)
        rng = np.random.default_rng(0)
        Trial.insert([{"trial": i, "frames": rng.random(16, dtype=np.float32)} for i in range(ROWS)])
        item_table(schema, ITEMS, factor=2)

    # -- the mount
    def mount(self) -> tuple[str, subprocess.Popen]:
        from bench_mount import wait_mounted
        mountpoint = tempfile.mkdtemp(prefix="mnt-", dir=self.root)
        options = ",".join([f"schemas={SCHEMA}", *self.options])
        process = subprocess.Popen([sys.executable, "-m", "djfs.cli", "mount", "-f", mountpoint, "-o", options,
                                    "--log-file", str(self.root / "daemon.log")], env=self.env)
        wait_mounted(mountpoint, process)
        return mountpoint, process

    @staticmethod
    def stats(mountpoint: str) -> dict:
        return json.loads(os.getxattr(mountpoint, "user.djfs.stats"))

    @staticmethod
    def calls(before: dict, after: dict) -> dict[str, int]:
        """Calls from libfuse into the daemon between two stats, per callback (``getattr``, ``readdir`` ...)."""
        return {key[6:].replace("_fuse_3", "").replace("_fuse_2", ""): after[key] - before.get(key, 0)
                for key in after if key.startswith("calls.") and after[key] - before.get(key, 0)}

    def through_mount(self) -> dict[str, float]:
        from bench_mount import unmount
        mountpoint, process = self.mount()
        try:
            trials, items = (os.path.join(mountpoint, SCHEMA, name) for name in ("Trial", "Item"))
            os.listdir(os.path.join(mountpoint, SCHEMA))  # the catalog: not what is measured
            start_rss = rss(process.pid)
            s0 = self.stats(mountpoint)
            cold = timed(["ls", "-lR", trials])
            s1 = self.stats(mountpoint)
            warm = timed(["ls", "-lR", trials])
            s2 = self.stats(mountpoint)
            flat = timed(["ls", items])
            s3 = self.stats(mountpoint)
            lines = subprocess.run(["ls", "-lR", trials], capture_output=True, text=True, check=True).stdout
            assert sum(line.startswith("-") for line in lines.splitlines()) == 2 * ROWS
            assert len(os.listdir(items)) == ITEMS
            queries = [stats.get("sql_queries", 0) for stats in (s0, s1, s2, s3)]
            return {"cold": cold, "warm": warm, "flat": flat, "cold_queries": queries[1] - queries[0],
                    "warm_queries": queries[2] - queries[1], "flat_queries": queries[3] - queries[2],
                    "rss_growth": rss(process.pid) - start_rss, "cold_calls": self.calls(s0, s1),
                    "warm_calls": self.calls(s1, s2), "flat_calls": self.calls(s2, s3),
                    "api": f"{s0['libfuse'].split(' (')[0]}, {s0.get('fuse_api', 'high')}-level API"}
        finally:
            unmount(mountpoint, process)

    # -- the limits
    def sql_directly(self) -> dict[str, float]:
        """The pages and probes the mount runs for the two tables, sent with pymysql on one connection."""
        import pymysql

        from djfs.fs.tree import Table, probe_sql
        from djfs.relational.heading import Heading
        connection = pymysql.connect(host=self.db.host, port=self.db.port, user=self.db.user,
                                     password=self.db.password or "", autocommit=True)
        result = {}
        try:
            for label, name, key in (("trials", "trial", "trial"), ("items", "#item", "item")):
                table = Table(SCHEMA, name, Heading.load(self.connection, SCHEMA, name))
                columns, joins, layout = table.row_select
                page = (f"SELECT {', '.join(columns)} FROM {table.sql_name} AS t {' '.join(joins)} "
                        f"{{where}} ORDER BY t.`{key}` LIMIT 10001")
                start = time.perf_counter()
                with connection.cursor() as cursor:
                    cursor.execute(probe_sql(table))
                    cursor.fetchall()
                    probe = time.perf_counter() - start
                    last = None
                    while True:
                        cursor.execute(page.format(where="" if last is None else f"WHERE t.`{key}` > %s"),
                                       () if last is None else (last,))
                        rows = cursor.fetchall()
                        if len(rows) <= 10_000:
                            break
                        last = rows[9_999][0]
                result[label] = time.perf_counter() - start
                result[label + "_probe"] = probe
        finally:
            connection.close()
        return result

    def in_memory(self) -> dict[str, float]:
        """``ls -lR`` through a Python FUSE file system serving the same tree from memory (``memory_main``)."""
        from bench_mount import unmount, wait_mounted
        mountpoint = tempfile.mkdtemp(prefix="memory-", dir=self.root)
        process = subprocess.Popen([sys.executable, __file__, "--memory", mountpoint])
        wait_mounted(mountpoint, process)
        try:
            cold = timed(["ls", "-lR", os.path.join(mountpoint, "Trial")])
            warm = timed(["ls", "-lR", os.path.join(mountpoint, "Trial")])
            return {"cold": cold, "warm": warm}
        finally:
            unmount(mountpoint, process)

    def low_level_memory(self) -> dict:
        """``ls -lR`` through the same tree served from memory by a Python FUSE on libfuse's low-level API whose
        opendir answers ENOSYS, so that the kernel keeps listings (``djfs.testing.memoryfs``), with the
        requests that reached Python during each run."""
        from bench_mount import unmount, wait_mounted
        mountpoint = tempfile.mkdtemp(prefix="lowlevel-", dir=self.root)
        process = subprocess.Popen([sys.executable, "-m", "djfs.testing.memoryfs", mountpoint, "--rows", str(ROWS),
                                    "--timeout", "60"])
        wait_mounted(mountpoint, process)
        try:
            trials = os.path.join(mountpoint, "Trial")
            c0 = self.memory_calls(mountpoint)
            cold = timed(["ls", "-lR", trials])
            c1 = self.memory_calls(mountpoint)
            warm = timed(["ls", "-lR", trials])
            c2 = self.memory_calls(mountpoint)
            lines = subprocess.run(["ls", "-lR", trials], capture_output=True, text=True, check=True).stdout
            assert sum(line.startswith("-") for line in lines.splitlines()) == 2 * ROWS
            return {"cold": cold, "warm": warm, "cold_calls": self.calls(c0, c1), "warm_calls": self.calls(c1, c2)}
        finally:
            unmount(mountpoint, process)

    @staticmethod
    def memory_calls(mountpoint: str) -> dict[str, int]:
        """The requests that reached ``memoryfs`` so far (the reading of them, a getxattr, left out)."""
        from djfs.testing.memoryfs import CALLS_XATTR
        calls = json.loads(os.getxattr(mountpoint, CALLS_XATTR))
        return {f"calls.{name}": count for name, count in calls.items() if name != "getxattr"}

    def local_tree(self) -> Path:
        """The same layout on local disk: 10,000 directories of two files of the mount's sizes, and 100,000
        empty directories."""
        local = self.root / "local"
        if not local.exists():
            trials = local / "Trial"
            for i in range(ROWS):
                directory = trials / f"trial={i}"
                directory.mkdir(parents=True)
                (directory / "frames.npy").write_bytes(b"\0" * 192)
                (directory / "row.json").write_bytes(b"\0" * 20)
            for i in range(ITEMS):
                (local / "Item" / f"item={i}").mkdir(parents=True)
        return local

    def local(self) -> dict[str, float]:
        local = self.local_tree()
        dropped = drop_page_cache()
        cold = timed(["ls", "-lR", str(local / "Trial")])
        warm = timed(["ls", "-lR", str(local / "Trial")])
        drop_page_cache()
        flat = timed(["ls", str(local / "Item")])
        return {"cold": cold, "warm": warm, "flat": flat, "dropped": dropped}

    def close(self) -> None:
        if getattr(self, "db", None) is not None:
            self.db.stop()


def medians(runs: list[dict]) -> dict:
    """Medians of the numbers; of the call counts (dicts) and descriptions, the last run's."""
    return {key: runs[-1][key] if isinstance(runs[0][key], (dict, str)) else
            statistics.median(run[key] for run in runs)
            for key in runs[0]}


def described(calls: dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in sorted(calls.items(), key=lambda item: -item[1])) or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per measurement (median)")
    parser.add_argument("-o", dest="options", action="append", default=[], help="extra djfs mount options")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        memory_main(args.memory)
        return 0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    root = Path(tempfile.mkdtemp(prefix="djfs-bench-listing-"))
    bench = Bench(root, args.options)
    try:
        bench.setup()
        mounts, sqls, locals_, memories, low_levels = [], [], [], [], []
        for _ in range(args.repeat):
            mounts.append(bench.through_mount())
            sqls.append(bench.sql_directly())
            locals_.append(bench.local())
            memories.append(bench.in_memory())
            low_levels.append(bench.low_level_memory())
        mount, sql, local, memory = medians(mounts), medians(sqls), medians(locals_), medians(memories)
        low_level = medians(low_levels)
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    def line(name: str, seconds: float, goal: str, verdict: bool, detail: str) -> None:
        print(f"  {name:<38} {seconds:7.2f} s  (goal {goal:>7}) [{'ok' if verdict else 'MISSED'}]  {detail}")
    print()
    print(f"medians of {args.repeat} runs, each on a fresh mount ({mount['api']}); 'local' = the same tree on "
          "local disk" + ("" if local["dropped"] else " (page cache not dropped: not root)"))
    line(f"ls -lR {ROWS} rows, cold", mount["cold"], "<= 3 s", mount["cold"] <= 3,
         f"{mount['cold_queries']:.0f} SQL queries; the same SQL directly {sql['trials']:.2f} s; "
         f"local disk {local['cold']:.2f} s; Python FUSE from memory {memory['cold']:.2f} s")
    line(f"ls -lR {ROWS} rows, warm", mount["warm"], "<= 1 s", mount["warm"] <= 1,
         f"{mount['warm_queries']:.0f} SQL queries (probe {sql['trials_probe'] * 1000:.1f} ms); "
         f"local disk {local['warm']:.2f} s; Python FUSE from memory {memory['warm']:.2f} s")
    line(f"ls {ITEMS} rows", mount["flat"], "<= 5 s", mount["flat"] <= 5,
         f"{mount['flat_queries']:.0f} SQL queries; the same SQL directly {sql['items']:.2f} s "
         f"(probe {sql['items_probe'] * 1000:.1f} ms); local disk {local['flat']:.2f} s")
    for label in ("cold", "warm", "flat"):
        print(f"  calls into the daemon, {label:<27} {described(mount[label + '_calls'])}")
    growth = mount["rss_growth"] / MiB
    print(f"  {'daemon RSS growth over all of it':<38} {growth:7.1f} MiB (goal < 100 MiB) "
          f"[{'ok' if growth < 100 else 'MISSED'}]")
    print(f"  [info] ceiling: low-level Python FUSE from memory, kernel-kept listings: cold {low_level['cold']:.2f} s, "
          f"warm {low_level['warm']:.2f} s (high-level: cold {memory['cold']:.2f} s, warm {memory['warm']:.2f} s)")
    for label in ("cold", "warm"):
        print(f"  [info] requests reaching Python in it, {label:<13} {described(low_level[label + '_calls'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
