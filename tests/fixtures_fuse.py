"""pytest plugin: real FUSE mounts of djfs, the daemon running as ``python -m djfs.cli mount -f`` in a subprocess.

Loaded by ``tests/conftest.py``.  A mount gets the database credentials through ``DJ_HOST``/``DJ_PORT``/
``DJ_USER``/``DJ_PASS`` in its environment and the rest of its configuration through a ``$DJ_CONFIG`` file,
exactly as a user would run it; it is waited for (the mount table) and always unmounted in teardown, even when
the test failed or the daemon died.  FUSE missing is a failure, never a skip.

A mount uses djfs's default libfuse (3, else 2) unless ``libfuse=2`` or ``3`` is given; the test process's
``FUSE_LIBRARY_*`` variables never reach a daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

import djfs
from djfs.fs.mount import is_mounted
from djfs.stores import clear_store_cache

START_TIMEOUT = 30.0


def require_fuse() -> None:
    """Fail loudly (never skip) when this host can't mount FUSE file systems."""
    problems = []
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing (modprobe fuse, or run the container with --device /dev/fuse)")
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        problems.append("fusermount3 is missing (apt-get install fuse3)")
    if problems:
        pytest.fail("FUSE is required for the mount tests: " + "; ".join(problems), pytrace=False)


class Mount:
    """One djfs daemon and its mount point."""

    def __init__(self, mountpoint: Path, env: dict[str, str], options: list[str], log: Path) -> None:
        self.mountpoint = mountpoint
        self.env = env
        self.options = options
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> "Mount":
        command = [sys.executable, "-m", "djfs.cli", "mount", "-f", str(self.mountpoint)]
        if self.options:
            command += ["-o", ",".join(self.options)]
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(command, env=self.env, stdin=subprocess.DEVNULL, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not (is_mounted(str(self.mountpoint)) and os.path.ismount(self.mountpoint)):
            if self.process.poll() is not None:
                raise AssertionError(f"djfs mount exited with {self.process.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"djfs mount did not come up in {START_TIMEOUT} s:\n{self.log_text()}")
            time.sleep(0.05)
        return self

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def stats(self) -> dict[str, Any]:
        """The daemon's counters (store requests, bytes, SQL queries, opens ...)."""
        return json.loads(os.getxattr(self.mountpoint, "user.djfs.stats"))

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def libfuse(self) -> list[str]:
        """The libfuse files the daemon has mapped (``libfuse3.so.3.14.0``, ``libfuse.so.2.9.9`` ...)."""
        assert self.process is not None
        return libfuse_mapped(self.process.pid)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def run_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "djfs.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def stop(self) -> None:
        """Unmount (lazily if it must) and make sure the daemon is gone."""
        target = str(self.mountpoint)
        if is_mounted(target):
            result = self.run_cli("umount", target, timeout=60)
            if result.returncode != 0 and is_mounted(target):
                subprocess.run(["fusermount3", "-u", "-z", target], capture_output=True)
                if is_mounted(target):
                    subprocess.run(["umount", "-l", target], capture_output=True)
        if self.process is not None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


class Mounts:
    """Makes mounts and unmounts all of them at the end of a scope."""

    def __init__(self, base: Path, mariadb: Any) -> None:
        self.base = base
        self.mariadb = mariadb
        self.mounts: list[Mount] = []

    def environment(self, config: dict[str, Any], **extra: str) -> dict[str, str]:
        """A clean environment: database credentials as DJ_* variables, the rest in a $DJ_CONFIG file."""
        index = len(self.mounts)
        config_file = self.base / f"config-{index}.json"
        config_file.write_text(json.dumps(config))
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("DJ_", "AWS_", "FUSE_LIBRARY_"))}
        env.update(DJ_HOST=self.mariadb.host, DJ_PORT=str(self.mariadb.port), DJ_USER=self.mariadb.user,
                   DJ_PASS=self.mariadb.password or "", DJ_CONFIG=str(config_file))
        env.update(extra)
        return env

    def mount(self, config: dict[str, Any], options: list[str] | tuple = (), start: bool = True,
              libfuse: int | None = None, **extra_env: str) -> Mount:
        """A running mount whose configuration file holds ``config`` (a cache of its own unless given), with
        libfuse ``libfuse`` (2 or 3; None: djfs's default)."""
        if libfuse is not None:
            options = [*options, f"libfuse={libfuse}"]
        index = len(self.mounts)
        config = dict(config)
        config.setdefault("cache-location", str(self.base / f"cache-{index}"))
        mountpoint = self.base / f"mnt-{index}"
        mountpoint.mkdir()
        mount = Mount(mountpoint, self.environment(config, **extra_env), list(options),
                      self.base / f"daemon-{index}.log")
        self.mounts.append(mount)
        return mount.start() if start else mount

    def stop_all(self) -> None:
        for mount in reversed(self.mounts):
            try:
                mount.stop()
            except Exception as error:  # keep going: every mount must be released
                print(f"could not stop {mount.mountpoint}: {error}", file=sys.stderr)


