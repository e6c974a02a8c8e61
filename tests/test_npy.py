"""``npy@`` attributes end to end on both stores: a real .npy per value, the external lifecycle, exact round trips."""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import djfs
from djfs import hashing, npy
from djfs.errors import CorruptObjectError, DataError, DeclarationError
from djfs.objects.external import origin_of


@pytest.fixture
def scans(schema, backend):
    backend(schema)

    @schema
    class Scan(djfs.Manual):
        definition = """
        # two-photon scans
        scan_id : int
        ---
        movie = null : npy@     # frames, (T, Y, X)
        """
    return Scan


def stored_bytes(schema, table, key: dict) -> tuple[str, bytes]:
    hash_ = table.connection.query(f"SELECT movie FROM {table.full_table_name} WHERE scan_id = %s",
                                   (key["scan_id"],)).fetchone()[0]
    return hash_, schema.external.store().get(hashing.object_path(hash_))


def npy_file(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


ORDERS = {
    "C": lambda a: np.ascontiguousarray(a),
    "F": lambda a: np.asfortranarray(a),
    "strided": lambda a: a if a.ndim == 0 else a[::-2] if a.ndim == 1 else a[::2, ..., ::-1],
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_object_is_the_npy_of_the_array_in_its_own_order(scans, schema, order):
    movie = ORDERS[order](np.random.default_rng(1).integers(0, 4000, (30, 12, 10)).astype(np.uint16))
    scans.insert1({"scan_id": 1, "movie": movie})
    hash_, data = stored_bytes(schema, scans, {"scan_id": 1})
    assert data == npy_file(movie)  # numpy writes exactly these bytes: C, F, or C for other layouts
    assert np.load(io.BytesIO(data)).flags.f_contiguous == (order == "F")
    fetched = scans.fetch1("movie")
    np.testing.assert_array_equal(fetched, movie)
    assert fetched.dtype == movie.dtype and fetched.shape == movie.shape
    assert fetched.flags.f_contiguous == (order == "F") and fetched.flags.c_contiguous == (order != "F")
    # the hash: SHA-256 of the .npy bytes, 0x00, the origin (as for external)
    origin = origin_of(scans.full_table_name, {"scan_id": 1})
    digest = hashlib.sha256(data + b"\x00" + origin).digest()
    assert hash_ == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    entry = schema.external.entry(hash_)
    header = npy.read_header(data)
    assert entry["view"] == "npy" and entry["size"] == entry["view_size"] == len(data)
    assert bytes(entry["view_header"]) == data[:header.size] and entry["data_offset"] == header.size
    assert not entry["compressed"] and entry["status"] == "stored"


NPY_DTYPES = ["bool", "i1", "u1", "<i2", ">i2", "<u2", "<i4", "<u4", "<i8", ">u8", "<f2", "<f4", ">f4", "<f8",
              "<c8", ">c16"]


def test_every_numeric_dtype_round_trips(scans):
    values = {i: (np.arange(60) % 7).astype(dtype).reshape(3, 4, 5) for i, dtype in enumerate(NPY_DTYPES)}
    values[100] = np.array(2.5, np.float32)      # 0-d
    values[101] = np.zeros((0, 4), np.int16)      # empty
    values[102] = np.arange(10.0)                 # 1-d
    scans.insert([{"scan_id": k, "movie": v} for k, v in values.items()])
    fetched = dict(zip(*scans.fetch("scan_id", "movie", order_by="scan_id")))
    for key, value in values.items():
        assert fetched[key].dtype == value.dtype, key
        assert fetched[key].shape == value.shape
        np.testing.assert_array_equal(fetched[key], value)


@pytest.mark.parametrize("value", [
    np.array(["a", "b"]), np.array([1, "x"], dtype=object), np.zeros(3, dtype=[("a", "i4")]),
    np.arange(3).astype("M8[s]"), [1, 2, 3], 3.5, "text", {"a": 1}, np.zeros(2, np.longdouble),
])
def test_non_numeric_values_name_external(scans, value):
    with pytest.raises(DataError, match="`external`"):
        scans.insert1({"scan_id": 1, "movie": value})
    assert len(scans) == 0


def test_lifecycle_delete_gc_revive(scans, schema):
    movie = np.arange(24.0).reshape(2, 3, 4)
    scans.insert1({"scan_id": 1, "movie": movie})
    hash_, _ = stored_bytes(schema, scans, {"scan_id": 1})
    (scans & {"scan_id": 1}).delete()
    assert schema.external.entry(hash_)["status"] == "deleted"
    scans.insert1({"scan_id": 1, "movie": movie})          # the same value again: the entry revives
    assert schema.external.entry(hash_)["status"] == "stored"
    scans.insert1({"scan_id": 1, "movie": movie + 1}, replace=True)
    assert schema.external.entry(hash_)["status"] == "deleted"
    report = schema.external.gc()
    assert report.entries == [hash_] and not report.failed
    assert not schema.external.store().exists(hashing.object_path(hash_))
    np.testing.assert_array_equal(scans.fetch1("movie"), movie + 1)


def test_corrupted_object_is_detected(scans, schema, tmp_path):
    movie = np.arange(1000, dtype=np.int32).reshape(10, 10, 10)
    scans.insert1({"scan_id": 1, "movie": movie})
    hash_, data = stored_bytes(schema, scans, {"scan_id": 1})
    damaged = bytearray(data)
    damaged[-1] ^= 0xFF
    schema.external.store().put(hashing.object_path(hash_), bytes(damaged))
    with djfs.config.override(**{"verify-reads": "always", "cache-location": str(tmp_path / "cache")}):
        with pytest.raises(CorruptObjectError):
            scans.fetch1("movie")


def test_named_store_and_declaration(schema, raw_store):

    @schema
    class Two(djfs.Manual):
        definition = """
        k : int
        ---
        a : npy@
        b : npy@raw
        c : external
        """
    same = np.arange(100, dtype=np.int16).reshape(10, 10)
    Two.insert1({"k": 1, "a": same, "b": same, "c": same})
    for name in "abc":
        np.testing.assert_array_equal(Two.fetch1(name), same)
    assert (Two.heading["a"].store, Two.heading["b"].store, Two.heading["c"].store) == ("", "raw", "")
    assert [Two.heading[n].serialization for n in "abc"] == ["npy", "npy", "blob"]
    assert [Two.heading[n].external_type for n in "abc"] == ["npy@", "npy@raw", "external"]
    described = Two.describe()
    assert "a : npy@" in described and "b : npy@raw" in described and "c : external" in described
    objects = [p for p in raw_store.rglob("*") if p.is_file()]
    assert len(objects) == 1 and objects[0].read_bytes() == npy_file(same)


@pytest.mark.parametrize("written", ["npy@-raw", "npy", "npy@raw store", "npy@@"])
def test_bad_npy_types_are_refused(schema, written):
    class Bad(djfs.Manual):
        definition = f"k : int\n---\nm : {written}"
    with pytest.raises(DeclarationError, match="unknown type"):
        schema(Bad)


def test_npy_attribute_cannot_be_in_the_key(schema):
    class Keyed(djfs.Manual):
        definition = "m : npy@\n---\nk : int"
    with pytest.raises(DeclarationError, match="primary key"):
        schema(Keyed)


# -- the codec alone --------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=hnp.arrays(dtype=hnp.integer_dtypes(endianness="?") | hnp.unsigned_integer_dtypes(endianness="?")
                        | hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64)) | hnp.boolean_dtypes()
                        | hnp.complex_number_dtypes(endianness="?"),
                        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)),
       order=st.sampled_from(sorted(ORDERS)), chunk=st.sampled_from([16, 100, 1 << 20]))
