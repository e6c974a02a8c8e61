"""The low-level libfuse binding (``djfs.fs.lowlevel``), mounted for real: ``djfs.testing.memoryfs`` in a daemon
process, its requests counted (``user.memoryfs.calls``), listings kept by the kernel (opendir answered ENOSYS)."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from djfs.fs.mount import is_mounted
from djfs.testing.memoryfs import ADD_XATTR, CALLS_XATTR, FORGET_XATTR, INODES_XATTR, QUIET, content, frames
from fixtures_fuse import errno_of, wait_for

ROWS = 40


class MemoryMount:
    """``python -m djfs.testing.memoryfs`` on a mount point of its own, always unmounted at the end."""

    def __init__(self, mountpoint: Path, *options: str) -> None:
        self.mountpoint = mountpoint
        self.log = mountpoint.with_suffix(".log")
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen([sys.executable, "-m", "djfs.testing.memoryfs", str(mountpoint),
                                             "--rows", str(ROWS), *options], stdout=output, stderr=subprocess.STDOUT)
        if not wait_for(lambda: self.process.poll() is not None or is_mounted(str(mountpoint)), timeout=30):
            self.stop()
            raise AssertionError(f"memoryfs did not mount: {self.log.read_text()}")
        assert self.process.poll() is None, self.log.read_text()

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def calls(self) -> dict[str, int]:
        return json.loads(os.getxattr(self.mountpoint, CALLS_XATTR))

    def inodes(self) -> int:
        return int(os.getxattr(self.mountpoint, INODES_XATTR))

    def stop(self) -> None:
        target = str(self.mountpoint)
        if is_mounted(target) and subprocess.run(["fusermount3", "-u", target]).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", target])
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def memory_mounts(fuse_available, tmp_path) -> Iterator:
    started: list[MemoryMount] = []

    def start(*options: str) -> MemoryMount:
        mountpoint = tmp_path / f"mnt-{len(started)}"
        mountpoint.mkdir()
        started.append(MemoryMount(mountpoint, *options))
        return started[-1]
    try:
        yield start
    finally:
        for mount in started:
            mount.stop()


@pytest.fixture(scope="module")
def memory(fuse_available, tmp_path_factory) -> Iterator[MemoryMount]:
    """One read-only mount for the module's tests."""
    mountpoint = tmp_path_factory.mktemp("lowlevel") / "mnt"
    mountpoint.mkdir()
    mount = MemoryMount(mountpoint)
    try:
        yield mount
    finally:
        mount.stop()


