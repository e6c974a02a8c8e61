"""``djfs mount`` in the background, ``djfs umount`` (also of a dead daemon's mount), refusals, ``gc``, ``cache``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import djfs
from djfs.fs.mount import daemon_pid, is_mounted

PASSWORD = "Sekr1t-" + uuid.uuid4().hex[:10]


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "djfs.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def lab_user(connection):
    """A database account with a password, so the test can look for the password where it must not be."""
    user = f"mnt_{uuid.uuid4().hex[:8]}"
    connection.query(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (PASSWORD,))
    connection.query(f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%'")
    yield user
    connection.query(f"DROP USER '{user}'@'%'")


def add_note(schema) -> None:
    """A small table with one row (``Note/note=1/row.json``) for the tests of the command line."""
    @schema
    class Note(djfs.Manual):
        definition = """
        note : int
        ---
        text : varchar(32)
        """
    Note.insert1({"note": 1, "text": "hello"})


def test_background_mount_keeps_credentials_out_of_sight(mounts, schema, lab_user, tmp_path):
    add_note(schema)
    env = mounts.environment({"cache-location": str(tmp_path / "cache")}, DJ_USER=lab_user, DJ_PASS=PASSWORD)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "daemon.log"
    result = cli("mount", str(mountpoint), "-o", f"schemas={schema.database}", "--log-file", str(log), env=env)
    try:
        assert result.returncode == 0, result.stderr
        assert is_mounted(str(mountpoint))
        row = mountpoint / schema.database / "Note" / "note=1" / "row.json"
        assert json.loads(row.read_bytes()) == {"note": 1, "text": "hello"}
        pid = daemon_pid(str(mountpoint))
        assert pid is not None and pid != os.getpid()
        for process in Path("/proc").iterdir():
            if process.name.isdigit():
                try:
                    assert PASSWORD.encode() not in (process / "cmdline").read_bytes()
                except OSError:
                    pass
        assert PASSWORD not in log.read_text()
    finally:
        result = cli("umount", str(mountpoint), env=env)
    assert result.returncode == 0, result.stderr
    assert not is_mounted(str(mountpoint))
    deadline = time.monotonic() + 15
    while daemon_pid(str(mountpoint)) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon_pid(str(mountpoint)) is None  # the daemon went away with its mount


def test_umount_clears_a_dead_daemons_mount(mounts, schema):
    mount = mounts.mount({}, [f"schemas={schema.database}"])
    assert os.listdir(mount.mountpoint) == [schema.database]
    os.killpg(mount.process.pid, signal.SIGKILL)
    mount.process.wait(timeout=10)
    with pytest.raises(OSError):  # "Transport endpoint is not connected" (statvfs: the kernel always asks; a
        os.statvfs(mount.mountpoint)  # listing may still come from what it keeps, with the low-level API)
    assert is_mounted(str(mount.mountpoint))
    result = mount.run_cli("umount", str(mount.mountpoint))
    assert result.returncode == 0, result.stderr
    assert "stale" in result.stdout
    assert not is_mounted(str(mount.mountpoint))
    assert os.listdir(mount.mountpoint) == []


def test_mount_refuses_what_it_cannot_do(mounts, tmp_path):
    env = mounts.environment({})
    target = tmp_path / "target"
    target.mkdir()
    for options, message in [("rw", "read-only"), ("block_size=lots", "block_size"), ("file_mode=999", "file_mode"),
                             ("fuse_api=middle", "fuse_api is low or high"),
                             ("fuse_api=low,libfuse=2", "fuse_api=low needs libfuse 3"),
                             # libfuse's high-level options: not taken by the low-level session (the default)
                             ("kernel_cache,allow_root", "kernel_cache not accepted"),
                             ("no_such_thing=1", "no_such_thing=1 not accepted")]:
        result = cli("mount", str(target), "-o", options, env=env)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert "unknown option" not in result.stderr  # libfuse's own complaint is not shown: djfs's says it all
    afile = tmp_path / "file"
    afile.write_text("x")
    result = cli("mount", str(afile), env=env)
    assert result.returncode == 1 and "not an existing directory" in result.stderr
    result = cli("mount", str(target), env={**env, "DJ_PORT": "1"})
    assert result.returncode == 1 and "database" in result.stderr
    result = cli("umount", str(target), env=env)
    assert result.returncode == 1 and "not mounted" in result.stderr
    assert not is_mounted(str(target))


def test_gc_and_cache_commands(mounts, schema, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    cache = tmp_path / "cache"
    settings = {"external-location": f"file://{store}", "cache-location": str(cache)}
    with djfs.config.override(**settings):
        schema.set_external_storage("lab")

        @schema
        class Trace(djfs.Manual):
            definition = """
            trace : int
            ---
            values : external
            """
        Trace.insert([{"trace": i, "values": np.arange(100.0) * i} for i in range(3)])
        np.testing.assert_array_equal((Trace & {"trace": 2}).fetch1("values"), np.arange(100.0) * 2)  # cached
        (Trace & {"trace": 1}).delete_quick()
    env = mounts.environment(settings)
    result = cli("gc", schema.database, env=env)
    assert result.returncode == 0, result.stderr
    assert "would remove 1 " in result.stdout
    result = cli("gc", schema.database, "--run", "--grace", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert "removed 1 " in result.stdout
    result = cli("gc", "no_such_schema_here", env=env)
    assert result.returncode == 1 and "does not exist" in result.stderr

    result = cli("cache", "info", env=env)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["objects"] >= 1 and info["usage"] > 0
    result = cli("cache", "clear", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(cli("cache", "info", env=env).stdout)["objects"] == 0
