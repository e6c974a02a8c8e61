#!/usr/bin/env python3
"""Benchmark of movies: inserting a (T, Y, X) C-order movie, and reading 10 frames of it through the mount.

1. Insert of a 1 GiB float32 (T, Y, X) C-order movie into a file store, as ``npy@`` (goal >= 0.8x) and as
   ``external`` (DataJoint's column-major blob; goal >= 0.5x), against a raw write+fsync of the same bytes to
   the same file system, measured in the same run (interleaved, medians; CPU seconds of this process beside).
2. 10 frames from the middle of that movie stored as ``npy@`` on S3, read through a fresh mount with an empty
   cache: by ``np.load(mmap_mode='r')`` of ``movie.npy`` and by tifffile from ``movie.tif``; the bytes the daemon
   fetched from the store against the limit 2% of the object + 16 MiB.

Starts its own MariaDB and S3 server (s3rver, or moto with ``--s3 moto``).
Usage: python scripts/bench_movies.py [--size 1GiB] [--repeat 3] [--s3 s3rver|moto]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from benchlib import Lab, MiB, Results, median, mount_stats, timed, unmount, write_fsync

import djfs
from djfs.stores import clear_store_cache

HEIGHT = WIDTH = 512


def movie_of(size: int) -> np.ndarray:
    frames = max(20, size // (HEIGHT * WIDTH * 4))
    return np.random.default_rng(0).random((frames, HEIGHT, WIDTH), dtype=np.float32)


def cpu_timed(function) -> tuple[float, float]:
    """Wall and CPU seconds (all threads of this process) of one call."""
    start_cpu = time.process_time()
    seconds, _ = timed(function)
    return seconds, time.process_time() - start_cpu


def declare(connection, kind: str, folder: str):
    """A fresh schema whose ``Recording.movie`` is of type ``kind``, its ``~external`` declared (once per schema in
    real life: not part of an insert's cost)."""
    schema = djfs.Schema(f"bench_movies_{kind.strip('@')}_{uuid.uuid4().hex[:8]}", connection=connection)
    schema.set_external_storage(folder)

    class Recording(djfs.Manual):
        definition = f"""
        rec : int
        ---
        movie : {kind}
        """
    schema(Recording, context={})
    schema.external.declare()
    return schema, Recording


def insert_section(lab: Lab, movie: np.ndarray, repeat: int, results: Results) -> None:
    """Insert vs raw write+fsync to the same file system, interleaved."""
    store = lab.root / "store"
    store.mkdir(exist_ok=True)
    with djfs.config.override(**{"external-location": f"file://{store}", "external-account": None,
                                 "external-token": None}):
        clear_store_cache()
        _insert_runs(lab, store, movie, repeat, results)
    clear_store_cache()


def _insert_runs(lab: Lab, store: Path, movie: np.ndarray, repeat: int, results: Results) -> None:
    wall: dict[str, list[float]] = {"raw": [], "npy@": [], "external": []}
    cpu: dict[str, list[float]] = {"raw": [], "npy@": [], "external": []}

    def record(kind: str, function) -> None:
        seconds, cpu_seconds = cpu_timed(function)
        wall[kind].append(seconds)
        cpu[kind].append(cpu_seconds)

    for _ in range(repeat):
        raw_path = store / "raw.bin"
        record("raw", lambda: write_fsync(raw_path, movie))
        raw_path.unlink()
        for kind in ("npy@", "external"):
            schema, table = declare(lab.connection, kind, f"f{uuid.uuid4().hex[:8]}")
            record(kind, lambda: table.insert1({"rec": 1, "movie": movie}))
            schema.drop(force=True)
            shutil.rmtree(store / schema.external.folder, ignore_errors=True)
    raw = median(wall["raw"])
    for kind, goal in (("npy@", 0.8), ("external", 0.5)):
        insert = median(wall[kind])
        results.at_least(f"insert as {kind} vs raw write+fsync", raw / insert, goal,
                         f"insert {movie.nbytes / insert / 1e6:.0f} MB/s, raw {movie.nbytes / raw / 1e6:.0f} MB/s "
                         f"(runs {', '.join(f'{t:.2f}' for t in wall[kind])} s vs "
                         f"{', '.join(f'{t:.2f}' for t in wall['raw'])} s; CPU {median(cpu[kind]):.2f} s vs "
                         f"{median(cpu['raw']):.2f} s)")


def frames_section(lab: Lab, movie: np.ndarray, repeat: int, results: Results) -> None:
    """10 frames from the middle through fresh mounts with an empty cache, from the .npy and from the .tif."""
    lab.use(lab.s3.location("bench"))
    schema, table = declare(lab.connection, "npy@", lab.s3.create_bucket(f"movies-{uuid.uuid4().hex[:12]}"))
    table.insert1({"rec": 1, "movie": movie})
    (size,) = lab.connection.query(f"SELECT size FROM {schema.external.full_table_name}").fetchone()
    limit = 0.02 * int(size) + 16 * MiB
    middle = movie.shape[0] // 2
    wanted = slice(middle, middle + 10)

    def read(how: str) -> dict:
        lab.clear_cache()
        mountpoint, process = lab.mount([f"schemas={schema.database}"])
        try:
            directory = Path(mountpoint, schema.database, table.__name__, "rec=1")
            if how == "npy":
                mapped = np.load(directory / "movie.npy", mmap_mode="r")
                seconds, frames = timed(lambda: np.array(mapped[wanted]))
                del mapped  # the memory map holds the file open
            else:
                import tifffile
                with tifffile.TiffFile(directory / "movie.tif") as tif:
                    seconds, frames = timed(lambda: tif.asarray(key=range(wanted.start, wanted.stop)))
            if not np.array_equal(frames, movie[wanted]):
                raise AssertionError(f"frames read through the .{how} differ from the movie")
            return {**mount_stats(mountpoint), "seconds": seconds, "read": frames.nbytes}
        finally:
            unmount(mountpoint, process)

    for how in ("npy", "tif"):
        runs = [read(how) for _ in range(repeat)]
        fetched = median(run.get("store_bytes", 0) for run in runs)
        results.at_most(f"bytes fetched reading 10 frames of the .{how}", fetched / MiB, limit / MiB,
                        f"{median(run.get('store_requests', 0) for run in runs):.0f} requests for "
                        f"{runs[0]['read'] / MiB:.1f} MiB of frames ({median(run['seconds'] for run in runs):.2f} s)",
                        unit=" MiB")
    schema.drop(force=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="movie size (default 1GiB)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per measurement (median)")
    parser.add_argument("--s3", default="s3rver", choices=["s3rver", "moto"], help="the local S3 server")
    args = parser.parse_args()
    from djfs.settings import parse_size

    movie = movie_of(parse_size(args.size))
    results = Results()
    with tempfile.TemporaryDirectory(prefix="djfs-bench-movies-", dir=os.environ.get("BENCH_DIR")) as tmp, \
            Lab(Path(tmp), s3=args.s3) as lab:
        print(f"movie: {movie.shape} float32, C order, {movie.nbytes / MiB:.0f} MiB", flush=True)
        insert_section(lab, movie, args.repeat, results)
        frames_section(lab, movie, args.repeat, results)
    results.print(f"movies: {movie.nbytes / MiB:.0f} MiB (T, Y, X) float32, medians of {args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