def test_listings_and_attributes(memory: MemoryMount) -> None:
    assert os.listdir(memory.mountpoint) == ["Trial"]
    assert sorted(os.listdir(memory.path("Trial"))) == sorted(f"trial={i}" for i in range(ROWS))
    assert sorted(os.listdir(memory.path("Trial", "trial=3"))) == ["frames.npy", "row.json"]
    for path, size in ((memory.path("Trial", "trial=3", "frames.npy"), 192),
                       (memory.path("Trial", "trial=3", "row.json"), 20)):
        attributes = os.stat(path)
        assert stat.S_ISREG(attributes.st_mode) and stat.S_IMODE(attributes.st_mode) == 0o444
        assert attributes.st_size == size
    assert stat.S_ISDIR(os.stat(memory.path("Trial", "trial=3")).st_mode)
    assert errno_of(os.stat, memory.path("Trial", "trial=99999")) == errno.ENOENT
    assert errno_of(os.listdir, memory.path("Trial", "trial=3", "row.json")) == errno.ENOTDIR
    # every directory and file through ls -lR, with the attributes readdirplus handed over
    lines = subprocess.run(["ls", "-lR", str(memory.path("Trial"))], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    files = [line.split() for line in lines if line.startswith("-")]
    assert len(files) == 2 * ROWS
    assert sorted({(line[4], line[-1]) for line in files}) == [("192", "frames.npy"), ("20", "row.json")]


def check_reads(mount: MemoryMount, trial: int) -> None:
    frames_path = mount.path("Trial", f"trial={trial}", "frames.npy")
    np.testing.assert_array_equal(np.load(frames_path), frames(trial))
    assert json.loads(mount.path("Trial", f"trial={trial}", "row.json").read_text()) == {"trial": trial}
    with open(frames_path, "rb") as file:  # a read at an offset, past the end
        file.seek(100)
        assert file.read(10) == content(f"/Trial/trial={trial}/frames.npy")[100:110]
        file.seek(190)
        assert file.read(10) == frames_path.read_bytes()[190:] and len(frames_path.read_bytes()) == 192


def test_reading_a_file_by_descriptor(memory: MemoryMount) -> None:
    """read_buf: (descriptor, position, length) segments sent with fuse_reply_data, the bytes never in Python."""
    before = memory.calls()
    check_reads(memory, 7)
    after = memory.calls()
    assert after["fd_segments"] > before.get("fd_segments", 0) and "copied_reads" not in after


def test_reading_a_file_through_python(memory_mounts) -> None:
    mount = memory_mounts("--copy-reads")
    check_reads(mount, 9)
    assert mount.calls()["copied_reads"] > 0 and "fd_segments" not in mount.calls()


def test_a_listing_is_served_again_by_the_kernel(memory_mounts) -> None:
    mount = memory_mounts()  # its own: nothing listed yet
    directory = mount.path("Trial", "trial=11")
    before = mount.calls()
    assert sorted(os.listdir(directory)) == ["frames.npy", "row.json"]
    first = mount.calls()
    assert first.get("readdirplus", 0) > before.get("readdirplus", 0)
    for _ in range(3):
        assert sorted(os.listdir(directory)) == ["frames.npy", "row.json"]
    again = mount.calls()
    assert again.get("readdirplus", 0) == first.get("readdirplus", 0)
    assert again.get("readdir", 0) == first.get("readdir", 0) == 0
    assert again.get("opendir", 0) <= 1 and "releasedir" not in again  # the first ENOSYS stops both for good


def test_answering_opendir_keeps_no_listing(memory_mounts) -> None:
    """The other way round (what libfuse's high-level API does): each listing reaches Python again."""
    mount = memory_mounts("--opendir")
    directory = mount.path("Trial", "trial=2")

    def settled() -> dict[str, int]:  # RELEASEDIR follows close() asynchronously: counted once it came
        return wait_for(lambda: (calls := mount.calls()).get("releasedir", 0) == calls["opendir"] and calls)
    os.listdir(directory)
    first = settled()
    os.listdir(directory)
    again = settled()
    assert again["readdirplus"] > first["readdirplus"]
    assert again["opendir"] == first["opendir"] + 1 and again["releasedir"] == first["releasedir"] + 1


def test_a_changed_listing_is_seen_after_invalidation(memory_mounts) -> None:
    mount = memory_mounts("--writable")
    told, quiet = mount.path("Trial", "trial=1"), mount.path("Trial", "trial=2")
    for directory in (told, quiet, told, quiet):  # kept by the kernel from the first listing on
        assert sorted(os.listdir(directory)) == ["frames.npy", "row.json"]
    kept = mount.calls()["readdirplus"]
    # added without telling the kernel: it keeps serving the listing it has
    os.setxattr(mount.mountpoint, ADD_XATTR, f"{QUIET}/Trial/trial=2/new.txt".encode())
    assert sorted(os.listdir(quiet)) == ["frames.npy", "row.json"]
    assert mount.calls()["readdirplus"] == kept
    # added and the directory's inode invalidated (notify_inval_inode): listed anew, with the new name
    os.setxattr(mount.mountpoint, ADD_XATTR, b"/Trial/trial=1/new.txt")
    assert sorted(os.listdir(told)) == ["frames.npy", "new.txt", "row.json"]
    assert mount.calls()["readdirplus"] > kept
    assert os.stat(told / "new.txt").st_size == 0


def test_forgotten_inodes_are_given_back_and_found_again(memory_mounts) -> None:
    mount = memory_mounts("--writable")
    subprocess.run(["ls", "-lR", str(mount.mountpoint)], stdout=subprocess.DEVNULL, check=True)
    held = mount.inodes()
    assert held >= 3 * ROWS + 2  # every row directory and file (readdirplus), /Trial and the root
    # the kernel drops the row directories' names (notify_inval_entry), then their unused inodes: FORGETs
    os.setxattr(mount.mountpoint, FORGET_XATTR, b"/Trial")
    assert wait_for(lambda: mount.inodes() <= 3), (held, mount.inodes())
    assert mount.calls().get("forget", 0) + mount.calls().get("forget_multi", 0) > 0
    # the paths come back under new node ids
    np.testing.assert_array_equal(np.load(mount.path("Trial", "trial=5", "frames.npy")), frames(5))
    assert sorted(os.listdir(mount.path("Trial", "trial=5"))) == ["frames.npy", "row.json"]
    assert mount.inodes() > 3


def test_inode_table_counts_lookups() -> None:
    from djfs.fs.lowlevel import ROOT, Inodes
    inodes = Inodes()
    first = inodes.hold(ROOT, "a")
    assert inodes.hold(ROOT, "a") == first and inodes.path(first) == "/a" and inodes.find("/a") == first
    below = inodes.hold(first, "b")
    assert below != first and inodes.path(below) == "/a/b" and inodes.find("/a/b") == below
    assert inodes.child(first, "b") == below and inodes.child(first, "c") is None and inodes.find("/a/c") is None
    inodes.forget(below, 1)
    inodes.forget(first, 1)
    assert inodes.find("/a") == first  # one lookup still held
    inodes.forget(first, 1)
    assert inodes.find("/a") is None and len(inodes) == 1
    with pytest.raises(OSError) as raised:
        inodes.path(first)
    assert raised.value.errno == errno.ESTALE
    assert inodes.hold(ROOT, "a") == first  # the same entry comes back under its number (a hash of it)
    inodes.forget(ROOT, 5)
    assert inodes.path(ROOT) == "/" and inodes.find("/") == ROOT


def test_inode_table_entries_whose_numbers_collide(monkeypatch) -> None:
    """Entries whose hash is the same node id: the first held takes it, the others the next numbers past
    OVERFLOW; each is found, counted and forgotten on its own, and a colliding entry forgotten frees nothing
    of the others."""
    from djfs.fs import lowlevel
    monkeypatch.setattr(lowlevel, "_home", lambda parent, name: 7)  # every entry collides
    inodes = lowlevel.Inodes()
    a, b, c = (inodes.hold(lowlevel.ROOT, name) for name in "abc")
    assert a == 7 and lowlevel.OVERFLOW <= b < c
    assert [inodes.path(number) for number in (a, b, c)] == ["/a", "/b", "/c"]
    assert [inodes.find(path) for path in ("/a", "/b", "/c", "/d")] == [a, b, c, None]
    assert inodes.hold(lowlevel.ROOT, "b") == b  # counted: two lookups
    below = inodes.hold(b, "x")
    assert inodes.path(below) == "/b/x" and inodes.find("/b/x") == below
    inodes.forget(a, 1)  # the home number is free again; b and c keep theirs
    assert inodes.find("/a") is None and inodes.find("/b") == b and inodes.find("/c") == c
    assert inodes.hold(lowlevel.ROOT, "d") == 7 and inodes.path(7) == "/d"
    inodes.forget(b, 1)
    assert inodes.find("/b") == b
    inodes.forget(b, 1)
    inodes.forget(c, 1)
    assert inodes.find("/b") is None and inodes.find("/c") is None
    assert inodes._overflow == {(b, "x"): below} and len(inodes) == 3  # the root, /d, /b/x (still held)