def test_property_codec_is_numpy_save_and_load(array, order, chunk):
    array = ORDERS[order](array)
    packed = npy.serialize(array)
    saved, djfs.blob.CHUNK_SIZE = djfs.blob.CHUNK_SIZE, chunk
    try:
        pieces = [bytes(piece) for piece in packed.chunks()]
    finally:
        djfs.blob.CHUNK_SIZE = saved
    data = b"".join(pieces)
    assert data == npy_file(array) and len(data) == packed.size
    assert all(len(piece) <= max(chunk, len(packed.header)) for piece in pieces)
    decoded = npy.decode(bytearray(data))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.flags.writeable
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("data", [
    b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'", b"mYm\0A",
    npy_file(np.arange(10))[:-1], npy_file(np.arange(10)) + b"\0", npy_file(np.array(["x"])),
    b"\x93NUMPY\x09\x00" + b"\0" * 100, b"\x93NUMPY\x01\x00\xff\xff" + b" " * 100,
])
def test_malformed_objects_raise_corrupt_object_error(data):
    with pytest.raises(CorruptObjectError):
        npy.decode(data)


# -- large values: written while hashed (file stores) --------------------------------------------------------


@pytest.fixture
def staged_always(monkeypatch):
    """Every value takes the path of large ones: written to a hidden file while hashed, renamed at upload."""
    monkeypatch.setattr(djfs.objects.external, "STAGE_THRESHOLD", 1)


