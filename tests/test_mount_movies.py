"""Movies through a real mount on S3 (moto), opened by the programs people use: numpy, tifffile, tiffinfo, Pillow.

An ``npy@`` movie (T, Y, X) in C order shows as ``movie.npy`` (the stored object byte for byte) and ``movie.tif``
(a generated TIFF header in front of the same stored frames); reading 10 frames of either fetches about 10
frames' bytes from the store, not the movie.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from PIL import Image

import djfs
from djfs import hashing
from djfs.stores import clear_store_cache
from fixtures_fuse import s3_config
from test_tiff import imagej

BLOCK = 1 << 20
SHAPE = (600, 96, 128)  # uint16: 24 KiB frames, 14 MiB in all: read by 1 MiB blocks (whole_max below it)
#: what reading a few frames may fetch besides them: the block of the header, the frames' blocks, read-ahead
SLACK = 4 * BLOCK


@pytest.fixture(scope="module")
def studio(mariadb, s3_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    settings = {"database.host": mariadb.host, "database.port": mariadb.port, "database.user": mariadb.user,
                "database.password": mariadb.password, "cache-location": str(root / "library-cache"),
                **s3_config(s3_server)}
    with djfs.config.override(**settings):
        clear_store_cache()
        connection = djfs.conn(reset=True)
        name = f"djfs_movies_{os.getpid()}"
        schema = djfs.Schema(name, connection=connection)
        schema.set_external_storage(s3_server.create_bucket(f"djfs-movies-{uuid.uuid4().hex[:12]}"))

        @schema
        class Recording(djfs.Manual):
            definition = """
            # two-photon recordings
            rec : int
            ---
            movie = null : npy@        # (T, Y, X), C order
            image = null : npy@        # (Y, X) float32
            fortran = null : npy@      # F order: .npy only
            trace = null : npy@        # 1-D: .npy only
            legacy = null : external   # DataJoint's blob (column-major): .npy only
            """
        rng = np.random.default_rng(5)
        movie = rng.integers(0, 60000, SHAPE, dtype=np.uint16)
        image = rng.standard_normal((96, 128)).astype(np.float32)
        Recording.insert1(dict(rec=1, movie=movie, image=image, fortran=np.asfortranarray(movie[:20]),
                               trace=np.arange(50.0), legacy=movie[:20]))
        yield SimpleNamespace(schema=schema, name=name, Recording=Recording, movie=movie, image=image)
        connection.query(f"DROP DATABASE IF EXISTS `{name}`")
    djfs.conn(reset=True)


@pytest.fixture(scope="module")
def mnt(studio, module_mounts, s3_server):
    return module_mounts.mount(s3_config(s3_server), [
        f"schemas={studio.name}", "block_size=1MiB", "whole_max=1MiB", "readahead=4"])


def row(mnt, studio) -> Path:
    return mnt.path(studio.name, "Recording", "rec=1")


def fetched_bytes(mnt, action) -> int:
    before = mnt.stats().get("store_bytes", 0)
    action()
    return mnt.stats().get("store_bytes", 0) - before


def test_listing_and_sizes(mnt, studio):
    directory = row(mnt, studio)
    names = sorted(os.listdir(directory))
    assert names == ["fortran.npy", "image.npy", "image.tif", "legacy.npy", "movie.npy", "movie.tif", "row.json",
                     "trace.npy"]
    hash_ = studio.Recording.connection.query(f"SELECT movie FROM {studio.Recording.full_table_name}").fetchone()[0]
    entry = studio.schema.external.entry(hash_)
    assert (directory / "movie.npy").stat().st_size == entry["size"]
    frames = np.prod(SHAPE) * 2
    tif_size = (directory / "movie.tif").stat().st_size
    assert frames < tif_size < frames + 200 * SHAPE[0]  # the generated header: ~150 bytes per frame
    assert (directory / "movie.tif").stat().st_ino != (directory / "movie.npy").stat().st_ino


def test_npy_is_the_stored_object_and_slices_frames(mnt, studio):
    path = row(mnt, studio) / "movie.npy"
    fetched = []

    def read_frames():
        movie = np.load(path, mmap_mode="r")
        assert movie.shape == SHAPE and movie.dtype == np.uint16 and movie.flags.c_contiguous
        fetched.append(np.array(movie[100:110]))
    count = fetched_bytes(mnt, read_frames)
    np.testing.assert_array_equal(fetched[0], studio.movie[100:110])
    ten_frames = 10 * SHAPE[1] * SHAPE[2] * 2
    assert count <= ten_frames + SLACK, f"{count} bytes fetched for {ten_frames} bytes of frames"
    hash_ = studio.Recording.connection.query(f"SELECT movie FROM {studio.Recording.full_table_name}").fetchone()[0]
    stored = studio.schema.external.store().get(hashing.object_path(hash_))
    assert path.read_bytes() == stored  # byte for byte


def test_tif_read_by_tifffile_with_bounded_fetches(mnt, studio):
    path = row(mnt, studio) / "movie.tif"
    frames = []

    def read_frames():
        with tifffile.TiffFile(path) as tif:
            assert tif.is_imagej and tif.imagej_metadata["frames"] == SHAPE[0]
            assert tif.series[0].shape == SHAPE
            frames.append(tif.asarray(key=range(100, 110)))
    count = fetched_bytes(mnt, read_frames)
    np.testing.assert_array_equal(frames[0], studio.movie[100:110])
    ten_frames = 10 * SHAPE[1] * SHAPE[2] * 2
    assert count <= ten_frames + SLACK, f"{count} bytes fetched for {ten_frames} bytes of frames"
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.series[0].asarray(), studio.movie)  # every frame, in order


def test_tif_accepted_by_tiffinfo_and_pillow(mnt, studio):
    path = row(mnt, studio) / "movie.tif"
    result = subprocess.run(["tiffinfo", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("TIFF Directory at offset") == SHAPE[0]
    assert f"Image Width: {SHAPE[2]} Image Length: {SHAPE[1]}" in result.stdout
    with Image.open(path) as image:
        assert image.size == (SHAPE[2], SHAPE[1]) and image.n_frames == SHAPE[0]
        np.testing.assert_array_equal(np.asarray(image), studio.movie[0])


def test_tif_opened_by_imagej_as_a_virtual_stack(mnt, studio):
    """ImageJ reads the first IFD, takes the frame count from the description and reads the frames it shows."""
    path = row(mnt, studio) / "movie.tif"
    found: dict = {}
    count = fetched_bytes(mnt, lambda: found.update(imagej(path, 150, virtual_only=True)))
    assert found["ifds"] == "1" and found["images"] == str(SHAPE[0]) and found["slices"] == str(SHAPE[0])
    assert found["virtual"] == "true" and found["bits"] == "16"
    assert float(found["pixel"]) == float(studio.movie[150, 3, 5])
    assert count <= SLACK, f"{count} bytes fetched to show one frame"  # one 24 KiB frame, not the movie
    found = imagej(path, 150)  # File > Open: the whole stack
    assert found["slices"] == str(SHAPE[0]) and float(found["pixel"]) == float(studio.movie[150, 3, 5])


def test_single_image_tif(mnt, studio):
    path = row(mnt, studio) / "image.tif"
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.asarray(), studio.image)
    with Image.open(path) as image:
        assert image.mode == "F"
        np.testing.assert_array_equal(np.asarray(image), studio.image)
    np.testing.assert_array_equal(np.load(row(mnt, studio) / "image.npy"), studio.image)


def test_other_layouts_have_npy_only(mnt, studio):
    directory = row(mnt, studio)
    fortran = np.load(directory / "fortran.npy")
    assert fortran.flags.f_contiguous and not fortran.flags.c_contiguous
    np.testing.assert_array_equal(fortran, studio.movie[:20])
    np.testing.assert_array_equal(np.load(directory / "legacy.npy"), studio.movie[:20])
    np.testing.assert_array_equal(np.load(directory / "trace.npy"), np.arange(50.0))
    for name in ("fortran.tif", "legacy.tif", "trace.tif"):
        assert not (directory / name).exists()
