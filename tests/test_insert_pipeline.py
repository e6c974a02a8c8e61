"""The insert path of large values on a file store: a pipeline (the column-major copy of chunk k+1, the SHA-256 of
chunk k and the write of chunk k-1 at once) that stores exactly the bytes of the plain serializers under their
hash, and leaves neither object, hidden file nor row when a write fails midway."""

from __future__ import annotations

import errno
import hashlib
import io

import numpy as np
import pytest

import djfs
from djfs import blob, hashing
from djfs.errors import StoreError
from djfs.objects.external import origin_of, serialize
from djfs.stores import file as file_store
from djfs.stores.file import FileStore

RNG = np.random.default_rng(5)
MOVIE = RNG.random((40, 30, 20)).astype(np.float32)  # (T, Y, X): 96,000 bytes, many slabs and chunks below
LAYOUTS = {
    "C": lambda: MOVIE,
    "F": lambda: np.asfortranarray(MOVIE),
    "strided": lambda: MOVIE[::2, :, ::-1],
    "big-endian": lambda: RNG.random(MOVIE.shape).astype(">f8"),
    "4-D": lambda: RNG.random((6, 5, 40, 30)),
    "2-D": lambda: RNG.integers(-2**31, 2**31 - 1, (300, 70), dtype=np.int32),  # incompressible, as large values
    "small": lambda: np.arange(5, dtype=np.int16),
}


@pytest.fixture
def small_pieces(monkeypatch):
    """Chunks of 4 KiB and slabs of 16 KiB: a small array crosses many slabs, chunks and lagging writes."""
    monkeypatch.setattr(blob, "CHUNK_SIZE", 4096)
    monkeypatch.setattr(blob, "SLAB_SIZE", 16384)
    monkeypatch.setattr(blob, "_GATHER_BYTES", 2048)


def plain_bytes(value: np.ndarray, kind: str) -> bytes:
    """What the plain serializers write, independently of djfs: ``np.save`` (npy@), DataJoint's own ``pack``
    of the little-endian array (external; DataJoint refuses big-endian arrays, djfs stores them little-endian)."""
    if kind == "npy@":
        out = io.BytesIO()
        np.save(out, value, allow_pickle=False)
        return out.getvalue()
    import datajoint
    return datajoint.blob.pack(value.astype(value.dtype.newbyteorder("<")), compress=False)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", ["npy@", "external"])
def test_staged_write_is_the_plain_serialization(tmp_path, small_pieces, kind, layout):
    value = LAYOUTS[layout]()
    expected = plain_bytes(value, kind)
    packed, _ = serialize(value, "npy" if kind == "npy@" else "blob")
    assert packed.size == len(expected) and not packed.compressed
    store = FileStore(tmp_path / "store")
    state, seen = hashlib.sha256(), []

    def observe(chunk) -> None:
        state.update(chunk)
        seen.append(len(chunk))
    staged = store.stage(packed.chunks(), packed.size, observe)
    assert len(seen) > 3 or value.nbytes < 4096  # the pipeline had chunks to overlap
    staged.publish("ab/cd/object")
    assert store.get("ab/cd/object") == expected
    assert state.digest() == hashlib.sha256(expected).digest()  # the hash is of the bytes stored


@pytest.fixture
def file_schema(schema, tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    with djfs.config.override(**{"external-location": f"file://{root}"}):
        schema.set_external_storage("lab")
        yield schema, root


def movies_table(schema, kind: str):
    @schema
    class Movie(djfs.Manual):
        definition = f"rec : int\n---\nmovie : {kind}"
    return Movie


@pytest.mark.parametrize("layout", ["C", "F", "strided", "small"])
@pytest.mark.parametrize("kind", ["npy@", "external"])
def test_insert_stores_the_plain_serialization_under_its_hash(file_schema, small_pieces, monkeypatch, kind, layout):
    monkeypatch.setattr(djfs.objects.external, "STAGE_THRESHOLD", 1)  # every value takes the staged, pipelined path
    schema, root = file_schema
    table = movies_table(schema, kind)
    value = LAYOUTS[layout]()
    table.insert1({"rec": 1, "movie": value})
    (hash_,) = schema.connection.query(f"SELECT movie FROM {table.full_table_name}").fetchone()
    expected = plain_bytes(value, kind)
    assert schema.external.store().get(hashing.object_path(hash_)) == expected
    assert hash_ == hashing.object_hash(expected, origin_of(table.full_table_name, {"rec": 1}))
    np.testing.assert_array_equal(table.fetch1("movie"), value)
    assert [p for p in root.rglob(".*") if p.is_file()] == []


def failing_on_write(monkeypatch, n: int) -> list[int]:
    """The file store's writes fail with ENOSPC from the ``n``-th on (a disk filling up midway)."""
    calls: list[int] = []
    write = file_store._write_all

    def failing(fd, chunk, offset):
        calls.append(offset)
        if len(calls) >= n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(fd, chunk, offset)
    monkeypatch.setattr(file_store, "_write_all", failing)
    return calls


@pytest.mark.parametrize("staged", [True, False], ids=["staged", "put"])
@pytest.mark.parametrize("kind", ["npy@", "external"])
def test_a_write_failing_midway_leaves_no_object_and_no_row(file_schema, small_pieces, monkeypatch, kind, staged):
    monkeypatch.setattr(djfs.objects.external, "STAGE_THRESHOLD", 1 if staged else 1 << 40)
    schema, root = file_schema
    table = movies_table(schema, kind)
    original = file_store._write_all
    calls = failing_on_write(monkeypatch, 5)
    with pytest.raises(StoreError, match="No space left"):
        table.insert1({"rec": 1, "movie": MOVIE})
    assert len(calls) >= 5  # it failed midway: earlier chunks were written
    assert [p for p in root.rglob("*") if p.is_file()] == []  # no object, no hidden file
    assert len(table) == 0
    (entries,) = schema.connection.query(f"SELECT COUNT(*) FROM {schema.external.full_table_name}").fetchone()
    assert entries == 0
    monkeypatch.setattr(file_store, "_write_all", original)  # the disk has room again: the same insert works
    table.insert1({"rec": 1, "movie": MOVIE})
    np.testing.assert_array_equal(table.fetch1("movie"), MOVIE)


def test_column_major_copy_of_a_movie_holds_a_few_slabs(monkeypatch):
    """Bounded memory: the slab consumed, the next one, the previous one while a lagging write holds a piece of
    it, and the transpose's gather buffer; never a second copy of the movie."""
    import collections
    import tracemalloc
    monkeypatch.setattr(blob, "SLAB_SIZE", 4 << 20)
    monkeypatch.setattr(blob, "CHUNK_SIZE", 1 << 20)
    movie = np.ones((64, 256, 512), np.float32)  # 32 MiB in C order: its column-major bytes are copied
    held: collections.deque = collections.deque(maxlen=1 + file_store.STAGE_WRITES_AHEAD)  # as stage holds them
    tracemalloc.start()
    try:
        total, packed = 0, blob.serialize(movie, compress=False)
        for chunk in packed.chunks():
            held.append(chunk)
            total += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == packed.size == 45 + movie.nbytes  # mYm, 'A', ndim, 3 sides, class, complexity
    assert peak < 3 * blob.SLAB_SIZE + blob._GATHER_BYTES + (1 << 20), f"peak {peak / 2**20:.1f} MiB for a 32 MiB movie"
