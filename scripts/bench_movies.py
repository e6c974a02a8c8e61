#!/usr/bin/env python3
"""Benchmark of movies: inserting a (T, Y, X) C-order movie, and reading 10 frames of it through the mount.

1. Insert of a 1 GiB float32 (T, Y, X) C-order movie into a file store, as ``npy@`` (goal >= 0.8x) and as
   ``external`` (DataJoint's column-major blob; goal >= 0.5x), against a raw write+fsync of the same bytes to
   the same file system, measured in the same run (interleaved, medians).
2. 10 frames from the middle of that movie stored as ``npy@`` on S3 (moto), read through a fresh mount with a
   cold cache: by ``np.load(mmap_mode='r')`` of ``movie.npy`` and by tifffile from ``movie.tif``; the bytes the
   daemon fetched from the store against the limit 2% of the object + 16 MiB.

Starts its own MariaDB and moto server.  Usage: python scripts/bench_movies.py [--size 1GiB] [--repeat 3]
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
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mount import unmount, wait_mounted  # noqa: E402  (the mount helpers of the mount benchmark)

import djfs  # noqa: E402
from djfs.stores import clear_store_cache  # noqa: E402

MiB = 1 << 20
HEIGHT = WIDTH = 512


def movie_of(size: int) -> np.ndarray:
    frames = max(20, size // (HEIGHT * WIDTH * 4))
    return np.random.default_rng(0).random((frames, HEIGHT, WIDTH), dtype=np.float32)


def raw_write(path: Path, array: np.ndarray) -> None:
    """The physical limit of an insert: the array's bytes written and fsynced, in 16 MiB writes."""
    data = memoryview(array.reshape(-1).view(np.uint8))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for start in range(0, len(data), 16 * MiB):
            os.write(fd, data[start:start + 16 * MiB])
        os.fsync(fd)
    finally:
        os.close(fd)


