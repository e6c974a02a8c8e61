#!/usr/bin/env python3
"""Speed of the djfs mount against the physical limits measured in the same run (not a test).

Starts its own MariaDB (djfs.testing.mariadb) and moto S3 server (djfs.testing.s3), stores one large array
(1 GiB by default) as an ``external`` value, and prints, each the median of a few repetitions:

1. sequential read of the cached object through the mount  vs  a bare passthrough mfusepy file system over the
   same cache file (goal >= 0.9x);
2. a second read through the mount (kernel page cache kept)  vs  a plain read of the cache file (goal >= 0.4x);
3. a cold read through the mount from S3  vs  a plain boto3 download of the same object (goal >= 0.8x);
4. bytes fetched from S3 when numpy reads 1% of the .npy through the mount (goal <= 2% of the object + 16 MiB).

Run as root (or with FUSE available):  python scripts/bench_mount.py [--size 1GiB] [--repeat 3]
"""

from __future__ import annotations

import argparse
import errno
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

CHUNK = 8 << 20  # bytes per read() call of the readers: large, as a streaming reader would use
MiB = 1 << 20


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

_BUFFER = memoryview(bytearray(b"\1" * CHUNK))  # one buffer, touched once: no contender pays for fresh pages


def read_file(path: str | Path) -> tuple[float, int]:
    """Seconds and bytes of one sequential read of a whole file."""
    view = _BUFFER
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as file:
        while True:
            count = file.readinto(view)
            if not count:
                break
            total += count
    return time.perf_counter() - start, total


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


