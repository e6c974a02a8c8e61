"""Plumbing shared by the benchmarks in ``scripts/``: servers, a remote S3, mounts, timing, verdict lines.

A benchmark compares djfs with the physical limit measured in the same run (a raw read, bare boto3) and prints
one line per goal: the ratio, the goal, ``[ok]`` or ``[BELOW GOAL]``/``[OVER]``, medians of ``--repeat`` runs.

* ``Lab``: a private MariaDB and S3 server, djfs configured for them, mounts of the djfs daemon;
* ``RemoteS3``: the S3 server seen through ``djfs.testing.relay`` as a remote S3 (10 ms per request, each
  connection capped at ~90 MiB/s), with the boto3 yardsticks (one GET, s3transfer's 8 threads, ranged GETs);
* ``Results``: the verdict lines; ``timed``, ``median``, ``drop_page_cache``, ``read_file``, ``write_fsync``,
  process counters (``cpu_seconds``, ``memory``).

Not a test helper: nothing in ``djfs`` or ``tests`` imports it.  A script imports it as ``import benchlib``
(Python puts the script's directory on the path).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

MiB = 1 << 20
GiB = 1 << 30
CHUNK = 8 * MiB  # bytes per read() call of the readers: large, as a streaming reader would use

#: how the benchmarks play a remote S3: a round trip per request, and one connection doesn't fill the network
REMOTE_DELAY = 0.010
REMOTE_CONNECTION_RATE = 90 * MiB

_T = TypeVar("_T")


# -- timing --------------------------------------------------------------------------------------------------

def timed(function: Callable[[], _T]) -> tuple[float, _T]:
    """Seconds of one call, and its result."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def drop_page_cache() -> None:
    """Forget clean pages (needs root); without it the 'cold' reads may be warmer than they should be."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1")
    except OSError:
        pass


_BUFFER = memoryview(bytearray(b"\1" * CHUNK))  # one buffer, touched once: no contender pays for fresh pages


def read_file(path: str | Path, start: int = 0, stop: int | None = None) -> tuple[float, int]:
    """Seconds and bytes of one sequential read of a file (or of its bytes ``start:stop``)."""
    total = 0
    begin = time.perf_counter()
    with open(path, "rb", buffering=0) as file:
        file.seek(start)
        while stop is None or start + total < stop:
            want = CHUNK if stop is None else min(CHUNK, stop - start - total)
            count = file.readinto(_BUFFER[:want])
            if not count:
                break
            total += count
    return time.perf_counter() - begin, total


def write_fsync(path: str | Path, data) -> None:
    """Write ``data`` (any buffer) to a new file and fsync it: the physical limit of storing a value locally."""
    view = memoryview(data).cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while view:
            view = view[os.write(fd, view):]  # one write() stops short of 2 GiB
        os.fsync(fd)
    finally:
        os.close(fd)


# -- processes -----------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MachineCpu:
    """CPU seconds the whole machine spent (every process and the kernel, all cores) while the block ran, from
    /proc/stat: shows whether a measurement was bound by the CPU rather than by the network it plays."""

    cores = os.cpu_count() or 1

    def __enter__(self) -> "MachineCpu":
        self._start = self._busy_and_wall()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, wall = self._busy_and_wall()
        self.seconds = busy - self._start[0]
        self.share = self.seconds / max(1e-9, (wall - self._start[1]) * self.cores)

    @staticmethod
    def _busy_and_wall() -> tuple[float, float]:
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:]]
        idle = ticks[3] + ticks[4]  # idle and iowait
        return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), time.monotonic()


def memory(pid: int) -> dict[str, int]:
    """A process's resident memory now (``VmRSS``) and at its peak (``VmHWM``), in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values


# -- verdicts ------------------------------------------------------------------------------------------------

@dataclass
class Results:
    """The verdict lines of a run, printed together at the end."""

    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def at_least(self, name: str, ratio: float, goal: float | None, detail: str) -> None:
        """A speed ratio (higher is better) against its goal; ``goal=None``: printed for information."""
        verdict = "info" if goal is None else "ok" if ratio >= goal else "BELOW GOAL"
        goal_text = "" if goal is None else f"(goal >= {goal:.2g}x)"
        self.lines.append((name, f"{ratio:7.2f}x {goal_text:<18} [{verdict}]", detail))

    def at_most(self, name: str, value: float, limit: float, detail: str, unit: str = "x") -> None:
        """A cost (lower is better: bytes, a time ratio, requests) that must stay <= ``limit``."""
        goal_text = f"(goal <= {limit:.4g}{unit})"
        self.lines.append((name, f"{value:7.2f}{unit:<1} {goal_text:<18} [{'ok' if value <= limit else 'OVER'}]",
                           detail))

    def print(self, title: str) -> None:
        print()
        print(title)
        width = max((len(name) for name, _, _ in self.lines), default=0)
        for name, verdict, detail in self.lines:
            print(f"  {name:<{width}}  {verdict}  {detail}")
        sys.stdout.flush()


