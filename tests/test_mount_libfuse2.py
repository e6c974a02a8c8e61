"""The mount under libfuse 2 (``-o libfuse=2``), and the choice of libfuse: 3 by default, even with 2 installed.

The core checks of test_mount run again here against a daemon that loaded libfuse 2 (checked in its memory
maps, its log and its stats): layout, bytes, numpy memory maps, EROFS, the page cache kept across opens, rows
showing up within the timeouts.  libfuse 2 missing is a failure (scripts/test installs it), never a skip.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from djfs.fs import libfuse
from djfs.fs.mount import MountError, MountOptions, daemon_pid, is_mounted, mount_entry
from fixtures_fuse import libfuse_mapped, wait_for
from test_mount import (  # noqa: F401  (fixtures and tests of test_mount, run here under libfuse 2)
    fetch_row, lab, mount_lab, row_dir, test_every_file_equals_fetch, test_layout, test_npy_memory_map_slicing,
    test_page_cache_kept_until_content_changes, test_read_only, test_rows_appear_and_vanish_within_the_listing_timeout)
from test_mount_cli import add_note, cli


@pytest.fixture(scope="module")
def mnt(lab, module_mounts, s3_server):
    """test_mount's mount of the lab schema, with libfuse 2."""
    return mount_lab(lab, module_mounts, s3_server, libfuse=2)


def is_libfuse(names: list[str], version: int) -> bool:
    prefix = {2: "libfuse.so.2", 3: "libfuse3.so.3"}[version]
    return bool(names) and all(name.startswith(prefix) for name in names)


def mount_options(mountpoint) -> tuple[set[str], set[str]]:
    """(mount options, super-block options) of the mount at ``mountpoint``, from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo") as table:
        for line in table:
            left, _, right = line.partition(" - ")
            fields = left.split(" ")
            if fields[4] == str(mountpoint):
                return set(fields[5].split(",")), set(right.split()[2].split(","))
    raise AssertionError(f"{mountpoint} is not in the mount table")


def test_both_libraries_are_installed():
    """What the tests below rely on: a machine where mfusepy, left alone, would pick libfuse 2."""
    assert libfuse.find(2), "libfuse 2 is missing: apt-get install libfuse2 (scripts/test does)"
    assert libfuse.find(3), "libfuse 3 is missing: apt-get install fuse3"


# -- the daemon under libfuse 2 ------------------------------------------------------------------------------


def test_daemon_loaded_libfuse_2(mnt, lab):
    assert is_libfuse(mnt.libfuse(), 2), mnt.libfuse()
    assert mnt.stats()["libfuse"].startswith("libfuse 2.9 ")
    assert "with libfuse 2.9 (libfuse.so.2)" in mnt.log_text()
    # the options djfs passes, as the kernel got them
    assert mount_entry(str(mnt.mountpoint)) == ("fuse.djfs", f"djfs:{lab.name}")
    options, super_options = mount_options(mnt.mountpoint)
    assert "ro" in options and "ro" in super_options
    assert "default_permissions" in super_options and "allow_other" not in super_options


def test_external_npy_is_byte_for_byte_the_fetched_array(mnt, lab):
    row = fetch_row(lab, "m1", 1)
    for name in ("movie", "big"):  # cached whole on open / read by blocks (bigger than whole_max)
        path = row_dir(mnt, lab, "m1", 1) / f"{name}.npy"
        expected = io.BytesIO()
        np.save(expected, np.asfortranarray(row[name]))  # the file is column-major, as the blob stores it
        assert path.read_bytes() == expected.getvalue(), name
        assert path.stat().st_size == len(expected.getvalue())


def test_inode_numbers_are_djfs_own(mnt, lab):
    """use_ino: readdir and stat give djfs's inode numbers (libfuse's own would differ between them)."""
    with os.scandir(row_dir(mnt, lab, "m1", 1)) as entries:
        inodes = {entry.name: (entry.inode(), entry.stat().st_ino) for entry in entries}
    assert len(inodes) == 9
    assert all(listed == stated > 1 for listed, stated in inodes.values()), inodes
    assert len({stated for _, stated in inodes.values()}) == len(inodes)


# test_layout, test_every_file_equals_fetch, test_npy_memory_map_slicing, test_read_only,
# test_page_cache_kept_until_content_changes and test_rows_appear_and_vanish_within_the_listing_timeout run here
# too (imported above), with the libfuse 2 ``mnt`` of this module.


def test_background_mount_and_umount_with_libfuse_2(mounts, schema, tmp_path):
    add_note(schema)
    env = mounts.environment({"cache-location": str(tmp_path / "cache")})
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    (mountpoint / "underneath").write_text("hidden while mounted")  # libfuse 2 mounts here only if told to
    result = cli("mount", str(mountpoint), "-o", f"schemas={schema.database},libfuse=2", "--log-file",
                 str(tmp_path / "daemon.log"), env=env)
    try:
        assert result.returncode == 0, result.stderr
        assert os.listdir(mountpoint) == [schema.database]
        row = mountpoint / schema.database / "Note" / "note=1" / "row.json"
        assert json.loads(row.read_bytes()) == {"note": 1, "text": "hello"}
        pid = daemon_pid(str(mountpoint))
        assert pid is not None and os.getsid(pid) == pid  # in a session of its own, started by `djfs mount`
        assert is_libfuse(libfuse_mapped(pid), 2), libfuse_mapped(pid)
        assert json.loads(os.getxattr(mountpoint, "user.djfs.stats"))["libfuse"].startswith("libfuse 2.")
    finally:
        result = cli("umount", str(mountpoint), env=env)
    assert result.returncode == 0, result.stderr
    assert not is_mounted(str(mountpoint))
    assert wait_for(lambda: daemon_pid(str(mountpoint)) is None, timeout=15)
    assert os.listdir(mountpoint) == ["underneath"]


# -- choosing the library ------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, env, version", [
    ([], {}, 3),                                           # the default, with libfuse 2 installed too
    (["libfuse=3"], {}, 3),
    ([], {"FUSE_LIBRARY_NAME": "fuse"}, 2),                # mfusepy's own variables are honoured ...
    ([], {"FUSE_LIBRARY_PATH": "libfuse.so.2"}, 2),
    (["libfuse=3"], {"FUSE_LIBRARY_NAME": "fuse"}, 3),     # ... unless the mount option says otherwise
], ids=["default", "option-3", "env-name", "env-path", "option-over-env"])
def test_which_libfuse_the_daemon_loads(mounts, schema, options, env, version):
    assert libfuse.find(2) and libfuse.find(3)
    mount = mounts.mount({}, [f"schemas={schema.database}", *options], **env)
    assert is_libfuse(mount.libfuse(), version), mount.libfuse()
    assert mount.stats()["libfuse"].startswith(f"libfuse {version}.")
    assert os.listdir(mount.mountpoint) == [schema.database]


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (mfusepy loads its library once per process), without FUSE_LIBRARY_*."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("FUSE_LIBRARY_")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=60)


def test_nothing_imports_mfusepy_before_the_choice():
    result = python("""
