"""A pipeline written by the real DataJoint 0.14 (blob@, attach@, filepath@ on a file and an S3 store, in-table
attach, a part table, NULLs), mounted with the configuration DataJoint uses: every value's file, its exact size,
views as ``external``'s, heads learned once per host, tampered objects refused."""

from __future__ import annotations

import errno
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from djfs import blob
from djfs.fs.datajoint_files import DOWN_TTL
from djfs.testing.relay import Relay
from fixtures_fuse import errno_of
from test_datajoint_external import dj_pipeline, sample_rows, stores  # noqa: F401  (fixture)

OPTIONS = ["listing_timeout=0.5", "entry_timeout=0.5", "attr_timeout=0.5", "negative_timeout=0"]


def check_blob_file(path: Path, value) -> None:
    data = path.read_bytes()
    assert len(data) == path.stat().st_size
    if path.suffix == ".npy":
        loaded = np.load(io.BytesIO(data))
        np.testing.assert_array_equal(loaded, value)
        assert loaded.dtype == value.dtype and loaded.shape == value.shape
    else:
        assert path.suffix == ".blob"
        got = blob.unpack(data)
        assert got == value or (isinstance(value, list) and list(got) == value)


@pytest.fixture
def pipeline(dj, stores, schema_name, tmp_path):  # noqa: F811
    _, Session = dj_pipeline(dj, schema_name)
    rows, parts = sample_rows(tmp_path, stores, 1)
    for row in rows:
        Session.insert1(row)
    Session.Roi.insert(parts)
    return rows, parts


def mount_config(stores) -> dict:  # noqa: F811
    return {"stores": json.loads(json.dumps(stores))}


def test_every_datajoint_value_is_a_file(pipeline, stores, schema_name, mounts):  # noqa: F811
    rows, parts = pipeline
    mnt = mounts.mount(mount_config(stores), OPTIONS + [f"schemas={schema_name}"])
    table = mnt.path(schema_name, "Session")
    assert sorted(p.name for p in table.iterdir()) == sorted(f"session={r['session']}" for r in rows)
    checked = 0
    for row in rows:
        folder = table / f"session={row['session']}"
        names = sorted(p.name for p in folder.iterdir())
        if row["movie"] is None:
            assert names == ["row.json"]   # NULLs: no file
            continue
        for name in ("movie", "movie_s3", "trace"):
            (path,) = [folder / n for n in names if n.split(".")[0] == name]
            check_blob_file(path, row[name])
            checked += 1
        for name in ("doc", "doc_s3", "note", "raw", "raw_s3"):
            assert (folder / name).is_dir()
            (path,) = list((folder / name).iterdir())
            assert path.name == Path(row[name]).name            # under its own name
            assert path.stat().st_size == Path(row[name]).stat().st_size
            assert path.read_bytes() == Path(row[name]).read_bytes()
            with open(path, "rb") as file:                       # byte ranges
                file.seek(3)
                assert file.read(5) == Path(row[name]).read_bytes()[3:8]
            checked += 1
    assert checked == 4 * 8
    for part in parts:
        path = mnt.path(schema_name, "Session.Roi", f"session={part['session']}", f"roi={part['roi']}", "mask.npy")
        np.testing.assert_array_equal(np.load(path), part["mask"])
    assert errno_of(os.open, str(table / "session=1" / "doc" / "notes.txt"), os.O_WRONLY) == errno.EROFS