# -- S3 ------------------------------------------------------------------------------------------------------

def start_s3(kind: str = "s3rver", directory: str | Path | None = None):
    """A started local S3 server: ``s3rver`` (ranged GETs cost their bytes; the default) or ``moto``.

    s3rver's objects go to ``directory``, by default on tmpfs (``/dev/shm``) when there is one: dropping the page
    cache then empties djfs's caches but not the 'remote' server's disks, as with a real S3.
    """
    from djfs.testing.s3 import MotoServer
    from djfs.testing.s3rver import S3rver
    if kind == "moto":
        return MotoServer().start()
    if kind != "s3rver":
        raise ValueError(f"unknown S3 server {kind!r}: s3rver or moto")
    tmpfs = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return S3rver(directory=directory, parent=tmpfs).start()


def stop_s3(server) -> None:
    server.__exit__(None, None, None)


class RemoteS3:
    """``server`` as a remote S3: through a relay adding ``delay`` per request, ``connection_rate`` per connection."""

    def __init__(self, server, delay: float = REMOTE_DELAY, connection_rate: float = REMOTE_CONNECTION_RATE) -> None:
        from djfs.testing.relay import Relay
        self.server = server
        self.relay = Relay(server.port, delay=delay, connection_rate=connection_rate)
        self.delay, self.connection_rate = delay, connection_rate

    def location(self, prefix: str) -> str:
        return f"s3+http://127.0.0.1:{self.relay.port}/{prefix}"

    def client(self, connections: int = 10):
        return self.server.client(self.relay.endpoint, max_pool_connections=connections)

    def describe(self) -> str:
        return (f"{self.delay * 1000:.0f} ms per request, {self.connection_rate / MiB:.0f} MiB/s per connection "
                f"({type(self.server).__name__})")

    def close(self) -> None:
        self.relay.close()


def single_get(client, bucket: str, key: str) -> tuple[float, float]:
    """Seconds and this process's CPU seconds for one plain GET of a whole object, read and dropped."""
    cpu = time.process_time()

    def get() -> int:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        return sum(len(chunk) for chunk in iter(lambda: body.read(CHUNK), b""))
    seconds, _ = timed(get)
    return seconds, time.process_time() - cpu


def _s3transfer(client, bucket: str, key: str, sink: Any, threads: int) -> float:
    """Seconds of boto3's ``download_fileobj`` into ``sink`` (s3transfer: ``threads`` parallel ranged GETs of 8 MiB)."""
    from boto3.s3.transfer import TransferConfig
    config = TransferConfig(max_concurrency=threads, multipart_chunksize=8 * MiB, multipart_threshold=8 * MiB)
    seconds, _ = timed(lambda: client.download_fileobj(bucket, key, sink, Config=config))
    return seconds


def s3transfer_download(client, bucket: str, key: str, threads: int = 8) -> tuple[float, float]:
    """Seconds and CPU seconds of s3transfer's download into /dev/null (seekable, so parts are written where they
    go, not buffered): the ceiling for one object."""
    cpu = time.process_time()
    with open(os.devnull, "wb") as sink:
        seconds = _s3transfer(client, bucket, key, sink, threads)
    return seconds, time.process_time() - cpu


class _VerifiedCopy:
    """A sink for ``download_fileobj`` doing what a verifying, caching reader must do with every byte: SHA-256 it
    and write it to a file.  Not seekable, so s3transfer hands the parts over in order (as the digest needs)."""

    def __init__(self, file: Any) -> None:
        import hashlib
        self.file = file
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data)


def s3transfer_verified_copy(client, bucket: str, key: str, directory: Path, threads: int = 8) -> float:
    """Seconds of s3transfer's download into a SHA-256 and a file on disk (removed after): s3transfer doing the
    work a verified, cached read has to do, without the FUSE delivery."""
    path = directory / "verified-copy"
    try:
        with open(path, "wb") as file:
            return _s3transfer(client, bucket, key, _VerifiedCopy(file), threads)
    finally:
        path.unlink(missing_ok=True)


