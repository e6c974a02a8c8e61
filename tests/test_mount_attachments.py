"""Attachments through a real mount on S3 (moto), opened by the programs people use: ffprobe/ffmpeg, h5py.

Files stored as ``attach@store`` attachments (inserted with djfs's library, as a DataJoint user does) show as
``<row>/<attr>/<original name>``, the stored object as raw byte ranges read by blocks with read-ahead: a player
seeks without downloading the file.  The mounts here set ``whole_max=1MiB`` (the default 64 MiB would cache these
tens-of-MiB files whole on open, as it does any object that small): the test is about the block reader a large
attachment goes through, so the files are read as a large one is.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

import djfs
from djfs.stores import clear_store_cache
from test_mount_movies import fetched_bytes

MiB = 1 << 20
BLOCK = MiB
OPTIONS = ["block_size=1MiB", "whole_max=1MiB"]   # defaults otherwise (part_size, readahead)
H5_SHAPE = (200, 128, 128)  # float32: 64 KiB a frame, 12.5 MiB a dataset
H5_SLICE = slice(100, 110)
#: what reading a slice may fetch besides it: the superblock and object headers' block, the slice's partial
#: blocks at either end, one read-ahead step; a chunked dataset's index (a B-tree whose nodes h5py wrote between
#: the chunks) adds a block per node on the way to the slice's chunks: root and leaf here, and one spare; and
#: the kernel's own read-ahead (1 MiB) may run a step further or not, by timing (5, 7 and, once under load, 9
#: blocks seen for the same slice)
H5_SLACK = {"data": 4 * BLOCK, "chunked": 9 * BLOCK}


def make_video(path: Path) -> None:
    """A 60 s mpeg4 video of ~36 MiB: ffmpeg's test pattern with noise (so it does not compress to nothing),
    5 Mbit/s, a key frame every second, the index (moov) at the end as ffmpeg writes it by default."""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc=duration=60:size=320x240:rate=25", "-vf", "noise=alls=30:allf=t",
                    "-c:v", "mpeg4", "-b:v", "5M", "-maxrate", "5M", "-bufsize", "2M", "-g", "25", str(path)],
                   check=True, timeout=120)


def make_hdf5(path: Path) -> np.ndarray:
    """Two datasets of the same array: ``data`` contiguous, ``chunked`` in chunks of one frame (a B-tree of
    chunk addresses in front of them)."""
    data = np.random.default_rng(11).standard_normal(H5_SHAPE).astype(np.float32)
    with h5py.File(path, "w") as file:
        file.create_dataset("data", data=data)
        file.create_dataset("chunked", data=data, chunks=(1, *H5_SHAPE[1:]))
        file.attrs["rate"] = 30.0
    return data


@pytest.fixture(scope="module")
def clips(mariadb, s3_server, tmp_path_factory):
    """A schema whose ``Clip`` rows hold a video and an HDF5 file as ``attach@shared`` (S3) attachments."""
    root = tmp_path_factory.mktemp("attachments")
    (root / "files").mkdir()
    video, h5 = root / "files" / "behaviour.mp4", root / "files" / "traces.h5"
    make_video(video)
    data = make_hdf5(h5)
    account, secret = s3_server.credentials
    stores = {"shared": {"protocol": "s3", "endpoint": f"{s3_server.host}:{s3_server.port}",
                         "bucket": s3_server.create_bucket(f"djfs-attach-{uuid.uuid4().hex[:12]}"),
                         "access_key": account, "secret_key": secret, "location": "dj/shared"}}
    settings = {"database.host": mariadb.host, "database.port": mariadb.port, "database.user": mariadb.user,
                "database.password": mariadb.password, "cache-location": str(root / "library-cache"),
                "stores": stores}
    with djfs.config.override(**settings):
        clear_store_cache()
        connection = djfs.conn(reset=True)
        name = f"djfs_attach_{os.getpid()}"
        schema = djfs.Schema(name, connection=connection)

        @schema
        class Clip(djfs.Manual):
            definition = """
            # recordings kept as the files they came in
            clip : int
            ---
            video = null : attach@shared
            traces = null : attach@shared
            """
        Clip.insert1({"clip": 1, "video": str(video), "traces": str(h5)})
        yield SimpleNamespace(name=name, Clip=Clip, video=video, h5=h5, data=data, root=root,
                              config={"stores": json.loads(json.dumps(stores))})
        connection.query(f"DROP DATABASE IF EXISTS `{name}`")
    clear_store_cache()
    djfs.conn(reset=True)


def mount(mounts, clips):
    """A fresh mount with a cache of its own: every byte read comes from the store and is counted."""
    return mounts.mount(clips.config, OPTIONS + [f"schemas={clips.name}"])


def test_attachments_keep_their_names_and_bytes(mounts, clips):
    mnt = mount(mounts, clips)
    row = mnt.path(clips.name, "Clip", "clip=1")
    assert sorted(os.listdir(row)) == ["row.json", "traces", "video"]
    for attr, original in (("video", clips.video), ("traces", clips.h5)):
        (path,) = list((row / attr).iterdir())
        assert path.name == original.name                       # the original name and extension
        assert path.stat().st_size == original.stat().st_size   # from ~external_shared, no store access
        assert path.read_bytes() == original.read_bytes()       # the stored object, byte for byte
    stats = mnt.stats()
    print("stats after reading both files:", {k: v for k, v in stats.items() if not isinstance(v, dict)})
    assert stats.get("whole_downloads", 0) == 0 and stats["opens_blocks"] >= 2   # by blocks, never whole
    assert stats["parts"] > 0    # a sequential reader gets read-ahead parts
    assert stats["store_bytes"] == clips.video.stat().st_size + clips.h5.stat().st_size   # each byte once
    assert stats["objects_verified"] == 2   # read in order, each checked against its MD5 (name + NUL + bytes)


def test_ffprobe_and_ffmpeg_seek_without_downloading_the_video(mounts, clips, tmp_path):
    mnt = mount(mounts, clips)
    path = mnt.path(clips.name, "Clip", "clip=1", "video", clips.video.name)
    size = clips.video.stat().st_size
    probed = []

    def probe():
        result = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                 str(path)], capture_output=True, text=True, timeout=60, check=True)
        probed.append(float(result.stdout))
    probe_bytes = fetched_bytes(mnt, probe)
    assert abs(probed[0] - 60.0) < 0.5, probed
    frame = tmp_path / "frame.png"

    def seek():
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-ss", "30", "-i", str(path),
                        "-frames:v", "1", str(frame)], check=True, timeout=60)
    seek_bytes = fetched_bytes(mnt, seek)
    assert mnt.stats().get("whole_downloads", 0) == 0
    print(f"ffprobe fetched {probe_bytes} bytes, ffmpeg -ss 30 {seek_bytes} bytes of a {size}-byte video")
    assert probe_bytes + seek_bytes <= size // 4, f"{probe_bytes} + {seek_bytes} bytes fetched of {size}"
    # the frame is the one at 30 s: the same as ffmpeg extracts from the original file
    reference = tmp_path / "reference.png"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-ss", "30", "-i", str(clips.video),
                    "-frames:v", "1", str(reference)], check=True, timeout=60)
    assert frame.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("dataset", ["data", "chunked"])
def test_h5py_reads_a_slice_with_bounded_fetches(mounts, clips, dataset):
    mnt = mount(mounts, clips)
    path = mnt.path(clips.name, "Clip", "clip=1", "traces", clips.h5.name)
    read = []

    def read_slice():
        with h5py.File(path, "r") as file:
            assert file[dataset].shape == H5_SHAPE and file.attrs["rate"] == 30.0
            read.append(file[dataset][H5_SLICE])
    count = fetched_bytes(mnt, read_slice)
    np.testing.assert_array_equal(read[0], clips.data[H5_SLICE])
    slice_bytes = read[0].nbytes
    print(f"h5py fetched {count} bytes of {dataset} for a {slice_bytes}-byte slice of a {clips.h5.stat().st_size}-byte file")
    assert count <= slice_bytes + H5_SLACK[dataset], f"{count} bytes fetched for a {slice_bytes}-byte slice"


def test_the_library_fetches_the_same_files(clips, tmp_path):
    with djfs.config.override(stores=clips.config["stores"]):
        video, h5 = (clips.Clip & {"clip": 1}).fetch1("video", "traces", download_path=str(tmp_path))
    assert Path(video).name == clips.video.name and Path(h5).name == clips.h5.name
    assert Path(video).read_bytes() == clips.video.read_bytes()
    assert Path(h5).read_bytes() == clips.h5.read_bytes()
