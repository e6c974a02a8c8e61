#!/usr/bin/env python3
"""Speed of the djfs mount against the physical limits measured in the same run (not a test).

Starts its own MariaDB and S3 server (s3rver, whose ranged GETs cost only their bytes; ``--s3 moto`` for moto),
stores one large array (1 GiB by default) as an ``external`` value, and prints, each the median of ``--repeat``
runs, with its goal:

local (S3 on loopback):
1. sequential read of the cached object through the mount  vs  a bare passthrough mfusepy file system over the
   same cache file (goal >= 0.9x);
2. a second read through the mount (kernel page cache kept)  vs  a plain read of the cache file (goal >= 0.4x);
3. a cold read through the mount from S3  vs  a plain boto3 download of the same object (goal >= 0.8x);
4. bytes fetched from S3 when numpy reads 1% of the .npy through the mount (goal <= 2% of the object + 16 MiB).

remote (the same server through ``djfs.testing.relay``: 10 ms per request, ~90 MiB/s per connection; issue 13):
5. cold sequential read through the mount  vs  boto3's ``download_fileobj`` with 8 threads (s3transfer, the
   ceiling for one object; goal >= 0.8x) and vs one GET (goal >= 3x);
6. 100 random 100 KiB preads (8 threads)  vs  100 ranged GETs of the same bytes 8 at a time (goal: <= 1.5x the
   time), and the bytes the daemon fetched for them (its ``user.djfs.stats``; goal <= 4x the bytes asked); also
   against ranged GETs of the whole blocks those preads touch (the same bytes as the mount: the bytes' share);
7. the library's ``fetch1`` of the value, cache empty  vs  s3transfer (goal >= 0.8x);
8. a re-read after a remount with the page cache dropped  vs  the cold read (goal <= 0.3x, 0 GETs);
9. the daemon's CPU per GiB of the cold read  vs  s3transfer's in-process CPU (goal: at most twice);
10. the daemon's RSS growth under 8 concurrent cold streams  vs  its memory bound (block_memory + heap slack).

movies (issue 11; a float32 (T, 512, 512) C-order movie of the same size):
11. insert as ``npy@`` and as ``external`` into a file store  vs  a plain write+fsync of the same bytes into the
    same folder (goals >= 0.8x and >= 0.5x): at least 5 rounds interleaved, sync + page cache dropped before each
    run, the median of the rounds' ratios, CPU seconds beside;
12. bytes fetched reading 10 frames from the middle of the ``npy@`` value on S3 through a fresh mount, from its
    ``.npy`` (numpy memory map) and its ``.tif`` (tifffile) (goal <= 2% of the object + 16 MiB).

Run as root (or with FUSE available):
    python scripts/bench_mount.py [--size 1GiB] [--repeat 3] [--sections local,remote,movies]
                                  [-o mount_option=value]
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from benchlib import (REMOTE_CONNECTION_RATE, GiB, Lab, MachineCpu, MiB, RemoteS3, Results, cpu_seconds,
                      drop_page_cache, median, memory, mount_stats, ranged_gets, read_file, s3transfer_download,
                      s3transfer_verified_copy, single_get, timed, unmount, wait_mounted)


# -- a minimal passthrough file system: the yardstick for the mount's own overhead -----------------------------

def passthrough_main(source: str, mountpoint: str) -> None:
    """Serve one file, ``/data``, straight from ``source`` with os.pread: nothing but FUSE + Python."""
    import stat as stat_module

    from djfs.fs.libfuse import load_mfusepy
    mfusepy = load_mfusepy()  # the library djfs uses, not mfusepy's own pick

    class Passthrough(mfusepy.Operations):
        use_ns = True

        def __init__(self) -> None:
            self.fd = -1
            self.size = os.stat(source).st_size

        def init(self, path: str) -> None:
            self.fd = os.open(source, os.O_RDONLY)

        def getattr(self, path: str, fh=None) -> dict:
            if path == "/":
                return {"st_mode": stat_module.S_IFDIR | 0o555, "st_nlink": 2}
            if path == "/data":
                return {"st_mode": stat_module.S_IFREG | 0o444, "st_nlink": 1, "st_size": self.size}
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: int) -> list:
            return [".", "..", "data"]

        def open(self, path: str, flags: int) -> int:
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(self.fd, size, offset)

    mfusepy.FUSE(Passthrough(), mountpoint, foreground=True, ro=True, fsname="passthrough")


# -- helpers ---------------------------------------------------------------------------------------------------

def large_folio_share(path: str | Path, limit: int = 256 * MiB) -> float | None:
    """The share of a file's page-cache pages (its first ``limit`` bytes) that belong to large folios.

    Why the second read through FUSE is slower than a read of a local file: ext4 caches files in large folios,
    this kernel's FUSE caches in 4 KiB pages, and copying out of the page cache costs per folio.  Read from
    ``/proc/self/pagemap`` and ``/proc/kpageflags`` (root only: None elsewhere).
    """
    import ctypes
    import mmap
    import struct
    try:
        with open(path, "rb") as file, open("/proc/self/pagemap", "rb") as pagemap, \
                open("/proc/kpageflags", "rb") as kpageflags:
            size = min(os.fstat(file.fileno()).st_size, limit) // mmap.PAGESIZE * mmap.PAGESIZE
            mapping = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY)  # private: its address is ours
            try:
                anchor = ctypes.c_char.from_buffer(mapping)
                start = ctypes.addressof(anchor)
                del anchor
                view = memoryview(mapping)
                for offset in range(0, size, mmap.PAGESIZE):
                    view[offset]  # map each page (it is in the page cache: no I/O), never written
                view.release()
                large = present = 0
                for page in range(size // mmap.PAGESIZE):
                    pagemap.seek((start // mmap.PAGESIZE + page) * 8)
                    (entry,) = struct.unpack("<Q", pagemap.read(8))
                    if not entry >> 63 or not entry & ((1 << 55) - 1):
                        continue
                    kpageflags.seek((entry & ((1 << 55) - 1)) * 8)
                    (flags,) = struct.unpack("<Q", kpageflags.read(8))
                    present += 1
                    large += bool(flags & (1 << 15 | 1 << 16))  # KPF_COMPOUND_HEAD | KPF_COMPOUND_TAIL
            finally:
                mapping.close()
        return large / present if present else None
    except OSError:
        return None


# -- the benchmark ---------------------------------------------------------------------------------------------

class Bench:
    """One large ``external`` movie in a private lab; each method is one measurement (seconds, counters)."""

    def __init__(self, lab: Lab, size: int, options: list[str]) -> None:
        self.lab = lab
        self.size = size
        self.options = ["schemas=bench", *options]

    def setup(self) -> None:
        import djfs
        lab = self.lab
        self.bucket = lab.s3.create_bucket(f"bench-{uuid.uuid4().hex[:12]}")
        schema = djfs.Schema("bench", connection=lab.connection)
        schema.set_external_storage(self.bucket)

        @schema
        class Movie(djfs.Manual):
            definition = """
            movie : int
            ---
            frames : external     # height x width x time, uint8
            """
        side = 1024
        frames = max(1, self.size // (side * side))
        print(f"storing a {side}x{side}x{frames} uint8 movie ({side * side * frames / MiB:.0f} MiB) ...", flush=True)
        value = np.random.default_rng(0).integers(0, 256, (side, side, frames), dtype=np.uint8)
        self.frames = frames
        Movie.insert1({"movie": 1, "frames": value})
        self.value = value
        self.Movie = Movie
        entry = lab.connection.query("SELECT hash, size FROM `bench`.`~external`").fetchone()
        self.hash, self.object_size = entry[0], int(entry[1])
        self.key = f"bench/{self.hash[:2]}/{self.hash[2:4]}/{self.hash}"

    def cached_file(self) -> Path:
        return self.lab.cache / "objects" / self.hash[:2] / self.hash

    def fill_cache(self) -> None:
        """The library's fetch fills the cache the mount shares (a whole, verified object)."""
        if not self.cached_file().exists():
            from djfs.cache import open_cache
            self.Movie.fetch1("frames")
            open_cache(self.lab.cache, self.lab.settings["cache-size"]).flush()  # the fill runs in the background
        assert self.cached_file().exists()

    # -- mounts
    def mount(self, location: str | None = None) -> tuple[str, subprocess.Popen]:
        return self.lab.mount(self.options, location)

    def mount_passthrough(self) -> tuple[str, subprocess.Popen]:
        mountpoint = tempfile.mkdtemp(prefix="pass-mnt-", dir=self.lab.root)
        process = subprocess.Popen([sys.executable, __file__, "--passthrough", str(self.cached_file()), mountpoint])
        wait_mounted(mountpoint, process)
        return mountpoint, process

    def movie_path(self, mountpoint: str) -> str:
        return os.path.join(mountpoint, "bench", "Movie", "movie=1", "frames.npy")

    def read_whole(self, mountpoint: str) -> float:
        seconds, count = read_file(self.movie_path(mountpoint))
        assert count == os.stat(self.movie_path(mountpoint)).st_size
        return seconds

    # -- local measurements (the S3 server on loopback)
    def through_djfs_cached(self) -> tuple[float, float]:
        """First and second read of the cached object through a fresh mount."""
        mountpoint, process = self.mount()
        try:
            first = self.read_whole(mountpoint)
            second = self.read_whole(mountpoint)
            stats = mount_stats(mountpoint)
            assert stats.get("opens_keep_cache", 0) >= 1, stats
            self.folios = (large_folio_share(self.movie_path(mountpoint)), large_folio_share(self.cached_file()))
            return first, second
        finally:
            unmount(mountpoint, process)

    def through_passthrough(self) -> float:
        mountpoint, process = self.mount_passthrough()
        try:
            seconds, _ = read_file(os.path.join(mountpoint, "data"))
            return seconds
        finally:
            unmount(mountpoint, process)

    def raw_cache_file(self) -> float:
        return read_file(self.cached_file())[0]

    def cold(self, location: str | None = None, again: bool = True) -> dict:
        """A cold read of the whole object through a fresh mount with an empty cache, then (``again``) a re-read
        after a remount with the page cache dropped: seconds, the daemon's counters and CPU seconds of the cold
        read, and the machine's CPU meanwhile."""
        self.lab.clear_cache()
        mountpoint, process = self.mount(location)
        try:
            drop_page_cache()
            cpu = cpu_seconds(process.pid)
            with MachineCpu() as machine:
                seconds = self.read_whole(mountpoint)
            result = {"seconds": seconds, "cpu": cpu_seconds(process.pid) - cpu, "stats": mount_stats(mountpoint),
                      "machine": machine}
        finally:
            unmount(mountpoint, process)
        if not again:
            return result
        mountpoint, process = self.mount(location)
        try:
            drop_page_cache()
            cpu = cpu_seconds(process.pid)
            result["again"] = self.read_whole(mountpoint)
            result["again_cpu"] = cpu_seconds(process.pid) - cpu
            result["again_stats"] = mount_stats(mountpoint)
        finally:
            unmount(mountpoint, process)
        return result

    def raw_boto3(self) -> float:
        return single_get(self.lab.s3.client(), self.bucket, self.key)[0]

    def one_percent(self) -> dict:
        self.lab.clear_cache()
        mountpoint, process = self.mount()
        try:
            array = np.load(self.movie_path(mountpoint), mmap_mode="r")
            count = max(1, self.frames // 100)
            middle = self.frames // 2
            total = int(array[:, :, middle:middle + count].sum(dtype=np.uint64))
            expected = int(self.value[:, :, middle:middle + count].sum(dtype=np.uint64))
            assert total == expected
            del array  # the memory map holds the file open: release it before unmounting
            stats = mount_stats(mountpoint)
            stats["read_fraction"] = count / self.frames
            return stats
        finally:
            unmount(mountpoint, process)

    # -- remote measurements (through the relay)
    def random_preads(self, location: str, pieces: list[tuple[int, int]], threads: int = 8) -> dict:
        """``pieces`` (offset, size) of the .npy read cold with os.pread, ``threads`` at a time."""
        self.lab.clear_cache()
        mountpoint, process = self.mount(location)
        try:
            drop_page_cache()

            def preads() -> list[int]:  # the open counts: a small object may be fetched whole when opened
                fd = os.open(self.movie_path(mountpoint), os.O_RDONLY)
                try:
                    with ThreadPoolExecutor(threads) as pool:
                        return list(pool.map(lambda piece: len(os.pread(fd, piece[1], piece[0])), pieces))
                finally:
                    os.close(fd)
            seconds, sizes = timed(preads)
            assert sizes == [size for _, size in pieces]
            return {"seconds": seconds, "stats": mount_stats(mountpoint)}
        finally:
            unmount(mountpoint, process)

    def streams(self, location: str, count: int = 8) -> dict:
        """``count`` threads each read their own slice of the .npy cold and at once: the daemon's memory."""
        self.lab.clear_cache()
        mountpoint, process = self.mount(location)
        try:
            drop_page_cache()
            idle = memory(process.pid)["VmRSS"]
            path = self.movie_path(mountpoint)
            size = os.stat(path).st_size
            bounds = [(size * i // count, size * (i + 1) // count) for i in range(count)]
            with ThreadPoolExecutor(count) as pool:
                seconds, counts = timed(lambda: list(pool.map(lambda b: read_file(path, *b)[1], bounds)))
            assert sum(counts) == size
            return {"seconds": seconds, "idle": idle, "peak": memory(process.pid)["VmHWM"]}
        finally:
            unmount(mountpoint, process)

    def library_fetch(self, location: str) -> float:
        """``fetch1`` of the whole value with an empty cache, the store at ``location``."""
        self.lab.clear_cache()
        self.lab.use(location)
        try:
            drop_page_cache()
            seconds, value = timed(lambda: self.Movie.fetch1("frames"))
            assert value.shape == self.value.shape
            return seconds
        finally:
            self.lab.use(self.lab.s3.location("bench"))


def aligned(offsets: list[int], size: int, block: int) -> list[tuple[int, int]]:
    """The ranges of whole ``block``s that reads of ``size`` bytes at ``offsets`` touch (what the mount fetches)."""
    return [(offset // block * block, (offset + size - 1) // block * block + block - offset // block * block)
            for offset in offsets]


# -- movies (issue 11): insert of a (T, Y, X) C-order movie, and 10 of its frames read through the mount ------

MOVIE_SIDE = 512  # a movie is (T, 512, 512) float32: T frames of 1 MiB
INSERT_ROUNDS = 5  # at least: a round takes seconds, and a neighbour's burst must spoil 3 of them to count


def movie_of(size: int) -> np.ndarray:
    """The benchmark's movie: float32 (T, Y, X) in C order (numpy's, suite2p's, CaImAn's convention)."""
    frames = max(20, size // (MOVIE_SIDE * MOVIE_SIDE * 4))
    return np.random.default_rng(0).random((frames, MOVIE_SIDE, MOVIE_SIDE), dtype=np.float32)


def declare_movie_table(connection, kind: str, folder: str):
    """A fresh schema whose ``Recording.movie`` is of type ``kind``, its ``~external`` declared (once per schema
    in real life: not part of an insert's cost)."""
    import djfs
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


def movie_inserts(lab: Lab, movie: np.ndarray, repeat: int, results: Results) -> None:
    """Insert as ``npy@`` and as ``external`` into a file store  vs  a plain write+fsync of the same bytes into
    the same folder of the same file system, under the same conditions: a first run of each not counted, then
    rounds interleaved (the order rotating), ``sync`` and the page cache dropped before each run, at least
    ``INSERT_ROUNDS`` rounds; the verdict is the median of each round's ratio (a neighbour's load drifting
    between rounds cancels out), with wall and CPU seconds beside."""
    import time

    from benchlib import write_fsync

    import djfs
    from djfs.stores import clear_store_cache
    store = lab.root / "movie-store"
    store.mkdir(exist_ok=True)
    kinds = ("raw", "npy@", "external")
    wall: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu: dict[str, list[float]] = {kind: [] for kind in kinds}

    def run(kind: str, timed_run: bool = True) -> None:
        folder = f"f{uuid.uuid4().hex[:8]}"  # every run writes into a new folder of the store
        schema, table = declare_movie_table(lab.connection, kind, folder) if kind != "raw" else (None, None)
        (store / folder).mkdir()
        work = (lambda: write_fsync(store / folder / "raw", movie)) if table is None else \
            (lambda: table.insert1({"rec": 1, "movie": movie}))
        drop_page_cache()  # sync, then clean pages dropped: no run pays for the previous one's writeback
        start_cpu = time.process_time()  # every thread of this process (the insert's helpers too)
        seconds, _ = timed(work)
        if timed_run:
            wall[kind].append(seconds)
            cpu[kind].append(time.process_time() - start_cpu)
        if schema is not None:
            schema.drop(force=True)
        shutil.rmtree(store / folder)

    load = os.getloadavg()[0]
    with djfs.config.override(**{"external-location": f"file://{store}", "external-account": None,
                                 "external-token": None}):
        clear_store_cache()
        try:
            for kind in kinds:  # a first run of each, not counted: whichever ran first was 2-4x slower
                run(kind, timed_run=False)
            for round_ in range(max(INSERT_ROUNDS, repeat)):
                for kind in kinds[round_ % 3:] + kinds[:round_ % 3]:
                    run(kind)
        finally:
            clear_store_cache()
    load = f"load average {load:.1f}-{os.getloadavg()[0]:.1f}"
    raw = wall["raw"]
    for kind, goal in (("npy@", 0.8), ("external", 0.5)):
        ratios = [r / t for r, t in zip(raw, wall[kind])]
        results.at_least(f"insert as {kind} vs raw write+fsync", median(ratios), goal,
                         f"median of rounds {', '.join(f'{x:.2f}' for x in ratios)}; wall "
                         f"{median(wall[kind]):.2f} s vs {median(raw):.2f} s (runs "
                         f"{', '.join(f'{t:.2f}' for t in wall[kind])} vs {', '.join(f'{t:.2f}' for t in raw)}); "
                         f"CPU {median(cpu[kind]):.2f} s vs {median(cpu['raw']):.2f} s; {load}")


def movie_frames(lab: Lab, movie: np.ndarray, repeat: int, results: Results) -> None:
    """10 frames from the middle of the movie stored as ``npy@`` on S3, read through fresh mounts with an empty
    cache, from ``movie.npy`` (numpy's memory map) and from ``movie.tif`` (tifffile): the bytes the daemon
    fetched against 2% of the object + 16 MiB."""
    lab.use(lab.s3.location("bench"))
    schema, table = declare_movie_table(lab.connection, "npy@", lab.s3.create_bucket(f"movies-{uuid.uuid4().hex[:12]}"))
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
        results.at_most(f"MiB fetched reading 10 frames of the movie's .{how}", fetched / MiB, limit / MiB,
                        f"{median(run.get('store_requests', 0) for run in runs):.0f} requests for "
                        f"{runs[0]['read'] / MiB:.1f} MiB of frames ({median(run['seconds'] for run in runs):.2f} s)",
                        unit="")
    schema.drop(force=True)


def movies_section(lab: Lab, size: int, repeat: int, results: Results) -> None:
    """Issue 11's goals for a (T, Y, X) C-order movie of ``size`` bytes: inserts, then frames read back."""
    movie = movie_of(size)
    print(f"movie: {movie.shape} float32, C order, {movie.nbytes / MiB:.0f} MiB", flush=True)
    movie_inserts(lab, movie, repeat, results)
    movie_frames(lab, movie, repeat, results)


# -- the sections of the report --------------------------------------------------------------------------------

def local_section(bench: Bench, repeat: int, results: Results) -> None:
    """The mount against the physical limits on this machine, S3 on loopback."""
    gib = bench.object_size / GiB
    bench.fill_cache()
    bench.raw_cache_file()  # the cache file is in the page cache for every contender from here on
    firsts, seconds, passes, raws = [], [], [], []
    for _ in range(repeat):
        first, second = bench.through_djfs_cached()
        firsts.append(first)
        seconds.append(second)
        passes.append(bench.through_passthrough())
        raws.append(bench.raw_cache_file())
    first, second = median(firsts), median(seconds)
    passthrough, raw = median(passes), median(raws)
    results.at_least("cached read: djfs vs passthrough", passthrough / first, 0.9,
                     f"djfs {gib / first:.2f} GiB/s, passthrough {gib / passthrough:.2f} GiB/s")
    mounted_folios, local_folios = (f"{share:.0%}" if share is not None else "n/a" for share in bench.folios)
    results.at_least("second read (page cache kept) vs raw cache file", raw / second, 0.4,
                     f"djfs {gib / second:.2f} GiB/s, raw {gib / raw:.2f} GiB/s; page cache in large folios: "
                     f"mount {mounted_folios}, cache file {local_folios}")

    colds, boto = [], []
    for _ in range(repeat):
        colds.append(bench.cold())
        boto.append(bench.raw_boto3())
    cold, raw_s3 = median(c["seconds"] for c in colds), median(boto)
    results.at_least("cold read from S3: djfs vs boto3 get_object", raw_s3 / cold, 0.8,
                     f"djfs {gib / cold:.2f} GiB/s ({colds[-1]['stats'].get('store_requests')} requests), boto3 "
                     f"get_object {gib / raw_s3:.2f} GiB/s")

    partial = bench.one_percent()
    fetched = partial.get("store_bytes", 0)
    limit = 0.02 * bench.object_size + 16 * MiB
    share = partial["read_fraction"]
    results.at_most("MiB fetched reading 1% of the .npy", fetched / MiB, limit / MiB,
                    f"{share * 100:.1f}% ({share * bench.object_size / MiB:.1f} MiB) read; "
                    f"{partial.get('store_requests')} requests", unit="")


def remote_section(bench: Bench, repeat: int, results: Results) -> None:
    """The same object from a remote S3 (the relay): djfs vs s3transfer's 8 threads vs one GET (issue 13)."""
    remote = RemoteS3(bench.lab.s3)
    slow = RemoteS3(bench.lab.s3, connection_rate=REMOTE_CONNECTION_RATE / 3)
    print(f"remote S3: {remote.describe()}", flush=True)
    location, slow_location = remote.location("bench"), slow.location("bench")
    gib = bench.object_size / GiB
    client = remote.client()
    asked = 100 * 1024
    block = importlib.import_module("djfs.fs.mount").MountOptions.parse(bench.options).block_size
    rng = random.Random(13)
    samples = []
    try:
        for _ in range(repeat):
            run: dict = {}
            with MachineCpu() as run["s3transfer_machine"]:
                run["s3transfer"], run["s3transfer_cpu"] = s3transfer_download(client, bench.bucket, bench.key)
            run["get"], run["get_cpu"] = single_get(client, bench.bucket, bench.key)
            drop_page_cache()  # no run pays for the one before's writeback
            run["s3transfer_verified"] = s3transfer_verified_copy(client, bench.bucket, bench.key, bench.lab.root)
            run["cold"] = bench.cold(location)
            run["fetch"] = bench.library_fetch(location)
            file_size = bench.object_size  # the .npy's header is small: offsets within the data are alike
            offsets = [rng.randrange(0, file_size - asked) for _ in range(100)]
            run["preads"] = bench.random_preads(location, [(offset, asked) for offset in offsets])
            run["ranged"] = ranged_gets(client, bench.bucket, bench.key, [(offset, asked) for offset in offsets])
            run["aligned"] = ranged_gets(client, bench.bucket, bench.key, aligned(offsets, asked, block))
            # the freshly mounted daemon opens its connections during its preads; the client above has them open
            run["ranged_fresh"] = ranged_gets(remote.client(), bench.bucket, bench.key,
                                              [(offset, asked) for offset in offsets])
            run["streams"] = bench.streams(location)
            # the same read where the network, not the CPU, is the limit: 8 connections of a third of the rate
            run["slow_s3transfer"], _ = s3transfer_download(slow.client(), bench.bucket, bench.key)
            run["slow_cold"] = bench.cold(slow_location, again=False)["seconds"]
            samples.append(run)
    finally:
        remote.close()
        slow.close()

    def m(get) -> float:
        return median(get(run) for run in samples)
    s3t, get, cold = m(lambda r: r["s3transfer"]), m(lambda r: r["get"]), m(lambda r: r["cold"]["seconds"])
    requests = samples[-1]["cold"]["stats"].get("store_requests")
    results.at_least("remote cold sequential read: djfs vs s3transfer 8 threads", s3t / cold, 0.8,
                     f"djfs {gib / cold * 1024:.0f} MiB/s ({requests} GETs), s3transfer {gib / s3t * 1024:.0f} MiB/s")
    results.at_least("remote cold sequential read: djfs vs one GET", get / cold, 3,
                     f"one GET {gib / get * 1024:.0f} MiB/s")
    results.at_least("remote ceiling here: s3transfer 8 threads vs one GET", get / s3t, None,
                     "what 8 connections give on this machine (client, server and relay share its cores)")
    verified = m(lambda r: r["s3transfer_verified"])
    results.at_least("remote s3transfer doing the required work vs into /dev/null", s3t / verified, None,
                     f"{verified:.2f} s against {s3t:.2f} s: its 8 threads into a SHA-256 and a file on disk, what a "
                     "verified, cached read must do with every byte (djfs also delivers it through FUSE)")
    djfs_cpu, djfs_busy = m(lambda r: r["cold"]["machine"].seconds), m(lambda r: r["cold"]["machine"].share)
    s3t_all, s3t_busy = m(lambda r: r["s3transfer_machine"].seconds), m(lambda r: r["s3transfer_machine"].share)
    results.at_least("remote the machine's CPU during the reads: s3transfer / djfs", s3t_all / djfs_cpu, None,
                     f"all processes: djfs's read {djfs_cpu / gib:.2f} core-s/GiB, {djfs_busy:.0%} of "
                     f"{MachineCpu.cores} cores busy; s3transfer's {s3t_all / gib:.2f} core-s/GiB, {s3t_busy:.0%} "
                     "busy (the S3 server and the relay run on the same cores)")
    slow_s3t, slow_cold = m(lambda r: r["slow_s3transfer"]), m(lambda r: r["slow_cold"])
    results.at_least(f"remote at {slow.connection_rate / MiB:.0f} MiB/s per connection: djfs vs s3transfer",
                     slow_s3t / slow_cold, None,
                     f"djfs {gib / slow_cold * 1024:.0f} MiB/s, s3transfer {gib / slow_s3t * 1024:.0f} MiB/s "
                     "(the network the limit, not the CPU)")
    preads, ranged = m(lambda r: r["preads"]["seconds"]), m(lambda r: r["ranged"])
    fetched = m(lambda r: r["preads"]["stats"].get("store_bytes", 0))
    results.at_least("remote 100 random 100 KiB preads vs ranged GETs (8 at a time)", ranged / preads, 1 / 1.5,
                     f"djfs {preads:.2f} s, direct {ranged:.2f} s")
    fresh = m(lambda r: r["ranged_fresh"])
    results.at_least("remote the same preads vs ranged GETs of a fresh client", fresh / preads, None,
                     f"direct {fresh:.2f} s with a new boto3 client (its connections opened during the GETs, "
                     "as the mount's are; the line above uses a client with open connections)")
    results.at_least("remote the same preads vs ranged GETs of their whole blocks", m(lambda r: r["aligned"]) / preads,
                     None, f"direct GETs of the {block >> 10} KiB blocks the preads touch: "
                     f"{m(lambda r: r['aligned']):.2f} s (the bytes' share of the gap)")
    results.at_most("remote bytes fetched by those preads / bytes asked", fetched / (100 * asked), 4,
                    f"{fetched / MiB:.1f} MiB fetched for {100 * asked / MiB:.1f} MiB, "
                    f"{m(lambda r: r['preads']['stats'].get('store_requests', 0)):.0f} GETs", unit="x")
    fetch = m(lambda r: r["fetch"])
    results.at_least("remote library fetch1: djfs vs s3transfer 8 threads", s3t / fetch, 0.8,
                     f"fetch1 {gib / fetch * 1024:.0f} MiB/s")
    again = m(lambda r: r["cold"]["again"])
    by_descriptor = m(lambda r: r["cold"]["again_stats"].get("reads_by_descriptor", 0) /
                      max(1, r["cold"]["again_stats"].get("reads", 0)))
    results.at_most("remote re-read after remount (page cache dropped) / cold", again / cold, 0.3,
                    f"re-read {again:.2f} s, cold {cold:.2f} s; daemon CPU "
                    f"{m(lambda r: r['cold']['again_cpu']) / gib:.2f} s/GiB, {by_descriptor:.0%} of its reads "
                    "by the part files' descriptors", unit="x")
    gets = int(m(lambda r: r["cold"]["again_stats"].get("store_requests", 0)))
    results.at_most("remote re-read after remount: GETs", gets, 0,
                    f"{m(lambda r: r['cold']['again_stats'].get('store_bytes', 0)) / MiB:.0f} MiB fetched", unit="")
    cpu, s3t_cpu = m(lambda r: r["cold"]["cpu"]) / gib, m(lambda r: r["s3transfer_cpu"]) / gib
    results.at_least("remote cold read CPU per GiB: s3transfer / djfs daemon", s3t_cpu / cpu, 0.5,
                     f"daemon {cpu:.2f} s/GiB, s3transfer {s3t_cpu:.2f} s/GiB, one GET "
                     f"{m(lambda r: r['get_cpu']) / gib:.2f} s/GiB (in-process)")
    mount_module = importlib.import_module("djfs.fs.mount")
    budget = mount_module.MountOptions.parse(bench.options).block_memory + getattr(mount_module, "HEAP_KEEP", 0)
    growth = m(lambda r: r["streams"]["peak"] - r["streams"]["idle"])
    results.at_most("remote daemon RSS growth (MiB), 8 concurrent cold streams", growth / MiB, budget / MiB,
                    f"peak {m(lambda r: r['streams']['peak']) / MiB:.0f} MiB, idle "
                    f"{m(lambda r: r['streams']['idle']) / MiB:.0f} MiB, "
                    f"{gib / m(lambda r: r['streams']['seconds']) * 1024:.0f} MiB/s in all", unit="")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="object size (default 1GiB)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per measurement (median)")
    parser.add_argument("--sections", default="local,remote,movies",
                        help="which to run: local (S3 on loopback), remote (through the relay), movies (inserts "
                             "and frame reads of a (T, Y, X) movie); default all")
    parser.add_argument("--s3", default="s3rver", choices=["s3rver", "moto"], help="the S3 server (default s3rver)")
    parser.add_argument("-o", dest="options", action="append", default=[], help="extra djfs mount options")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--passthrough", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.passthrough:
        passthrough_main(*args.passthrough)
        return 0
    from djfs.settings import parse_size
    sections = {name.strip() for name in args.sections.split(",") if name.strip()}
    if not sections <= {"local", "remote", "movies"}:
        parser.error(f"unknown sections: {', '.join(sorted(sections - {'local', 'remote', 'movies'}))}")

    root = Path(tempfile.mkdtemp(prefix="djfs-bench-"))
    results = Results()
    lab = Lab(root, s3=args.s3)
    try:
        lab.start()
        bench = Bench(lab, parse_size(args.size), args.options)
        if "movies" in sections:
            movies_section(lab, parse_size(args.size), args.repeat, results)
        if sections - {"movies"}:
            bench.setup()
        if "local" in sections:
            local_section(bench, args.repeat, results)
        if "remote" in sections:
            remote_section(bench, args.repeat, results)
    finally:
        lab.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    results.print(f"object: {bench.size / MiB:.0f} MiB, {args.s3}, medians of {args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