def ranged_gets(client, bucket: str, key: str, ranges: list[tuple[int, int]], threads: int = 8) -> float:
    """Seconds for one ranged GET per ``(offset, size)``, ``threads`` at a time: what random reads need at least."""
    def get(piece: tuple[int, int]) -> int:
        offset, size = piece
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + size - 1}")["Body"]
        return len(body.read())
    with ThreadPoolExecutor(threads) as pool:
        seconds, sizes = timed(lambda: list(pool.map(get, ranges)))
    assert sizes == [size for _, size in ranges], "short ranged GETs"
    return seconds


# -- mounts --------------------------------------------------------------------------------------------------

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


def mount_stats(mountpoint: str) -> dict[str, Any]:
    """The daemon's counters (``store_requests``, ``store_bytes``, ...), read through the mount."""
    return json.loads(os.getxattr(mountpoint, "user.djfs.stats"))


class Lab:
    """A private MariaDB and S3 server under ``root``, djfs configured for them, and djfs mounts.

    ``with Lab(root) as lab:`` then ``lab.connection``, ``lab.s3``, ``lab.bucket``, ``lab.mount(...)``.
    """

    def __init__(self, root: Path, s3: str = "s3rver", cache: bool = True) -> None:
        self.root = root
        self.s3_kind = s3
        self.cache = root / "cache" if cache else None
        self._caches = 0
        self.db = self.s3 = None
        self.settings: dict[str, Any] = {}

    def start(self) -> "Lab":
        import djfs
        from djfs.testing.mariadb import MariaDBServer
        print(f"starting MariaDB and the {self.s3_kind} S3 server in {self.root} ...", flush=True)
        self.db = MariaDBServer(self.root / "mariadb").start()
        self.s3 = start_s3(self.s3_kind)
        account, token = self.s3.credentials
        self.settings = {"database.host": self.db.host, "database.port": self.db.port, "database.user": self.db.user,
                         "database.password": self.db.password, "external-location": self.s3.location("bench"),
                         "external-account": account, "external-token": token, "progress": False}
        if self.cache is not None:
            self.settings.update({"cache-location": str(self.cache), "cache-size": "4GiB"})
        self.use(self.s3.location("bench"))
        self.connection = djfs.conn(reset=True)
        return self

    def use(self, location: str) -> None:
        """Point the library (this process) at ``location``, e.g. a ``RemoteS3``'s."""
        import djfs
        from djfs.stores import clear_store_cache
        self.settings["external-location"] = location
        for key, value in self.settings.items():
            djfs.config[key] = value
        clear_store_cache()

    def mount(self, options: Iterable[str] = (), location: str | None = None) -> tuple[str, subprocess.Popen]:
        """A djfs daemon mounted on a fresh directory, reading the store at ``location`` (default: the library's)."""
        settings = {key: value for key, value in self.settings.items() if not key.startswith("database.")}
        if location is not None:
            settings["external-location"] = location
        config = Path(tempfile.mkstemp(prefix="config-", suffix=".json", dir=self.root)[1])
        config.write_text(json.dumps(settings))
        env = {key: value for key, value in os.environ.items() if not key.startswith(("DJ_", "AWS_"))}
        env.update(DJ_HOST=self.db.host, DJ_PORT=str(self.db.port), DJ_USER=self.db.user,
                   DJ_PASS=self.db.password or "", DJ_CONFIG=str(config))
        mountpoint = tempfile.mkdtemp(prefix="djfs-mnt-", dir=self.root)
        process = subprocess.Popen([sys.executable, "-m", "djfs.cli", "mount", "-f", mountpoint, "-o",
                                    ",".join(options), "--log-file", str(self.root / "daemon.log")], env=env)
        wait_mounted(mountpoint, process)
        return mountpoint, process

    def clear_cache(self) -> None:
        """An empty cache from now on, for the library and new mounts: a new directory (the library keeps one
        cache instance per location, which must not see its directory vanish), the old one removed."""
        import shutil

        from djfs.cache import open_cache
        if self.cache is None:
            return
        open_cache(self.cache, self.settings["cache-size"]).flush()  # the library's background fills, done first
        shutil.rmtree(self.cache, ignore_errors=True)
        self._caches += 1
        self.cache = self.root / f"cache-{self._caches}"
        self.settings["cache-location"] = str(self.cache)
        self.use(self.settings["external-location"])

    def close(self) -> None:
        if self.s3 is not None:
            stop_s3(self.s3)
        if self.db is not None:
            self.db.stop()

    def __enter__(self) -> "Lab":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
