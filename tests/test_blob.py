"""djfs.blob: DataJoint's blob bytes, byte for byte, plus streaming, .npy views and hostile input."""

from __future__ import annotations

import datetime
import decimal
import io
import math
import struct
import tracemalloc
import uuid
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from djfs import blob
from djfs.blob import ArrayView, MatCell, MatStruct, Packed, npy_header, pack, serialize, unpack
from djfs.errors import BlobError


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def label(value: object) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return f"int of {value.bit_length()} bits"
    return repr(value)[:30]


def hexs(*parts: str) -> str:
    return "".join(parts).replace(" ", "")


def same(a: object, b: object) -> bool:
    """Strict structural equality: types, dtypes (byte order aside), shapes, NaN equal to NaN."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape:
            return False
        if a.dtype.names or b.dtype.names:
            return a.dtype.names == b.dtype.names and all(same(a[n], b[n]) for n in a.dtype.names)
        if a.dtype.newbyteorder("=") != b.dtype.newbyteorder("="):
            return False
        if a.dtype == object:
            return all(same(x, y) for x, y in zip(a.ravel(), b.ravel()))
        if a.dtype.kind == "M":
            native = a.dtype.newbyteorder("=")
            return np.array_equal(a.astype(native).view("i8"), b.astype(native).view("i8"))
        return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, complex) and (math.isnan(a.real) or math.isnan(a.imag)):
        return same(a.real, b.real) and same(a.imag, b.imag)
    return a == b


def expected_after_round_trip(value: object) -> object:
    """What DataJoint's format gives back for ``value`` (frozenset -> set, bytearray -> bytes, ...)."""
    if isinstance(value, frozenset):
        return set(value)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, list):
        return [expected_after_round_trip(v) for v in value]
    if isinstance(value, tuple):
        return tuple(expected_after_round_trip(v) for v in value)
    if isinstance(value, dict):
        return {k: expected_after_round_trip(v) for k, v in value.items()}
    if isinstance(value, (np.number, np.bool_, np.datetime64)):
        return np.asarray(value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        return value.astype(object)
    if isinstance(value, np.ndarray) and value.dtype == "S1":  # MATLAB char: a row becomes one string
        text = value.astype("U1")
        is_row = value.ndim == 1 or (value.ndim == 2 and value.shape[0] == 1)
        return np.array(["".join(text.ravel())]) if is_row else text
    return value


def object_array(items: list, cls: type = np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """An object array holding ``items`` as they are (numpy would turn equal-length lists into a 2-d array)."""
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array.reshape(shape or (len(items),)).view(cls)


def round_trip(value: object, **kwargs: object) -> object:
    data = pack(value, **kwargs)
    assert b"".join(serialize(value, **kwargs).chunks()) == data
    return unpack(data)


# ------------------------------------------------------------------------------------------ golden vectors

GOLDEN = [
    (
        np.array([1.0, 2.0]),
        "6d596d00 41 0100000000000000 0200000000000000 06000000 00000000 000000000000f03f 0000000000000040",
    ),
    (5, "646a3000 0a 0100 05"),
    (None, "646a3000 ff"),
    (
        [1, 2, 3],
        "646a3000 02 0300000000000000"
        + "".join(f" 0400000000000000 0a 0100 0{k}" for k in (1, 2, 3)),
    ),
    # 2x3 int32 in column-major order: 1 4 2 5 3 6
    (
        np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32),
        "6d596d00 41 0200000000000000 0200000000000000 0300000000000000 0c000000 00000000"
        " 01000000 04000000 02000000 05000000 03000000 06000000",
    ),
    ("abc", "646a3000 05 0300000000000000 616263"),
    ("", "646a3000 05 0000000000000000"),
    (
        {"a": 1},
        "646a3000 04 0100000000000000 0a00000000000000 05 0100000000000000 61 0400000000000000 0a 0100 01",
    ),
    (True, "646a3000 0b 01"),
    (False, "646a3000 0b 00"),
    (1.5, "646a3000 0d 000000000000f83f"),
    (1 + 2j, "646a3000 0c 000000000000f03f 0000000000000040"),
    (-1, "646a3000 0a 0100 ff"),
    (128, "646a3000 0a 0200 8000"),
    (-129, "646a3000 0a 0200 7fff"),
    (b"\x00\xff", "646a3000 06 0200000000000000 00ff"),
    ((1,), "646a3000 01 0100000000000000 0400000000000000 0a 0100 01"),
    ({7}, "646a3000 03 0100000000000000 0400000000000000 0a 0100 07"),
    (decimal.Decimal("1.5"), "646a3000 64 0300000000000000 312e35"),
    (datetime.date(2024, 1, 2), "646a3000 74 e6d63401 ffffffffffffffff"),
    (datetime.time(3, 4, 5, 6), "646a3000 74 ffffffff 467b471407000000"),
    (datetime.datetime(2024, 1, 2, 3, 4, 5, 6), "646a3000 74 e6d63401 467b471407000000"),
    (uuid.UUID(int=1), "646a3000 75 00000000000000000000000000000001"),
    (
        np.array([True, False]),
        "6d596d00 41 0100000000000000 0200000000000000 03000000 00000000 01 00",
    ),
    (
        np.array([1 + 2j], dtype=np.complex64),
        "6d596d00 41 0100000000000000 0100000000000000 07000000 01000000 0000803f 00000040",
    ),
    # a 0-d array (a numpy scalar) is not MATLAB-compatible: dj0
    (np.float64(1.5), "646a3000 41 0000000000000000 06000000 00000000 000000000000f83f"),
    (np.uint8(200), "646a3000 41 0000000000000000 09000000 00000000 c8"),
    # datetime64[D] is class 65536 + 3
    (
        np.array(["2020-01-01"], dtype="M8[D]"),
        "646a3000 41 0100000000000000 0100000000000000 03000100 00000000 5647000000000000",
    ),
    # str arrays are object ("void") arrays of dj0 strings
    (
        np.array(["a"]),
        "646a3000 41 0100000000000000 0100000000000000 05000000 00000000 0a00000000000000 05 0100000000000000 61",
    ),
    # MATLAB char: one uint16 per character
    (
        np.array([b"h", b"i"], dtype="S1"),
        "6d596d00 41 0100000000000000 0200000000000000 04000000 00000000 6800 6900",
    ),
    # empty array: shape only, no data
    (np.zeros((0, 3)), "6d596d00 41 0200000000000000 0000000000000000 0300000000000000 06000000 00000000"),
    # big-endian input is written little-endian
    (np.array([1], dtype=">i2"), "6d596d00 41 0100000000000000 0100000000000000 0a000000 00000000 0100"),
]


@pytest.mark.parametrize(("value", "expected"), GOLDEN, ids=[label(v) for v, _ in GOLDEN])
def test_golden_vectors(value: object, expected: str) -> None:
    assert pack(value).hex() == hexs(expected)
    assert pack(value, compress=False).hex() == hexs(expected)
    assert same(unpack(bytes.fromhex(hexs(expected))), expected_after_round_trip(value))


def test_golden_cell_and_struct() -> None:
    cell = np.empty((1, 1), dtype=object).view(MatCell)
    cell[0, 0] = np.array([1.0])
    element = "41 0100000000000000 0100000000000000 06000000 00000000 000000000000f03f"
    assert pack(cell).hex() == hexs(
        "6d596d00 43 0200000000000000 0100000000000000 0100000000000000", "2100000000000000", element
    )
    struct_array = np.empty((1, 1), dtype=[("x", object)]).view(MatStruct)
    struct_array[0, 0]["x"] = np.array([1.0])
    assert pack(struct_array).hex() == hexs(
        "6d596d00 53 0200000000000000 0100000000000000 0100000000000000 01000000 7800",
        "2100000000000000",
        element,
    )


def test_golden_record_array() -> None:
    records = np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")])
    assert pack(records).hex() == hexs(
        "646a3000 46 02000000 610062 00",
        "41 0100000000000000 0100000000000000 0c000000 00000000 01000000",
        "41 0100000000000000 0100000000000000 06000000 00000000 0000000000000040",
    )


def test_golden_compressed_header() -> None:
    value = np.zeros(1000)
    raw = pack(value, compress=False)
    assert len(raw) == 8029
    data = pack(value)
    # "ZL123\0", u64 uncompressed length (8029 = 0x1f5d), then a zlib stream at level 1 (header 78 01)
    assert data[:16].hex() == hexs("5a4c313233 00", "5d1f000000000000", "7801")
    assert zlib.decompress(data[14:]) == raw
    assert same(unpack(data), value)


# ------------------------------------------------------------------------------------------ round trips

ROUND_TRIPS = [
    None,
    True,
    False,
    0,
    -1,
    255,
    2**64,
    -(2**64) - 1,
    2**1000 + 12345,
    -(2**4000),
    (1 << (8 * 65535 - 1)) - 1,  # the largest int the format holds
    -(1 << (8 * 65535 - 1)) + 1,
    0.0,
    -0.0,
    1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
    complex(1, -1),
    complex(float("nan"), float("inf")),
    "",
    "héllo ☺ 𝄞 \0 end",
    b"",
    bytes(range(256)),
    bytearray(b"abc"),
    memoryview(b"mv"),
    [],
    (),
    set(),
    frozenset({1, "a"}),
    {},
    {"a": [1, (2, 3.5)], 4: {"nested": {"deep": None}}, (1, 2): b"x"},
    [[[[[]]]]],
    decimal.Decimal("-1234567890.0987654321"),
    decimal.Decimal("Infinity"),
    datetime.date(1, 1, 1),
    datetime.date(9999, 12, 31),
    datetime.time(0, 0),
    datetime.time(23, 59, 59, 999999),
    datetime.datetime(2000, 2, 29, 12, 0, 0, 1),
    uuid.uuid4(),
    np.float32(1.25),
    np.int64(-5),
    np.uint64(2**64 - 1),
    np.bool_(False),
    np.complex128(1 - 2j),
    np.datetime64("2024-05-06T07:08:09.123456789", "ns"),
    range(3),
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=[label(v) for v in ROUND_TRIPS])
def test_round_trip_python_values(value: object) -> None:
    expected = tuple(value) if isinstance(value, range) else expected_after_round_trip(value)
    assert same(round_trip(value), expected)


ARRAY_DTYPES = [
    "bool", "i1", "u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f4", "<f8", "<c8", "<c16",
    ">i2", ">u4", ">i8", ">f4", ">f8", ">c16", "M8[Y]", "M8[W]", "M8[D]", "M8[s]", "M8[ns]", "M8[as]", ">M8[ms]",
]  # fmt: skip


@pytest.mark.parametrize("dtype", ARRAY_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3), (3, 0, 2), (2, 3, 4), (1, 1, 1, 1, 2)])
def test_round_trip_arrays(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(42)
    raw = rng.integers(0, 256, size=math.prod(shape) * np.dtype(dtype).itemsize, dtype=np.uint8)
    if np.dtype(dtype).kind == "b":
        raw = raw % 2
    value = raw.view(dtype).reshape(shape)
    for array in (value, np.asfortranarray(value), value.T):
        result = round_trip(array)
        assert same(result, array)
        assert result.dtype.byteorder in "=|<"
        assert result.flags.f_contiguous  # column-major view of the blob


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_round_trip_special_floats_and_layouts() -> None:
    special = np.array([[np.nan, np.inf], [-np.inf, -0.0]])
    assert same(round_trip(special), special)
    assert np.signbit(round_trip(special)[1, 1])
    strided = np.arange(100.0).reshape(10, 10)[::3, ::-2]
    assert same(round_trip(strided), strided)
    matrix = np.asmatrix(np.arange(6).reshape(2, 3))
    assert same(round_trip(matrix), np.asarray(matrix))


def test_round_trip_str_and_object_arrays() -> None:
    words = np.array([["a", "héllo"], ["", "☺"]])
    result = round_trip(words)
    assert result.dtype == object and result.tolist() == words.tolist()
    objects = object_array([1, [1, 2], np.arange(3), {"k": None}])
    assert same(round_trip(objects), objects)
    nested_lists = object_array([[1, 2], [3, 4]])  # equal-length lists must not become a 2-d array
    assert same(round_trip(nested_lists), nested_lists)
    assert pack(objects)[:4] == b"dj0\0"


def test_round_trip_char_arrays() -> None:
    row = np.array([b"h", b"i"], dtype="S1")
    assert same(round_trip(row), np.array(["hi"]))
    assert unpack(pack(row), squeeze=True) == "hi"
    matrix = np.array([[b"a", b"b", b"c"], [b"d", b"e", b"f"]], dtype="S1")
    assert same(round_trip(matrix), matrix.astype("U1"))  # column-major, unlike DataJoint's writer


def test_matlab_char_row_is_utf16() -> None:
    text = "hé☺𝄞"
    units = np.frombuffer(text.encode("utf-16-le"), dtype="<u2")
    data = b"mYm\0A" + u64(2) + u64(1) + u64(units.size) + u32(4) + u32(0) + units.tobytes()
    assert same(unpack(data), np.array([text]))


def test_round_trip_record_arrays() -> None:
    records = np.array(
        [(1, 2.5, "x", True), (-3, np.nan, "yz", False)],
        dtype=[("i", "<i4"), ("f", ">f8"), ("s", "U2"), ("b", "?")],
    )
    result = round_trip(records)
    assert isinstance(result, np.recarray)
    assert result.dtype.names == records.dtype.names
    assert result["i"].tolist() == [1, -3] and result["s"].tolist() == ["x", "yz"]
    assert same(result["f"], records["f"]) and same(result["b"], records["b"])
    nested = np.zeros((2, 2), dtype=[("p", [("x", "<f4"), ("y", "<f4")]), ("n", "<u2")])
    nested["p"]["y"] = [[1, 2], [3, 4]]
    result = round_trip(nested)
    assert result.shape == (2, 2) and same(np.asarray(result["p"]["y"]), nested["p"]["y"])


def test_round_trip_matlab_cell_and_struct() -> None:
    items = [np.arange(3.0), np.array([[1, 2]], np.int8), np.zeros((0,)), np.array([True]), np.ones((2, 2))]
    cell = object_array([*items, np.array([b"a"], "S1")], MatCell, (2, 3))
    data = pack(cell)
    assert data[:4] == b"mYm\0"  # only MATLAB-compatible contents: MATLAB can read it
    result = unpack(data)
    assert isinstance(result, MatCell) and result.shape == (2, 3)
    for index, item in enumerate(items):
        assert same(result.flat[index], item)
    assert same(result.flat[5], np.array(["a"]))

    people = np.empty((1, 2), dtype=[("name", object), ("age", object)]).view(MatStruct)
    names, ages = people["name"], people["age"]
    names[0, 0], ages[0, 0] = np.array([b"a"], "S1"), np.array([30.0])
    names[0, 1], ages[0, 1] = np.array([b"b"], "S1"), np.array([41.0])
    data = pack(people)
    assert data[:4] == b"mYm\0"
    result = unpack(data)
    assert isinstance(result, MatStruct) and result.shape == (1, 2)
    assert same(result[0, 1]["age"], np.array([41.0])) and same(result[0, 0]["name"], np.array(["a"]))
    assert unpack(data, squeeze=True).shape == (2,)


def test_protocol_choice() -> None:
    assert pack(np.arange(3))[:4] == b"mYm\0"
    assert pack(np.array(3))[:4] == b"dj0\0"  # 0-d arrays don't exist in MATLAB
    assert pack(np.arange(3).astype("M8[D]"))[:4] == b"dj0\0"
    nested = object_array([[1]], MatCell)
    assert pack(nested)[:4] == b"dj0\0"  # a Python list anywhere needs dj0


def test_squeeze() -> None:
    assert unpack(pack(np.array([[2.5]])), squeeze=True) == 2.5
    assert type(unpack(pack(np.array([[2.5]])), squeeze=True)) is float
    assert unpack(pack(np.zeros((1, 3, 1))), squeeze=True).shape == (3,)
    assert unpack(pack([np.ones((1, 2))]), squeeze=True)[0].shape == (2,)
    assert unpack(pack(np.zeros((1, 3, 1)))).shape == (1, 3, 1)


# ------------------------------------------------------------------------------------------ refused values

UNSUPPORTED = [
    np.zeros(3, dtype=np.float16),
    np.float16(1),
    np.zeros(2, dtype=np.longdouble) if np.dtype(np.longdouble).itemsize > 8 else np.zeros(2, dtype="m8[s]"),
    np.zeros(2, dtype="m8[s]"),
    np.timedelta64(1, "s"),
    np.zeros(2, dtype="M8[2D]"),
    np.array([b"ab"]),
    np.zeros(2, dtype=[("v", "<f8", (3,))]),
    np.zeros(2, dtype=[]),
    object(),
    datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    datetime.time(1, tzinfo=datetime.timezone.utc),
    1 << (8 * 65535 - 1),
]


@pytest.mark.parametrize("value", UNSUPPORTED, ids=[label(v) for v in UNSUPPORTED])
def test_unsupported_values_raise(value: object) -> None:
    with pytest.raises(BlobError):
        pack(value)


def test_cyclic_and_too_deep_values_raise() -> None:
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(BlobError, match="deeper"):
        pack(cyclic)
    deep: list = []
    for _ in range(blob.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(BlobError, match="deeper"):
        pack(deep)
    fine: list = []
    for _ in range(blob.MAX_DEPTH - 1):
        fine = [fine]
    assert unpack(pack(fine)) == fine


# ------------------------------------------------------------------------------------------ streaming

STREAM_VALUES = [
    None,
    [1, "two", 3.0, {"k": np.arange(5)}],
    np.arange(10.0),
    np.zeros(100_000),  # compressed
    np.random.default_rng(1).random((300, 200)),  # large, C-order
    np.asfortranarray(np.random.default_rng(2).random((300, 200))),
    {"big": np.random.default_rng(3).integers(0, 9, (70, 80, 9), dtype=np.int16), "s": "x" * 100_000},
]


@pytest.mark.parametrize("value", STREAM_VALUES, ids=range(len(STREAM_VALUES)))
@pytest.mark.parametrize("compress", [True, False])
def test_chunks_equal_pack(value: object, compress: bool) -> None:
    packed = serialize(value, compress)
    assert isinstance(packed, Packed)
    first = b"".join(packed.chunks())
    assert first == pack(value, compress)
    assert packed.size == len(first)
    assert b"".join(packed.chunks()) == first  # chunks() can be called again
    assert packed.compressed == first.startswith(b"ZL123\0")


def reference_blob(array: np.ndarray) -> bytes:
    """The mYm bytes of a real array, built independently of djfs.blob's chunking."""
    little = np.asarray(array, dtype=array.dtype.newbyteorder("<"))
    class_ids = {"b1": 3, "f8": 6, "f4": 7, "i4": 12, "M8[s]": 65536 + 6}
    return (
        (b"dj0\0A" if array.dtype.kind == "M" else b"mYm\0A")
        + u64(array.ndim)
        + b"".join(u64(n) for n in array.shape)
        + u32(class_ids[little.dtype.str[1:]])
        + u32(0)
        + little.tobytes(order="F")
    )


def chunk_test_arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    base = rng.random((100, 100, 5))
    return [
        base,  # slab of the last axis (80 KB) exceeds the chunk limit: recursion
        np.asfortranarray(base),
        base.transpose(1, 2, 0),
        base[::2, ::-1, 1:4],
        base.astype(">f8"),
        np.asfortranarray(base).astype(">f4", order="F"),
        rng.integers(0, 1000, 50_000).astype("<i4")[::-3],  # 1-d strided
        rng.integers(0, 2, (300, 301)).astype(bool),
        np.arange(40_000).astype("M8[s]").reshape(200, 200),
        rng.random(30_000),  # 1-d contiguous: zero-copy path
    ]


@pytest.mark.parametrize("index", range(10))
def test_chunks_bounded_and_column_major(monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    array = chunk_test_arrays()[index]
    monkeypatch.setattr(blob, "CHUNK_SIZE", 4096)
    chunks = list(serialize(array, compress=False).chunks())
    assert len(chunks) > 10
    assert all(len(c) <= 4096 for c in chunks)
    assert b"".join(chunks) == reference_blob(array)
    assert pack(array, compress=False) == reference_blob(array)


def test_complex_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    array = (rng.random((150, 70)) + 1j * rng.random((150, 70))).astype(">c16")
    monkeypatch.setattr(blob, "CHUNK_SIZE", 4096)
    expected = (
        b"mYm\0A" + u64(2) + u64(150) + u64(70) + u32(6) + u32(1)
        + array.real.astype("<f8").tobytes(order="F") + array.imag.astype("<f8").tobytes(order="F")
    )  # fmt: skip
    chunks = list(serialize(array, compress=False).chunks())
    assert all(len(c) <= 4096 for c in chunks)
    assert b"".join(chunks) == expected
    assert same(unpack(expected), array)


def test_contiguous_chunks_are_views_of_the_array() -> None:
    array = np.random.default_rng(0).random(3 * (1 << 20))  # 24 MiB: more than one chunk
    chunks = list(serialize(array, compress=False).chunks())
    data_chunks = [c for c in chunks if len(c) >= 1 << 20]
    assert len(data_chunks) == 2
    assert all(isinstance(c, memoryview) for c in data_chunks)
    assert all(np.shares_memory(np.frombuffer(c, np.uint8), array) for c in data_chunks)


def measure_peak(function) -> int:  # noqa: ANN001
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_measure_peak_sees_numpy_copies() -> None:
    """The memory test below is only meaningful if tracemalloc sees numpy's data buffers."""
    array = np.ones((1024, 4096), np.float32)  # 16 MiB
    assert measure_peak(lambda: array.T.copy()) >= array.nbytes


def test_serialize_huge_array_streams_without_a_copy() -> None:
    rows, cols = 8192, 16384  # 512 MiB of float32, C-contiguous
    array = np.empty((rows, cols), np.float32)
    array[:] = np.arange(cols, dtype=np.float32)  # column-major data: column c is `rows` times c
    header = 4 + 1 + 8 + 16 + 8
    seen = {"bytes": 0, "checked": 0}

    def consume() -> None:
        packed = serialize(array)
        assert not packed.compressed and packed.size == header + array.nbytes
        assert packed.array is not None and packed.array.data_offset == header
        position = 0
        for chunk in packed.chunks():
            assert len(chunk) <= blob.CHUNK_SIZE
            if position >= header:
                start = (position - header) // 4
                end = start + len(chunk) // 4 - 1
                first, last = struct.unpack_from("<f", chunk, 0)[0], struct.unpack_from("<f", chunk, len(chunk) - 4)[0]
                assert (first, last) == (start // rows, end // rows)
                seen["checked"] += 1
            position += len(chunk)
        seen["bytes"] = position

    peak = measure_peak(consume)
    assert seen["bytes"] == header + array.nbytes
    assert seen["checked"] >= array.nbytes // blob.CHUNK_SIZE
    assert peak < 80 << 20, f"peak {peak / 2**20:.0f} MiB while streaming a 512 MiB array"

    fortran = array.T  # F-contiguous: served straight from the array's memory
    peak = measure_peak(lambda: sum(len(c) for c in serialize(fortran).chunks()))
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB for an F-contiguous array"


def test_pack_of_a_large_c_ordered_array_holds_one_copy() -> None:
    array = np.ones((2048, 16384), np.float32)  # 128 MiB, C-contiguous: its column-major bytes must be copied
    result: list[bytes] = []
    peak = measure_peak(lambda: result.append(pack(array)))
    assert len(result[0]) == 37 + array.nbytes
    # besides the result: the piece being written, the next one (filled meanwhile) and the one after it
    assert peak < array.nbytes + 3 * blob.CHUNK_SIZE + (8 << 20), f"peak {peak / 2**20:.0f} MiB for a 128 MiB result"
    assert result[0][37:41] == struct.pack("<f", 1.0) and result[0][-4:] == struct.pack("<f", 1.0)


# ------------------------------------------------------------------------------------------ .npy views

NPY_DTYPES = ["bool", "i1", "u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f4", "<f8", ">f8", ">i4"]


@pytest.mark.parametrize("dtype", NPY_DTYPES)
@pytest.mark.parametrize("layout", ["C", "F", "strided", "1d", "empty", "3d"])
def test_npy_view(dtype: str, layout: str) -> None:
    base = (np.arange(120) % 7).astype(dtype)
    array = {
        "C": base.reshape(8, 15),
        "F": np.asfortranarray(base.reshape(8, 15)),
        "strided": base.reshape(8, 15)[::2, 1::3],
        "1d": base,
        "empty": base[:0].reshape(0, 4),
        "3d": base.reshape(2, 3, 20).transpose(2, 0, 1),
    }[layout]
    packed = serialize(array, compress=False)
    view = packed.array
    assert isinstance(view, ArrayView)
    assert view.shape == array.shape
    assert view.dtype == array.dtype.newbyteorder("<") and view.dtype.byteorder in "<|="
    data = b"".join(packed.chunks())
    assert view.data_offset == len(data) - array.nbytes
    assert view.npy_header.startswith(b"\x93NUMPY\x01\x00") and len(view.npy_header) % 64 == 0
    loaded = np.load(io.BytesIO(view.npy_header + data[view.data_offset :]))
    assert same(loaded, array)
    assert loaded.flags.f_contiguous


def test_npy_view_absent_when_not_a_plain_numeric_array() -> None:
    assert serialize(np.zeros(10_000)).array is None  # compressed
    assert serialize(np.zeros(10_000), compress=False).array is not None
    assert serialize(np.array([1 + 1j]), compress=False).array is None
    assert serialize(np.array(1.0), compress=False).array is None
    assert serialize(np.array(["a"]), compress=False).array is None
    assert serialize(np.arange(3).astype("M8[D]"), compress=False).array is None
    assert serialize([np.arange(3)], compress=False).array is None
    assert serialize(np.zeros(2, dtype=[("a", "f8")]), compress=False).array is None


def test_npy_header_version_2_when_needed() -> None:
    dtype = np.dtype([(f"field_{i}", "<f8") for i in range(5000)])
    header = npy_header(dtype, (3,))
    assert header.startswith(b"\x93NUMPY\x02\x00")
    stream = io.BytesIO(header + bytes(3 * dtype.itemsize))
    loaded = np.load(stream, max_header_size=1 << 20)
    assert loaded.dtype == dtype and loaded.shape == (3,)
    assert npy_header(np.dtype("<f4"), (2, 3), fortran_order=False).startswith(b"\x93NUMPY\x01\x00")


# ------------------------------------------------------------------------------------------ aliasing

def test_unpack_returns_views_of_a_writeable_buffer() -> None:
    array = np.arange(1000, dtype=np.int64).reshape(20, 50)
    buffer = bytearray(pack(array, compress=False))
    result = unpack(buffer)
    assert result.flags.writeable
    assert np.shares_memory(result, np.frombuffer(buffer, np.uint8))
    result[3, 7] = -1
    assert same(unpack(bytes(buffer))[3, 7], np.int64(-1))  # written through to the buffer

    nested = bytearray(pack({"a": [array]}, compress=False))
    inner = unpack(nested)["a"][0]
    assert np.shares_memory(inner, np.frombuffer(nested, np.uint8))


def test_unpack_of_read_only_input_is_read_only() -> None:
    data = pack(np.arange(300.0), compress=False)
    result = unpack(data)
    assert not result.flags.writeable
    assert np.shares_memory(result, np.frombuffer(data, np.uint8))
    assert not unpack(memoryview(bytearray(data)).toreadonly()).flags.writeable


def test_unpack_of_compressed_blob_owns_its_data() -> None:
    data = bytearray(pack(np.zeros(10_000)))
    assert data.startswith(b"ZL123\0")
    result = unpack(data)
    assert result.flags.writeable and not np.shares_memory(result, np.frombuffer(data, np.uint8))


# ------------------------------------------------------------------------------------------ compression rule

def test_compression_rule() -> None:
    random_bytes = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8)
    assert pack(random_bytes)[:4] == b"mYm\0"
    assert not serialize(random_bytes).compressed

    zeros = np.zeros(100_000)
    assert pack(zeros).startswith(b"ZL123\0")
    assert len(pack(zeros)) < 10_000

    small = np.zeros(100)  # 837 bytes serialized: never compressed, as in DataJoint
    assert len(pack(small, compress=False)) <= 1000 and pack(small)[:4] == b"mYm\0"

    assert pack(zeros, compress=False)[:4] == b"mYm\0"

    huge = np.zeros((blob.COMPRESS_MAX // 8) + 16)  # just over 64 MiB of very compressible zeros
    packed = serialize(huge)
    assert not packed.compressed and packed.array is not None


def test_compression_sample_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    middle_random = np.zeros(200_000, dtype=np.uint8)
    middle_random[70_000:130_000] = rng.integers(0, 256, 60_000, dtype=np.uint8)
    assert not serialize(middle_random).compressed  # the sample from the middle does not compress
    calls = []
    original = zlib.compress
    monkeypatch.setattr(zlib, "compress", lambda data, level=-1: calls.append(level) or original(data, level))
    assert serialize(np.zeros(10_000)).compressed
    assert calls and set(calls) == {blob.COMPRESS_LEVEL} and blob.COMPRESS_LEVEL == 1


def test_reads_any_zlib_level() -> None:
    value = {"a": np.arange(5000) % 3, "b": "text " * 500}
    raw = pack(value, compress=False)
    for level in (0, 1, 6, 9):
        data = b"ZL123\0" + u64(len(raw)) + zlib.compress(raw, level)
        assert same(unpack(data), value)


# ------------------------------------------------------------------------------------------ hostile input

def test_truncated_blobs_raise() -> None:
    values = [
        [1, "two", (3.0, None), {"k": b"v"}],
        np.arange(6, dtype=np.int16).reshape(2, 3),
        np.array(["a", "b"]),
        datetime.datetime(2020, 1, 1),
        decimal.Decimal("1.5"),
        uuid.UUID(int=5),
        np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
        np.zeros(1000),
    ]
    for value in values:
        data = pack(value)
        for cut in range(len(data)):
            with pytest.raises(BlobError):
                unpack(data[:cut])
        with pytest.raises(BlobError, match="trailing"):
            unpack(data + b"\0")


def test_wrong_header_and_unknown_codes() -> None:
    for data in (b"", b"mYm", b"abc\0\xff", b"mYm\1\xff", b"\0" * 20, b"ZL124\0" + bytes(20)):
        with pytest.raises(BlobError):
            unpack(data)
    with pytest.raises(BlobError, match="unknown data structure code"):
        unpack(b"dj0\0Z")
    with pytest.raises(BlobError, match="sparse"):
        unpack(b"mYm\0P")
    for class_id in (0, 1, 2, 16, 17, 65_535, 65_549, 2**32 - 1):
        with pytest.raises(BlobError, match="class id"):
            unpack(b"mYm\0A" + u64(1) + u64(1) + u32(class_id) + u32(0) + bytes(8))
    with pytest.raises(BlobError):
        unpack(b"mYm\0A" + u64(1) + u64(1) + u32(3) + u32(1) + bytes(2))  # complex logical
    with pytest.raises(BlobError, match="contiguous"):
        unpack(memoryview(bytes(40))[::2])


FORGED = [
    ("list of 2**60 items", b"dj0\0\x02" + u64(2**60) + bytes(20)),
    ("dict of 2**62 pairs", b"dj0\0\x04" + u64(2**62)),
    ("string of 2**63 bytes", b"dj0\0\x05" + u64(2**63) + b"abc"),
    ("bytes of 2**64-1", b"dj0\0\x06" + u64(2**64 - 1) + b"abc"),
    ("decimal of 2**50", b"dj0\0d" + u64(2**50)),
    ("array 2**40 x 2**40", b"mYm\0A" + u64(2) + u64(2**40) + u64(2**40) + u32(6) + u32(0) + bytes(64)),
    ("array 2**62 bytes", b"mYm\0A" + u64(1) + u64(2**62) + u32(9) + u32(0) + bytes(64)),
    ("complex array", b"mYm\0A" + u64(1) + u64(2**61) + u32(6) + u32(1) + bytes(64)),
    ("object array", b"dj0\0A" + u64(1) + u64(2**58) + u32(5) + u32(0) + bytes(64)),
    ("char array", b"mYm\0A" + u64(1) + u64(2**63) + u32(4) + u32(0) + bytes(64)),
    ("2**63 dimensions", b"mYm\0A" + u64(2**63) + bytes(64)),
    ("65 dimensions", b"mYm\0A" + u64(65) + u64(1) * 65 + u32(6) + u32(0) + bytes(8)),
    ("empty array with huge dims", b"mYm\0A" + u64(3) + u64(0) + u64(2**62) + u64(2**62) + u32(6) + u32(0)),
    ("cell of 2**60", b"mYm\0C" + u64(1) + u64(2**60) + bytes(64)),
    ("struct of 2**40 x 2**30", b"mYm\0S" + u64(1) + u64(2**40) + u32(2**30) + b"a\0" * 8),
    ("struct with 2**32-1 fields", b"mYm\0S" + u64(1) + u64(1) + u32(2**32 - 1) + b"a\0" * 8),
    ("record array field names", b"dj0\0F" + u32(3) + b"a\0b"),
    ("element length 2**63", b"dj0\0\x02" + u64(1) + u64(2**63) + b"\xff"),
    ("element length too short", b"dj0\0\x02" + u64(1) + u64(0) + b"\xff"),
    ("element length too long", b"dj0\0\x02" + u64(1) + u64(2) + b"\xff\xff"),
    ("int of 65535 bytes", b"dj0\0\x0a\xff\xff" + bytes(10)),
    ("ZL123 claiming 2**62 bytes", b"ZL123\0" + u64(2**62) + zlib.compress(b"dj0\0\xff")),
    ("ZL123 claiming 2**64-1 bytes", b"ZL123\0" + u64(2**64 - 1) + zlib.compress(b"x" * 10_000)),
    ("ZL123 claiming too few bytes", b"ZL123\0" + u64(4) + zlib.compress(b"dj0\0\xff")),
    ("ZL123 claiming too many bytes", b"ZL123\0" + u64(6) + zlib.compress(b"dj0\0\xff")),
    ("ZL123 corrupt stream", b"ZL123\0" + u64(5) + b"\x78\x01garbage"),
    ("ZL123 trailing bytes", b"ZL123\0" + u64(5) + zlib.compress(b"dj0\0\xff") + b"x"),
    ("ZL123 truncated stream", b"ZL123\0" + u64(5000) + zlib.compress(bytes(5000))[:-5]),
    ("invalid utf-8", b"dj0\0\x05" + u64(2) + b"\xff\xfe"),
    ("invalid date", b"dj0\0t" + struct.pack("<iq", 20241399, -1)),
    ("invalid time", b"dj0\0t" + struct.pack("<iq", -1, 250000000000)),
    ("invalid decimal", b"dj0\0d" + u64(3) + b"abc"),
    ("unhashable set item", b"dj0\0\x03" + u64(1) + u64(9) + b"\x02" + u64(0)),
    ("unhashable dict key", b"dj0\0\x04" + u64(1) + u64(9) + b"\x02" + u64(0) + u64(1) + b"\xff"),
    ("duplicate struct fields", b"mYm\0S" + u64(1) + u64(1) + u32(2) + b"a\0a\0" + (u64(1) + b"\xff") * 2),
    ("unterminated field name", b"mYm\0S" + u64(1) + u64(1) + u32(1) + b"abc"),
    ("record fields of different shapes",
     b"dj0\0F" + u32(2) + b"a\0b\0" + pack(np.zeros(2), False)[4:] + pack(np.zeros(3), False)[4:]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data"), FORGED, ids=[name for name, _ in FORGED])
def test_forged_lengths_raise_without_allocating(name: str, data: bytes) -> None:
    def attempt() -> None:
        with pytest.raises(BlobError):
            unpack(data)

    assert measure_peak(attempt) < 1 << 20


def test_decompression_bomb_is_bounded() -> None:
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    stream = b"".join(compressor.compress(block) for _ in range(100)) + compressor.flush()  # 100 MiB of zeros
    data = b"ZL123\0" + u64(1000) + stream

    def attempt() -> None:
        with pytest.raises(BlobError, match="more than the declared"):
            unpack(data)

    assert measure_peak(attempt) < 4 << 20


def test_deep_nesting_raises_blob_error() -> None:
    inner = b"\xff"
    for _ in range(1000):
        inner = b"\x02" + u64(1) + u64(len(inner)) + inner
    with pytest.raises(BlobError, match="deeper"):
        unpack(b"dj0\0" + inner)


# ------------------------------------------------------------------------------------------ property test

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**600), max_value=2**600)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.complex_numbers(allow_nan=True)
    | st.text()
    | st.binary()
    | st.decimals(allow_nan=False)
    | st.dates()
    | st.times()
    | st.datetimes()
    | st.uuids()
)
HASHABLE = st.text(max_size=5) | st.integers() | st.booleans() | st.none()
ARRAYS = hnp.arrays(
    dtype=hnp.integer_dtypes(endianness="?")
    | hnp.unsigned_integer_dtypes(endianness="?")
    | hnp.floating_dtypes(sizes=(32, 64), endianness="?")
    | hnp.complex_number_dtypes(sizes=(64, 128), endianness="?")
    | hnp.boolean_dtypes()
    | hnp.datetime64_dtypes(endianness="?"),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
VALUES = st.recursive(
    SCALARS | ARRAYS,
    lambda children: st.lists(children, max_size=4)
    | st.tuples(children, children)
    | st.dictionaries(HASHABLE, children, max_size=4)
    | st.sets(HASHABLE, max_size=4)
    | st.frozensets(HASHABLE, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=VALUES, compress=st.booleans())
def test_property_round_trip(value: object, compress: bool) -> None:
    data = pack(value, compress)
    assert b"".join(serialize(value, compress).chunks()) == data
    assert same(unpack(data), expected_after_round_trip(value))
    assert same(unpack(bytearray(data)), expected_after_round_trip(value))


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=200))
def test_property_garbage_never_crashes_unexpectedly(data: bytes) -> None:
    for candidate in (data, b"dj0\0" + data, b"mYm\0A" + data):
        try:
            unpack(candidate)
        except BlobError:
            pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=VALUES, where=st.floats(0, 1, exclude_max=True), byte=st.integers(0, 255), cut=st.booleans())
def test_property_corrupted_blobs_raise_only_blob_error(value: object, where: float, byte: int, cut: bool) -> None:
    data = bytearray(pack(value, compress=False))
    position = int(where * len(data))
    if cut:
        del data[position:]
    else:
        data[position] = byte
    try:
        unpack(data)
    except BlobError:
        pass


# ------------------------------------------------------------------ the column-major copy (cache-blocked)

LAYOUT_ARRAYS = hnp.arrays(
    dtype=hnp.integer_dtypes(endianness="?")
    | hnp.unsigned_integer_dtypes(endianness="?")
    | hnp.floating_dtypes(sizes=(32, 64), endianness="?")
    | hnp.boolean_dtypes(),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9),
)


def layouts(array: np.ndarray, how: int) -> np.ndarray:
    """The same values in another memory layout: C, Fortran, axes permuted, strided, reversed."""
    if how == 1:
        return np.asfortranarray(array)
    if how == 2:
        return array.transpose(*reversed(range(array.ndim))).copy().T  # F-ordered through a transpose
    if how == 3:
        return np.repeat(array, 2, axis=0)[::2]  # strided along the first axis
    if how == 4:
        return array[..., ::-1]
    if how == 5:
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(array, 0, -1)), -1, 0)  # first axis fastest
    return np.ascontiguousarray(array)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=LAYOUT_ARRAYS, how=st.integers(0, 5), chunk=st.sampled_from([8, 40, 256, 4096]),
       tile=st.sampled_from([(1, 1, 1), (2, 3, 2), (8, 128, 8)]))