import sys
import djfs, djfs.cli, djfs.fs, djfs.fs.mount, djfs.fs.tree, djfs.fs.reader, djfs.fs.views, djfs.fs.paths
assert "mfusepy" not in sys.modules, "imported too early"
import os
from djfs.fs import operations
assert operations.mfusepy.fuse_version_major == 3, operations.mfusepy.fuse_version_major
assert "FUSE_LIBRARY_PATH" not in os.environ  # set for the import only
from djfs.fs.libfuse import LibfuseError, load_mfusepy
assert load_mfusepy(3) is operations.mfusepy
try:
    load_mfusepy(2)
except LibfuseError as error:
    print(error)
""")
    assert result.returncode == 0, result.stderr
    assert "libfuse 2 was asked for, but this process already uses libfuse 3." in result.stdout
    result = python("from djfs.fs.libfuse import load_mfusepy; print(load_mfusepy(2).fuse_version_major)",
                    FUSE_LIBRARY_NAME="fuse3")  # the explicit choice wins over the environment
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    result = python("from djfs.fs.libfuse import load_mfusepy; load_mfusepy()", FUSE_LIBRARY_PATH="/nowhere/libfuse.so")
    assert result.returncode == 1 and "LibfuseError: can't load libfuse /nowhere/libfuse.so" in result.stderr


def test_libfuse_option_is_checked(monkeypatch, mounts, tmp_path):
    assert MountOptions.parse(["libfuse=2"]).libfuse == 2 and MountOptions.parse([]).libfuse is None
    for bad in ("libfuse=4", "libfuse=two", "libfuse"):
        with pytest.raises(MountError, match="libfuse"):
            MountOptions.parse([bad])
    monkeypatch.setattr(libfuse, "find", lambda version: None if version == 2 else "libfuse3.so.3")
    with pytest.raises(libfuse.LibfuseError, match=r"libfuse 2 is not installed \(apt-get install libfuse2\)"):
        libfuse.resolve(2)
    assert libfuse.resolve(None) == "libfuse3.so.3"
    target = tmp_path / "target"
    target.mkdir()
    result = cli("mount", str(target), "-o", "libfuse=4", env=mounts.environment({}))
    assert result.returncode == 1 and "bad value '4' for mount option 'libfuse'" in result.stderr, result.stderr
    assert not is_mounted(str(target))


def test_daemon_exits_cleanly_when_unmounted_under_libfuse_2(mounts, schema):
    """The daemon's threads (started in init, after mounting) don't keep it alive once unmounted."""
    mount = mounts.mount({}, [f"schemas={schema.database}"], libfuse=2)
    assert os.listdir(mount.mountpoint) == [schema.database]
    start = time.monotonic()
    mount.stop()
    assert mount.process.returncode == 0, mount.log_text()
    assert time.monotonic() - start < 10