def hidden_files(root) -> list:
    return [p for p in root.rglob(".*") if p.is_file()]


@pytest.mark.parametrize("kind", ["npy@", "external"])
def test_staged_insert_stores_the_same_object(schema, db_config, tmp_path, staged_always, kind):
    root = tmp_path / "store"
    root.mkdir()
    with djfs.config.override(**{"external-location": f"file://{root}"}):
        schema.set_external_storage("lab")

        @schema
        class Clip(djfs.Manual):
            definition = f"k : int\n---\nm : {kind}\nn = null : {kind}"
        movie = np.random.default_rng(2).random((40, 30, 20)).astype(np.float32)
        Clip.insert1({"k": 1, "m": movie, "n": movie})  # two attributes, one object (same hash)
        np.testing.assert_array_equal(Clip.fetch1("m"), movie)
        (hash_,) = schema.connection.query(f"SELECT m FROM {Clip.full_table_name}").fetchone()
        data = schema.external.store().get(hashing.object_path(hash_))
        expected = npy_file(movie) if kind == "npy@" else djfs.blob.pack(movie)
        assert data == expected and hashing.object_hash(data, origin_of(Clip.full_table_name, {"k": 1})) == hash_
        assert hidden_files(root) == []
        # an insert that fails after its values were staged leaves nothing behind but at most its objects
        with pytest.raises(djfs.errors.DuplicateError):
            Clip.insert([{"k": 2, "m": movie + 1}, {"k": 1, "m": movie + 2}])
        assert hidden_files(root) == [] and len(Clip) == 1
        # the same value again: the object exists, the staged copy is dropped
        Clip.insert1({"k": 1, "m": movie}, replace=True)
        assert hidden_files(root) == []


def test_staging_failure_leaves_no_file(tmp_path):
    from djfs.stores.file import FileStore
    store = FileStore(tmp_path / "root")

    def chunks():
        yield b"x" * 1000
        raise RuntimeError("producer failed")
    with pytest.raises(RuntimeError, match="producer failed"):
        store.stage(chunks(), 2000, lambda chunk: None)
    assert hidden_files(tmp_path) == []
    with pytest.raises(djfs.errors.StoreError, match="announced"):
        store.stage([b"x" * 10], 11, lambda chunk: None)
    assert hidden_files(tmp_path) == []
    seen = []
    staged = store.stage([b"abc", b"def"], 6, lambda chunk: seen.append(bytes(chunk)))
    assert seen == [b"abc", b"def"] and len(hidden_files(tmp_path)) == 1
    del staged  # dropped unpublished: removed
    assert hidden_files(tmp_path) == []
    staged = store.stage([b"abc", b"def"], 6, lambda chunk: None)
    staged.publish("ab/cd/object")
    staged.discard()  # after publishing: nothing to do
    assert store.get("ab/cd/object") == b"abcdef" and hidden_files(tmp_path) == []