def test_property_column_major_pieces_equal_numpy(array: np.ndarray, how: int, chunk: int,
                                                  tile: tuple[int, int, int]) -> None:
    """Bounded pieces, any slab and tile size, any layout and byte order: numpy's Fortran-order bytes."""
    array = layouts(array, how)
    expected = np.asfortranarray(array, dtype=array.dtype.newbyteorder("<")).tobytes(order="F")
    saved = blob._TILE, blob._GATHER_BYTES, blob.SLAB_SIZE
    # tiny tiles, gather groups and slabs exercise every edge of the tiled and the two-copy transposes
    blob._TILE, blob._GATHER_BYTES, blob.SLAB_SIZE = tile, tile[1] * 16, chunk * tile[0]
    try:
        pieces = [bytes(piece) for piece in blob._column_major_pieces(array, chunk)]
    finally:
        blob._TILE, blob._GATHER_BYTES, blob.SLAB_SIZE = saved
    assert all(len(piece) <= max(chunk, array.dtype.itemsize) for piece in pieces)
    assert b"".join(pieces) == expected


@pytest.mark.parametrize("shape", [(37, 50, 61), (300, 301), (5, 40, 30, 7)])
def test_tiled_copy_of_movies_is_column_major(monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...]) -> None:
    """Arrays larger than a tile and than a chunk, as a (T, Y, X) movie is: the blob is DataJoint's bytes."""
    monkeypatch.setattr(blob, "CHUNK_SIZE", 64 << 10)
    array = np.random.default_rng(11).random(shape).astype(np.float32)
    chunks = list(serialize(array, compress=False).chunks())
    assert len(chunks) > 3 and all(len(c) <= 64 << 10 for c in chunks)
    assert b"".join(chunks) == reference_blob(array)
    assert same(unpack(b"".join(chunks)), array)