def test_heads_are_learned_once_per_host_in_parallel(pipeline, stores, schema_name, mounts):  # noqa: F811
    rows, _ = pipeline
    config = mount_config(stores)
    first = mounts.mount(config, OPTIONS + [f"schemas={schema_name}"])

    def list_sizes(mnt) -> dict:
        table = mnt.path(schema_name, "Session")
        return {(row.name, f.name): f.stat().st_size for row in table.iterdir() for f in row.iterdir()}
    sizes = list_sizes(first)
    blobs = 4 * 2   # blob@ values (movie, movie_s3); parts are another table
    assert first.stats()["datajoint_head_reads"] == blobs   # one ranged read per object, however listed
    again = list_sizes(first)
    assert again == sizes and first.stats()["datajoint_head_reads"] == blobs
    first.stop()
    # a second mount sharing the cache (the same host): no head read at all
    second = mounts.mount({**config, "cache-location": str(mounts.base / "cache-0")},
                          OPTIONS + [f"schemas={schema_name}"])
    assert list_sizes(second) == sizes
    assert second.stats().get("datajoint_head_reads", 0) == 0


def test_cold_np_load_of_a_datajoint_movie(dj, stores, schema_name, mounts, tmp_path):  # noqa: F811
    schema = dj.Schema(schema_name)

    @schema
    class Movie(dj.Manual):
        definition = """
        movie_id : int
        ---
        frames : blob@shared
        """
    frames = (np.arange(40 * 64 * 64) % 251).astype(np.uint8).reshape(40, 64, 64)  # compresses: DataJoint zips it
    Movie.insert1({"movie_id": 1, "frames": frames})
    mnt = mounts.mount(mount_config(stores), OPTIONS + [f"schemas={schema_name}"])
    path = mnt.path(schema_name, "Movie", "movie_id=1", "frames.npy")
    assert path.stat().st_size == len(blob.npy_header(frames.dtype, frames.shape)) + frames.nbytes
    np.testing.assert_array_equal(np.load(path, mmap_mode="r")[7], frames[7])


def test_a_tampered_object_is_an_error_never_bytes(pipeline, stores, schema_name, mounts):  # noqa: F811
    rows, _ = pipeline
    local = Path(stores["local"]["location"]) / schema_name
    for path in local.rglob("*.notes.txt"):   # every attachment doc: same size, other bytes
        path.write_bytes(b"X" * path.stat().st_size)
    mnt = mounts.mount(mount_config(stores), OPTIONS + [f"schemas={schema_name}"])
    path = mnt.path(schema_name, "Session", "session=1", "doc", "notes.txt")
    assert errno_of(Path.read_bytes, path) == errno.EIO
    assert mnt.path(schema_name, "Session", "session=1", "doc_s3", "scan.bin").read_bytes() == \
        Path(rows[0]["doc_s3"]).read_bytes()


def test_a_store_that_is_down_fails_fast_and_recovers(pipeline, stores, schema_name, mounts, s3_server):  # noqa: F811
    rows, _ = pipeline
    with Relay(s3_server.port) as relay:
        config = mount_config(stores)
        config["stores"]["shared"]["endpoint"] = f"127.0.0.1:{relay.port}"
        config.update({"store-timeout": 1, "store-retries": 0})
        mnt = mounts.mount(config, OPTIONS + [f"schemas={schema_name}"])
        relay.hold()   # a network partition: S3 stops answering
        table = mnt.path(schema_name, "Session")
        listed = {(row.name, f.name): f for row in table.iterdir() for f in row.iterdir()}
        # the listing's parallel head reads: 4 on the file store, 4 timing out on S3; then the rows fail at once
        # instead of each waiting out one more timeout (that would be 4 more reads, and 6.3 s instead of 1.9 s)
        assert mnt.stats()["datajoint_head_reads"] == 8
        movie = table / "session=1" / "movie_s3.blob"   # its view is unknown while S3 is down
        assert ("session=1", "movie_s3.blob") in listed and errno_of(movie.read_bytes) == errno.EIO
        assert (table / "session=1" / "doc" / "notes.txt").read_bytes() == Path(rows[0]["doc"]).read_bytes()
        relay.release()
        time.sleep(DOWN_TTL + 1)
        (path,) = [p for p in (table / "session=1").iterdir() if p.name.startswith("movie_s3.")]
        check_blob_file(path, rows[0]["movie_s3"])