@pytest.fixture(scope="session")
def fuse_available() -> None:
    require_fuse()


@pytest.fixture
def mounts(fuse_available, mariadb, tmp_path) -> Iterator[Mounts]:
    """Mounts that live for one test."""
    registry = Mounts(tmp_path, mariadb)
    try:
        yield registry
    finally:
        registry.stop_all()


@pytest.fixture(scope="module")
def module_mounts(fuse_available, mariadb, tmp_path_factory) -> Iterator[Mounts]:
    """Mounts shared by the tests of a module."""
    registry = Mounts(tmp_path_factory.mktemp("mounts"), mariadb)
    try:
        yield registry
    finally:
        registry.stop_all()


def libfuse_mapped(pid: int) -> list[str]:
    """The libfuse files process ``pid`` has mapped, from /proc/PID/maps: which library it really loaded."""
    with open(f"/proc/{pid}/maps") as maps:
        names = {os.path.basename(line.split()[-1]) for line in maps if len(line.split()) >= 6}
    return sorted(name for name in names if name.startswith(("libfuse.so", "libfuse3.so")))


def wait_for(predicate, timeout: float = 5.0, step: float = 0.05):
    """Poll ``predicate`` until it gives something true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def quiet_windows(mount: "Mount", action, attempts: int = 3) -> list[dict[str, int]]:
    """Run ``action`` until, during one run, no request reached the daemon (but the ``getxattr`` of its stats)
    and it ran no SQL; returns what each run cost (``calls.*`` and ``sql``), the quiet one last ({}).  Several
    tries, because something else on the machine (a benchmark's ``drop_caches``) may drop what the kernel keeps
    in the middle of one; with nothing kept, no run is quiet."""
    windows: list[dict[str, int]] = []
    for _ in range(attempts):
        before = mount.stats()
        action()
        after = mount.stats()
        window = {key: after[key] - before.get(key, 0) for key in after
                  if key.startswith("calls.") and key != "calls.getxattr" and after[key] != before.get(key, 0)}
        if after.get("sql_queries", 0) != before.get("sql_queries", 0):
            window["sql"] = after["sql_queries"] - before["sql_queries"]
        windows.append(window)
        if not window:
            break
    return windows


def listing_or_errno(path) -> list[str] | int:
    """A directory's sorted names, or the errno listing it fails with."""
    try:
        return sorted(os.listdir(path))
    except OSError as error:
        return error.errno


def errno_of(function, *args) -> int | None:
    """The errno ``function(*args)`` fails with, or None if it succeeds."""
    try:
        function(*args)
    except OSError as error:
        return error.errno
    return None


def s3_config(server: Any, prefix: str = "mnt", **extra: Any) -> dict[str, Any]:
    """A djfs configuration for ``server`` (moto), with short store timeouts so failures come fast."""
    account, token = server.credentials
    config = {"external-location": server.location(prefix), "external-account": account, "external-token": token,
              "store-timeout": 2.0, "store-retries": 1}
    config.update(extra)
    return config


@contextmanager
def module_schema(mariadb: Any, prefix: str, settings: dict[str, Any],
                  storage: str | None = None) -> Iterator[SimpleNamespace]:
    """A schema ``djfs_<prefix>_<pid>`` for the tests of a module (a mounted daemon sees it under that name),
    with djfs.config pointed at the session's MariaDB plus ``settings`` while it lives; ``storage`` is the
    schema's folder or bucket.  Dropped afterwards, even when the module's setup failed half-way.

    Yields ``schema``, ``name``, ``connection``, ``settings`` (the whole configuration, database included) and
    ``storage``.
    """
    settings = {"database.host": mariadb.host, "database.port": mariadb.port, "database.user": mariadb.user,
                "database.password": mariadb.password, **settings}
    name = f"djfs_{prefix}_{os.getpid()}"
    with djfs.config.override(**settings):
        clear_store_cache()
        connection = djfs.conn(reset=True)
        try:
            schema = djfs.Schema(name, connection=connection)
            if storage is not None:
                schema.set_external_storage(storage)
            yield SimpleNamespace(schema=schema, name=name, connection=connection, settings=settings,
                                  storage=storage)
        finally:
            connection.query(f"DROP DATABASE IF EXISTS `{name}`")
    djfs.conn(reset=True)
    clear_store_cache()


def s3_module_schema(mariadb: Any, s3_server: Any, prefix: str,
                     root: Path) -> AbstractContextManager[SimpleNamespace]:
    """``module_schema`` on a fresh bucket of ``s3_server`` (short store timeouts), with the library's cache in
    ``root``."""
    bucket = s3_server.create_bucket(f"djfs-{prefix}-{uuid.uuid4().hex[:12]}")
    return module_schema(mariadb, prefix, {"cache-location": str(root / "library-cache"), **s3_config(s3_server)},
                         bucket)
