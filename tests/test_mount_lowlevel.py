"""The libfuse 3 mount through the low-level API (``djfs.fs.carrier``, the default) against the high-level one
(``-o fuse_api=high``): the same listings and bytes, reads by descriptor, listings kept by the kernel, names of
vanished rows dropped at once, negative entries."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest

import djfs
from djfs.fs.mount import is_mounted
from fixtures_fuse import errno_of, module_schema, quiet_windows, wait_for

ROWS = 12
#: long kernel timeouts and a quick watcher: what changes reaches the kernel only through invalidation
LONG = ["entry_timeout=60", "attr_timeout=60", "listing_timeout=0.3"]


def frames(animal: str, trial: int) -> np.ndarray:
    """A row's array: random, so its blob is stored uncompressed and its file is an npy header + stored bytes."""
    return np.random.default_rng([ord(animal[0]), trial]).random(trial * 5000)


@pytest.fixture(scope="module")
def lab(mariadb, tmp_path_factory):
    """A table of external arrays in a file store, with a second key level."""
    root = tmp_path_factory.mktemp("lowlevel-store")
    with module_schema(mariadb, "lowlevel", {"external-location": f"file://{root}",
                                             "cache-location": str(root / "library-cache")}, "lab") as lab:
        @lab.schema
        class Trial(djfs.Manual):
            definition = """
            animal : varchar(16)
            trial : int
            ---
            note = "" : varchar(32)
            frames : external
            """
        Trial.insert([dict(animal=animal, trial=trial, note=f"{animal}{trial}", frames=frames(animal, trial))
                      for animal in ("ann", "bob") for trial in range(1, ROWS // 2 + 1)])
        yield SimpleNamespace(name=lab.name, Trial=Trial, connection=lab.connection, settings=lab.settings,
                              config={"external-location": f"file://{root}"})


def tree_of(root) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: relative path -> (size, SHA-256 of its bytes)."""
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as file:
                found[os.path.relpath(path, root)] = (os.stat(path).st_size, hashlib.sha256(file.read()).hexdigest())
    return found


def listing(root) -> list[str]:
    """``ls -lR`` of ``root``, ``ROOT`` for its path, without times (a directory's is its daemon's start)."""
    lines = subprocess.run(["ls", "-lR", "--time-style=+", str(root)], capture_output=True, text=True,
                           check=True).stdout.replace(str(root), "ROOT").splitlines()
    return lines


def test_both_apis_serve_the_same_listings_and_bytes(lab, mounts):
    low = mounts.mount(lab.config, [f"schemas={lab.name}"])
    high = mounts.mount(lab.config, [f"schemas={lab.name}", "fuse_api=high"])
    assert low.stats()["fuse_api"] == "low" and "fuse_api" not in high.stats()
    assert "libfuse3" in "".join(low.libfuse()) and "libfuse3" in "".join(high.libfuse())
    assert listing(low.path(lab.name)) == listing(high.path(lab.name))
    files = tree_of(low.path(lab.name))
    assert len(files) == 2 * ROWS and files == tree_of(high.path(lab.name))
    np.testing.assert_array_equal(np.load(low.path(lab.name, "Trial", "animal=bob", "trial=3", "frames.npy")),
                                  frames("bob", 3))


def test_reads_go_by_descriptor_through_the_low_level_api(lab, mounts, tmp_path):
    """read_buf: the bytes of checked block files go to the kernel as (descriptor, position) segments through
    fuse_reply_data, never through Python; with read_buf=0 they are copied through Python, the same bytes."""
    options = [f"schemas={lab.name}", "whole_max=1KiB"]  # read by blocks, each checked and cached on first read
    cache = tmp_path / "fd-cache"
    by_fd = mounts.mount({**lab.config, "cache-location": str(cache)}, options)
    copied = mounts.mount(lab.config, [*options, "read_buf=0"])
    path = (lab.name, "Trial", "animal=ann", "trial=6", "frames.npy")
    first = by_fd.path(*path).read_bytes()  # its block is fetched, checked and cached
    assert len(first) > 200_000
    # the block file is written in the background; a daemon copies blocks it holds in memory, so the re-read is
    # made by a new daemon on the same cache, which reads the block file by descriptor
    assert wait_for(lambda: any(path.is_file() for path in (cache / "blocks").rglob("*")), timeout=10)
    by_fd.stop()
    by_fd.start()
    before = by_fd.stats()
    with open(by_fd.path(*path), "rb") as file:
        file.seek(4096)  # past the npy header (which comes from memory): the data only
        again = file.read()
    after = by_fd.stats()
    reads = after.get("reads", 0) - before.get("reads", 0)
    assert again == first[4096:] and copied.path(*path).read_bytes() == first
    assert reads > 0 and after.get("reads_by_descriptor", 0) - before.get("reads_by_descriptor", 0) == reads
    assert copied.stats().get("reads_by_descriptor", 0) == 0 and copied.stats()["reads"] > 0


def test_splice_says_whether_libfuse_can_splice_replies_here(lab, mounts):
    """-o splice: libfuse splices a 1 MiB read's reply only through a pipe over 1 MiB; where this process can't grow
    one (fs.pipe-max-size without CAP_SYS_RESOURCE) the daemon says so, and the bytes are the same either way."""
    from djfs.fs.libfuse import SPLICE_PIPE, pipe_holds
    plain = mounts.mount(lab.config, [f"schemas={lab.name}"])
    spliced = mounts.mount(lab.config, [f"schemas={lab.name}", "splice=1"])
    path = (lab.name, "Trial", "animal=ann", "trial=6", "frames.npy")
    assert spliced.path(*path).read_bytes() == plain.path(*path).read_bytes()
    can = pipe_holds(SPLICE_PIPE)
    assert spliced.stats()["splice"] == ("on" if can else "off") and "splice" not in plain.stats()
    assert ("fs.pipe-max-size" in spliced.log_text()) != can


def test_a_warm_listing_reaches_no_python(lab, mounts):
    mount = mounts.mount(lab.config, [f"schemas={lab.name}", *LONG])
    table = mount.path(lab.name, "Trial")
    cold = listing(table)
    # the kernel keeps the listings: listed again, no request reaches the daemon, no SQL
    windows = quiet_windows(mount, lambda: listing(table) == cold or pytest.fail("another listing"))
    assert windows[-1] == {}, windows


def test_a_vanished_row_is_gone_at_once_after_the_watcher_tick(lab, mounts):
    mount = mounts.mount(lab.config, [f"schemas={lab.name}", *LONG])
    table = mount.path(lab.name, "Trial", "animal=bob")
    row = table / "trial=2"
    listing(table)
    assert (row / "frames.npy").stat().st_size > 0  # the kernel holds the names and attributes for 60 s
    ticks = mount.stats().get("invalidated_paths", 0)
    with djfs.config.override(**lab.settings):
        lab.connection.query(f"DELETE FROM `{lab.name}`.`trial` WHERE animal = %s AND trial = %s", ("bob", 2))
    try:
        assert wait_for(lambda: mount.stats().get("invalidated_paths", 0) > ticks, timeout=10)
        time.sleep(0.1)  # the watcher's notifications of this round are all sent
        before = mount.stats()
        assert errno_of(os.stat, row / "frames.npy") == errno.ENOENT  # at once: no waiting out the timeouts
        assert errno_of(os.stat, row) == errno.ENOENT
        after = mount.stats()
        assert "trial=2" not in os.listdir(table) and "trial=3" in os.listdir(table)
        # the kernel dropped the name (notify_inval_entry), so it looked it up; it did not only re-read the
        # attributes of an inode it still had a name for (the parents' attributes are read again: invalidated)
        assert after.get("calls.lookup", 0) > before.get("calls.lookup", 0)
    finally:
        with djfs.config.override(**lab.settings):
            lab.Trial.insert1(dict(animal="bob", trial=2, note="bob2", frames=frames("bob", 2)))


def test_a_missing_name_is_kept_as_a_negative_entry(lab, mounts):
    mount = mounts.mount(lab.config, [f"schemas={lab.name}", "negative_timeout=30"])
    missing = mount.path(lab.name, "Trial", "animal=nobody")
    assert errno_of(os.stat, missing) == errno.ENOENT
    before = mount.stats()
    for _ in range(3):
        assert errno_of(os.stat, missing) == errno.ENOENT
    assert mount.stats().get("calls.lookup", 0) == before.get("calls.lookup", 0)  # the kernel answered
    # without it (negative_timeout=0, the default), each stat asks
    plain = mounts.mount(lab.config, [f"schemas={lab.name}"])
    missing = plain.path(lab.name, "Trial", "animal=nobody")
    assert errno_of(os.stat, missing) == errno.ENOENT
    before = plain.stats()
    assert errno_of(os.stat, missing) == errno.ENOENT
    assert plain.stats().get("calls.lookup", 0) > before.get("calls.lookup", 0)


def test_a_row_added_after_a_missing_stat_shows_at_once(lab, mounts):
    """With negative_timeout the kernel keeps a missing name; the row inserted later shows within the watcher's
    change delay (the watcher has the kernel drop the name), not after negative_timeout."""
    mount = mounts.mount(lab.config, [f"schemas={lab.name}", *LONG, "negative_timeout=60"])
    table = mount.path(lab.name, "Trial")
    new_animal, new_trial = table / "animal=cat", table / "animal=bob" / "trial=99"
    new_table = mount.path(lab.name, "Later")
    for path in (new_animal, new_trial, new_table):
        assert errno_of(os.stat, path) == errno.ENOENT
    before = mount.stats().get("calls.lookup", 0)
    assert errno_of(os.stat, new_trial) == errno.ENOENT
    assert mount.stats().get("calls.lookup", 0) == before  # the kernel keeps it as missing
    rows = [dict(animal="cat", trial=1, note="cat1", frames=frames("cat", 1)),
            dict(animal="bob", trial=99, note="bob99", frames=frames("bob", 1))]
    with djfs.config.override(**lab.settings):
        lab.Trial.insert(rows)
        lab.connection.query(f"CREATE TABLE `{lab.name}`.`later` (k int NOT NULL, PRIMARY KEY (k))")
    try:
        assert wait_for(lambda: errno_of(os.stat, new_trial / "frames.npy") is None, timeout=10)
        assert wait_for(lambda: errno_of(os.stat, new_animal / "trial=1") is None, timeout=5)
        np.testing.assert_array_equal(np.load(new_trial / "frames.npy"), frames("bob", 1))
        assert wait_for(lambda: errno_of(os.stat, new_table) is None, timeout=10)  # a new table's name, too
    finally:
        with djfs.config.override(**lab.settings):
            (lab.Trial & [{k: row[k] for k in ("animal", "trial")} for row in rows]).delete_quick()
            lab.connection.query(f"DROP TABLE `{lab.name}`.`later`")


#: the API options of each way of serving the mount: libfuse 3's low-level API (the default), its high-level one,
#: and libfuse 2 (high-level only)
APIS = {"low": ["fuse_api=low"], "high": ["fuse_api=high"], "libfuse2": ["libfuse=2"]}


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
@pytest.mark.parametrize("api", list(APIS))
def test_a_signal_unmounts_and_ends_the_daemon(lab, mounts, api, signal_number):
    mount = mounts.mount(lab.config, [f"schemas={lab.name}", *APIS[api]])
    assert os.listdir(mount.path(lab.name)) == ["Trial"]
    os.kill(mount.process.pid, signal_number)
    status = mount.process.wait(timeout=15)
    assert status == 0, mount.log_text()
    assert "Traceback" not in mount.log_text()
    assert "unmounted" in mount.log_text()
    assert not is_mounted(str(mount.mountpoint)) and os.listdir(mount.mountpoint) == []