def drop_page_cache() -> None:
    """Forget clean pages (needs root); without it the 'cold' mount reads may be warmer than they should."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1")
    except OSError:
        pass


def wait_mounted(mountpoint: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    from djfs.fs import is_mounted
    deadline = time.monotonic() + timeout
    while not (is_mounted(mountpoint) and os.path.ismount(mountpoint)):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{mountpoint} did not mount (exit status {process.poll()})")
        time.sleep(0.05)


def unmount(mountpoint: str, process: subprocess.Popen) -> None:
    """Unmount, lazily if something still holds a file open, and never leave a daemon or a dead mount behind."""
    from djfs.fs import is_mounted
    if subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True).returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if is_mounted(mountpoint):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True)


class Bench:
    def __init__(self, root: Path, size: int, repeat: int, options: list[str]) -> None:
        self.root = root
        self.size = size
        self.repeat = repeat
        self.options = options
        self.env: dict[str, str] = {}

    # -- setup
    def setup(self) -> None:
        import djfs
        from djfs.testing.mariadb import MariaDBServer
        from djfs.testing.s3 import MotoServer

        print(f"starting MariaDB and the moto S3 server in {self.root} ...", flush=True)
        self.db = MariaDBServer(self.root / "mariadb").start()
        self.s3 = MotoServer().start()
        self.bucket = self.s3.create_bucket(f"bench-{uuid.uuid4().hex[:12]}")
        account, token = self.s3.credentials
        self.cache = self.root / "cache"
        settings = {"database.host": self.db.host, "database.port": self.db.port, "database.user": self.db.user,
                    "database.password": self.db.password, "external-location": self.s3.location("bench"),
                    "external-account": account, "external-token": token, "cache-location": str(self.cache),
                    "cache-size": "4GiB", "progress": False}
        for key, value in settings.items():
            djfs.config[key] = value
        config_file = self.root / "config.json"
        config_file.write_text(json.dumps({key: value for key, value in settings.items()
                                           if not key.startswith("database.")}))
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("DJ_", "AWS_"))}
        self.env.update(DJ_HOST=self.db.host, DJ_PORT=str(self.db.port), DJ_USER=self.db.user,
                        DJ_PASS=self.db.password or "", DJ_CONFIG=str(config_file))
        connection = djfs.conn(reset=True)
        schema = djfs.Schema("bench", connection=connection)
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
        entry = connection.query("SELECT hash, size FROM `bench`.`~external`").fetchone()
        self.hash, self.object_size = entry[0], int(entry[1])
        self.key = f"bench/{self.hash[:2]}/{self.hash[2:4]}/{self.hash}"

    def cached_file(self) -> Path:
        return self.cache / "objects" / self.hash[:2] / self.hash

    def fill_cache(self) -> None:
        """The library's fetch fills the cache the mount shares (a whole, verified object)."""
        if not self.cached_file().exists():
            self.Movie.fetch1("frames")
        assert self.cached_file().exists()

    def clear_cache(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)

    # -- mounts
    def mount_djfs(self, extra: list[str] = ()) -> tuple[str, subprocess.Popen]:
        mountpoint = tempfile.mkdtemp(prefix="djfs-mnt-", dir=self.root)
        options = ",".join(["schemas=bench", *self.options, *extra])
        process = subprocess.Popen([sys.executable, "-m", "djfs.cli", "mount", "-f", mountpoint, "-o", options,
                                    "--log-file", str(self.root / "daemon.log")], env=self.env)
        wait_mounted(mountpoint, process)
        return mountpoint, process

    def mount_passthrough(self) -> tuple[str, subprocess.Popen]:
        mountpoint = tempfile.mkdtemp(prefix="pass-mnt-", dir=self.root)
        process = subprocess.Popen([sys.executable, __file__, "--passthrough", str(self.cached_file()), mountpoint])
        wait_mounted(mountpoint, process)
        return mountpoint, process

    def movie_path(self, mountpoint: str) -> str:
        return os.path.join(mountpoint, "bench", "Movie", "movie=1", "frames.npy")

    def stats(self, mountpoint: str) -> dict:
        return json.loads(os.getxattr(mountpoint, "user.djfs.stats"))

    # -- measurements (each returns seconds)
    def through_djfs_cached(self) -> tuple[float, float]:
        """First and second read of the cached object through a fresh mount."""
        mountpoint, process = self.mount_djfs()
        try:
            first, count = read_file(self.movie_path(mountpoint))
            assert count == os.stat(self.movie_path(mountpoint)).st_size
            second, _ = read_file(self.movie_path(mountpoint))
            stats = self.stats(mountpoint)
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

    def cold_djfs(self) -> tuple[float, dict]:
        self.clear_cache()
        mountpoint, process = self.mount_djfs()
        try:
            seconds, count = read_file(self.movie_path(mountpoint))
            assert count == os.stat(self.movie_path(mountpoint)).st_size
            return seconds, self.stats(mountpoint)
        finally:
            unmount(mountpoint, process)

    def raw_boto3(self) -> float:
        client = self.s3.client()
        start = time.perf_counter()
        body = client.get_object(Bucket=self.bucket, Key=self.key)["Body"]
        total = 0
        while chunk := body.read(CHUNK):
            total += len(chunk)
        assert total == self.object_size
        return time.perf_counter() - start

    def one_percent(self) -> dict:
        self.clear_cache()
        mountpoint, process = self.mount_djfs()
        try:
            array = np.load(self.movie_path(mountpoint), mmap_mode="r")
            count = max(1, self.frames // 100)
            middle = self.frames // 2
            total = int(array[:, :, middle:middle + count].sum(dtype=np.uint64))
            expected = int(self.value[:, :, middle:middle + count].sum(dtype=np.uint64))
            assert total == expected
            del array  # the memory map holds the file open: release it before unmounting
            stats = self.stats(mountpoint)
            stats["read_fraction"] = count / self.frames
            return stats
        finally:
            unmount(mountpoint, process)

    def close(self) -> None:
        for stop in (getattr(self, "s3", None), getattr(self, "db", None)):
            if stop is not None:
                stop.stop()


def median(function, repeat: int) -> float:
    return statistics.median(function() for _ in range(repeat))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="object size (default 1GiB)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per measurement (median)")
    parser.add_argument("-o", dest="options", action="append", default=[], help="extra djfs mount options")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--passthrough", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.passthrough:
        passthrough_main(*args.passthrough)
        return 0
    from djfs.settings import parse_size

    root = Path(tempfile.mkdtemp(prefix="djfs-bench-"))
    bench = Bench(root, parse_size(args.size), args.repeat, args.options)
    results = []
    try:
        bench.setup()
        gib = bench.object_size / (1 << 30)
        repeat = args.repeat

        bench.fill_cache()
        bench.raw_cache_file()  # the cache file is in the page cache for every contender from here on
        firsts, seconds, passes, raws = [], [], [], []
        for _ in range(repeat):
            first, second = bench.through_djfs_cached()
            firsts.append(first)
            seconds.append(second)
            passes.append(bench.through_passthrough())
            raws.append(bench.raw_cache_file())
        first, second = statistics.median(firsts), statistics.median(seconds)
        passthrough, raw = statistics.median(passes), statistics.median(raws)
        results.append(("cached read: djfs vs passthrough", passthrough / first, 0.9,
                        f"djfs {gib / first:.2f} GiB/s, passthrough {gib / passthrough:.2f} GiB/s"))
        mounted_folios, local_folios = (f"{share:.0%}" if share is not None else "n/a" for share in bench.folios)
        results.append(("second read (page cache kept) vs raw cache file", raw / second, 0.4,
                        f"djfs {gib / second:.2f} GiB/s, raw {gib / raw:.2f} GiB/s; page cache in large folios: "
                        f"mount {mounted_folios}, cache file {local_folios}"))

        colds, boto, cold_stats = [], [], {}
        for _ in range(repeat):
            drop_page_cache()
            # moto keeps a large object in a temporary file: after the page cache was dropped, whoever reads
            # first also pays for moto's disk reads.  Warm it, untimed, so both contenders meet the same server.
            bench.raw_boto3()
            seconds_cold, cold_stats = bench.cold_djfs()
            colds.append(seconds_cold)
            boto.append(bench.raw_boto3())
        cold, raw_s3 = statistics.median(colds), statistics.median(boto)
        results.append(("cold read from S3: djfs vs boto3 get_object", raw_s3 / cold, 0.8,
                        f"djfs {gib / cold:.2f} GiB/s ({cold_stats.get('store_requests')} requests), boto3 "
                        f"get_object {gib / raw_s3:.2f} GiB/s"))

        partial = bench.one_percent()
        fetched = partial.get("store_bytes", 0)
        limit = 0.02 * bench.object_size + 16 * MiB
        results.append(("bytes fetched reading 1% of the .npy", fetched / limit, None,
                        f"{fetched / MiB:.1f} MiB fetched for {partial['read_fraction'] * 100:.1f}% "
                        f"({partial['read_fraction'] * bench.object_size / MiB:.1f} MiB) read; limit "
                        f"{limit / MiB:.1f} MiB; {partial.get('store_requests')} requests"))
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"object: {bench.object_size / MiB:.0f} MiB, medians of {args.repeat}")
    for name, ratio, goal, detail in results:
        if goal is None:
            verdict = "ok" if ratio <= 1 else "OVER"
            print(f"  {name:<50} {ratio:5.2f} of the limit   [{verdict}]  {detail}")
        else:
            verdict = "ok" if ratio >= goal else "BELOW GOAL"
            print(f"  {name:<50} {ratio:5.2f}x (goal >= {goal}x) [{verdict}]  {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