def timed(function, cpu: list[float] | None = None) -> float:
    """Wall seconds of ``function()``; its CPU seconds (all threads of this process) go to ``cpu``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    function()
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def declare(connection, kind: str, folder: str):
    name = f"bench_movies_{kind.strip('@')}_{uuid.uuid4().hex[:8]}"
    schema = djfs.Schema(name, connection=connection)
    schema.set_external_storage(folder)

    class Recording(djfs.Manual):
        definition = f"""
        rec : int
        ---
        movie : {kind}
        """
    schema(Recording, context={})
    schema.external.declare()  # once per schema in real life: not part of an insert's cost
    return schema, Recording


def bench_insert(root: Path, connection, movie: np.ndarray, repeat: int) -> tuple[dict, dict]:
    """Wall and CPU seconds per insert of ``movie`` (npy@, external) and per raw write+fsync, interleaved."""
    store = root / "store"
    store.mkdir(exist_ok=True)
    djfs.config["external-location"] = f"file://{store}"
    clear_store_cache()
    times: dict[str, list[float]] = {"raw": [], "npy@": [], "external": []}
    cpu: dict[str, list[float]] = {"raw": [], "npy@": [], "external": []}
    for _ in range(repeat):
        raw_path = store / "raw.bin"
        times["raw"].append(timed(lambda: raw_write(raw_path, movie), cpu["raw"]))
        raw_path.unlink()
        for kind in ("npy@", "external"):
            schema, table = declare(connection, kind, f"f{uuid.uuid4().hex[:8]}")
            times[kind].append(timed(lambda: table.insert1({"rec": 1, "movie": movie}), cpu[kind]))
            schema.drop(force=True)
            shutil.rmtree(store / schema.external.folder, ignore_errors=True)
    return times, cpu


class MountedMovie:
    """The movie stored as npy@ on S3 and a way to read it through fresh mounts."""

    def __init__(self, root: Path, connection, s3, movie: np.ndarray) -> None:
        self.root, self.s3, self.movie = root, s3, movie
        account, token = s3.credentials
        settings = {"external-location": s3.location("bench"), "external-account": account,
                    "external-token": token, "progress": False}
        for key, value in settings.items():
            djfs.config[key] = value
        clear_store_cache()
        self.schema, table = declare(connection, "npy@", s3.create_bucket(f"movies-{uuid.uuid4().hex[:12]}"))
        table.insert1({"rec": 1, "movie": movie})
        self.object_size = int(connection.query(
            f"SELECT size FROM {self.schema.external.full_table_name}").fetchone()[0])
        config_file = root / "mount-config.json"
        config_file.write_text(json.dumps({**settings, "cache-location": str(root / "mount-cache")}))
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("DJ_", "AWS_"))}
        self.env.update(DJ_HOST=djfs.config["database.host"], DJ_PORT=str(djfs.config["database.port"]),
                        DJ_USER=djfs.config["database.user"], DJ_PASS=djfs.config["database.password"] or "",
                        DJ_CONFIG=str(config_file))
        self.table_name = table.__name__

    def read_frames(self, how: str, count: int = 10) -> dict:
        """Read ``count`` frames from the middle through a fresh mount and cache; the daemon's counters."""
        shutil.rmtree(self.root / "mount-cache", ignore_errors=True)
        mountpoint = tempfile.mkdtemp(prefix="movies-mnt-", dir=self.root)
        process = subprocess.Popen([sys.executable, "-m", "djfs.cli", "mount", "-f", mountpoint, "-o",
                                    f"schemas={self.schema.database}", "--log-file", str(self.root / "daemon.log")],
                                   env=self.env)
        try:
            wait_mounted(mountpoint, process)
            directory = Path(mountpoint, self.schema.database, self.table_name, "rec=1")
            middle = self.movie.shape[0] // 2
            wanted = slice(middle, middle + count)
            start = time.perf_counter()
            if how == "npy":
                array = np.load(directory / "movie.npy", mmap_mode="r")
                frames = np.array(array[wanted])
                del array  # the memory map holds the file open
            else:
                import tifffile
                with tifffile.TiffFile(directory / "movie.tif") as tif:
                    frames = tif.asarray(key=range(wanted.start, wanted.stop))
            seconds = time.perf_counter() - start
            if not np.array_equal(frames, self.movie[wanted]):
                raise AssertionError(f"frames read through {how} differ from the movie")
            stats = json.loads(os.getxattr(mountpoint, "user.djfs.stats"))
            stats["seconds"] = seconds
            stats["read_bytes"] = frames.nbytes
            return stats
        finally:
            unmount(mountpoint, process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="movie size (default 1GiB)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per measurement (median)")
    args = parser.parse_args()
    from djfs.settings import parse_size
    from djfs.testing.mariadb import MariaDBServer
    from djfs.testing.s3 import MotoServer

    djfs.config["progress"] = False
    movie = movie_of(parse_size(args.size))
    results = []
    with tempfile.TemporaryDirectory(prefix="djfs-bench-movies-", dir=os.environ.get("BENCH_DIR")) as tmp, \
            MariaDBServer(Path(tmp) / "db") as db, MotoServer() as s3:
        root = Path(tmp)
        for key, value in {"database.host": db.host, "database.port": db.port, "database.user": db.user,
                           "database.password": db.password}.items():
            djfs.config[key] = value
        connection = djfs.conn(reset=True)
        print(f"movie: {movie.shape} float32, C order, {movie.nbytes / MiB:.0f} MiB; medians of {args.repeat}",
              flush=True)

        times, cpu = bench_insert(root, connection, movie, args.repeat)
        raw = statistics.median(times["raw"])
        for kind, goal in (("npy@", 0.8), ("external", 0.5)):
            insert = statistics.median(times[kind])
            results.append((f"insert as {kind} vs raw write+fsync", raw / insert, goal,
                            f"insert {movie.nbytes / insert / 1e6:.0f} MB/s, raw {movie.nbytes / raw / 1e6:.0f} "
                            f"MB/s (runs: {', '.join(f'{t:.2f}' for t in times[kind])} s vs "
                            f"{', '.join(f'{t:.2f}' for t in times['raw'])} s; CPU "
                            f"{statistics.median(cpu[kind]):.2f} s vs {statistics.median(cpu['raw']):.2f} s)"))
            report(*results[-1])

        mounted = MountedMovie(root, connection, s3, movie)
        limit = 0.02 * mounted.object_size + 16 * MiB
        for how in ("npy", "tif"):
            runs = [mounted.read_frames(how) for _ in range(args.repeat)]
            fetched = statistics.median(run.get("store_bytes", 0) for run in runs)
            requests = statistics.median(run.get("store_requests", 0) for run in runs)
            seconds = statistics.median(run["seconds"] for run in runs)
            results.append((f"bytes fetched reading 10 frames of the .{how}", fetched / limit, None,
                            f"{fetched / MiB:.1f} MiB fetched in {requests:.0f} requests for "
                            f"{runs[0]['read_bytes'] / MiB:.1f} MiB read ({seconds:.2f} s); limit {limit / MiB:.1f} MiB"))
            report(*results[-1])
        mounted.schema.drop(force=True)
        connection.close()

    print()
    for result in results:
        report(*result)
    return 0


def report(name: str, ratio: float, goal: float | None, detail: str) -> None:
    if goal is None:
        verdict = "ok" if ratio <= 1 else "OVER"
        print(f"  {name:<44} {ratio:5.2f} of the limit   [{verdict}]  {detail}", flush=True)
    else:
        verdict = "ok" if ratio >= goal else "BELOW GOAL"
        print(f"  {name:<44} {ratio:5.2f}x (goal >= {goal}x) [{verdict}]  {detail}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
