"""DataJoint's blob serialization format, written and read byte for byte.

djfs stores ``longblob`` attributes in the bytes DataJoint (datajoint-python and, for the ``mYm`` subset,
datajoint-matlab) writes, so either side reads what the other wrote.  The format, as a reader sees it::

    blob       := [ "ZL123\\0" u64:uncompressed_length zlib-stream ]   -- optional compression wrapper
                  protocol value                                       -- after decompression
    protocol   := "mYm\\0"   (only MATLAB-compatible values: non-0-d numeric/bool/char arrays, cells, structs)
                | "dj0\\0"   (anything else anywhere inside: Python types, 0-d arrays, datetime64, str/object arrays)
    value      := code payload     -- one byte code; every integer is little-endian

    "A"  array     u64 ndim, u64[ndim] shape, u32 class id, u32 is_complex, column-major data
                   (complex: all real parts, then all imaginary parts).  Class ids (MATLAB mxClassID):
                   3 logical, 4 char (uint16 per character), 5 void (each element: u64 length + value),
                   6 double, 7 single, 8/9 int8/uint8, 10/11 int16/uint16, 12/13 int32/uint32,
                   14/15 int64/uint64, 65536 + i  datetime64[Y M W D h m s ms us ns ps fs as][i]
    "S"  struct    u64 ndim, u64[ndim] shape, u32 n_fields, NUL-terminated field names,
                   then per element (column-major), per field: u64 length + value
    "C"  cell      u64 ndim, u64[ndim] shape, per element (column-major): u64 length + value
    "F"  record array  u32 n_fields, NUL-terminated field names, one array value per field (no lengths)
    0x01 tuple, 0x02 list, 0x03 set   u64 count, per item: u64 length + value
    0x04 dict      u64 count, per pair: u64 length + key value, u64 length + value
    0x05 str (u64 length + UTF-8)      0x06 bytes (u64 length + bytes)
    0x0a int (u16 n + n bytes, two's complement)  0x0b bool (1 byte)  0x0c complex (2 x f64)  0x0d float (f64)
    "d"  Decimal (u64 length + text)   "t" date/time/datetime (i32 yyyymmdd or -1, i64 hhmmssuuuuuu or -1)
    "u"  UUID (16 bytes)               0xff None

Compression rule.  DataJoint compresses every blob over 1000 bytes whose zlib form is smaller.  djfs must never
let compression be the bottleneck, so it compresses (zlib level 1) only when the serialized size is > 1000 bytes
AND <= 64 MiB AND a sample (up to 16 KiB from the middle) compresses to < 0.8 of its size -- and keeps the result
only if it is actually smaller.  Readers accept any zlib level, bound the output to the declared length and
check that the lengths agree.

Decisions where DataJoint is silent, lossy or broken (each raises :class:`BlobError` unless noted):

* float16, longdouble, timedelta64, multi-byte ``S`` arrays, subarray fields and datetime64 with a multiplier
  ("datetime64[2D]") have no class id: refused, as DataJoint does.
* Timezone-aware datetimes/times: refused (DataJoint silently drops the tzinfo).
* Big-endian arrays are written little-endian (DataJoint refuses them).  ``memoryview`` is written as bytes.
* Char matrices are written column-major (DataJoint writes them row-major but reads them column-major) and read
  as UTF-16 code units (DataJoint keeps only the low byte; identical for ASCII).
* Things DataJoint reads back as a different type, and so do we: frozenset -> set, bytearray/memoryview -> bytes,
  ``str`` arrays -> object arrays of str, numpy scalars -> 0-d arrays, structured arrays -> ``np.recarray``,
  ``S1`` arrays -> char arrays (str).
* Zero-field record arrays and structs are refused when writing (DataJoint writes bytes it cannot read back).
* Nesting is bounded by :data:`MAX_DEPTH` (Python's recursion limit would otherwise turn a hostile or cyclic
  value into a RecursionError).

Aliasing: :func:`unpack` returns numeric arrays that are *views* of the buffer it was given (no copy, so large
arrays cost nothing extra).  They are writeable exactly when the buffer is (``bytearray``, writeable
``memoryview``); writing to them writes to the buffer, and a ``bytearray`` cannot be resized while they live.
Arrays of a compressed blob view a private decompressed buffer.  Data offsets in ``mYm`` are odd, so such
arrays are unaligned -- correct, if slightly slower for some operations.
"""

from __future__ import annotations

import collections.abc
import datetime
import decimal
import functools
import io
import itertools
import math
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.lib.format as npy_format

from djfs.errors import BlobError

__all__ = [
    "ArrayView",
    "MatCell",
    "MatStruct",
    "Packed",
    "npy_header",
    "pack",
    "serialize",
    "unpack",
]

MYM = b"mYm\0"
DJ0 = b"dj0\0"
ZLIB_PREFIX = b"ZL123\0"

CHUNK_SIZE = 16 << 20  # largest piece Packed.chunks() yields (and largest temporary copy it makes)
MAX_DEPTH = 200  # nesting bound; two Python frames per level keep us well inside the default recursion limit

COMPRESS_MIN = 1000  # DataJoint's threshold: smaller blobs are never compressed
COMPRESS_MAX = 64 << 20  # above this, compressing would dominate the cost of storing
COMPRESS_SAMPLE = 16 << 10  # zlib compresses 16 KiB ten times faster than 64 KiB (its window is 32 KiB)
COMPRESS_SAMPLE_RATIO = 0.8
COMPRESS_LEVEL = 1
ZLIB_MAX_RATIO = 1032  # deflate cannot expand input by more than this: bounds a declared length cheaply

_INLINE_ARRAY_BYTES = 64 << 10  # smaller arrays are copied into the segment list, larger ones streamed
_MAX_NDIM = 64  # numpy's limit; also bounds a hostile ndim before we read the shape

# MATLAB mxClassID numbers, keyed by (dtype kind, itemsize) for numeric and logical arrays.
_CLASS_OF_NUMERIC = {
    ("b", 1): 3,
    ("f", 8): 6,
    ("f", 4): 7,
    ("i", 1): 8,
    ("u", 1): 9,
    ("i", 2): 10,
    ("u", 2): 11,
    ("i", 4): 12,
    ("u", 4): 13,
    ("i", 8): 14,
    ("u", 8): 15,
}
_CLASS_CHAR = 4
_CLASS_VOID = 5
_DATETIME_UNITS = ("Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as")
_DATETIME_BASE = 65_536
DTYPE_OF_CLASS: dict[int, np.dtype] = {
    class_id: np.dtype(f"<{kind}{size}") if kind != "b" else np.dtype(bool)
    for (kind, size), class_id in _CLASS_OF_NUMERIC.items()
}
DTYPE_OF_CLASS.update(
    {_DATETIME_BASE + i: np.dtype(f"<M8[{unit}]") for i, unit in enumerate(_DATETIME_UNITS)}
)

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I32_I64 = struct.Struct("<iq")
_F64 = struct.Struct("<d")
_C128 = struct.Struct("<dd")


class MatCell(np.ndarray):
    """An object ndarray that is a MATLAB cell array: written as ``C`` so MATLAB reads it back as a cell."""


class MatStruct(np.recarray):
    """A record array with object fields that is a MATLAB struct array: written as ``S``."""


@dataclass(frozen=True)
class ArrayView:
    """Where a top-level numeric array sits inside an uncompressed blob, so it can be served as ``.npy`` as is.

    ``npy_header + blob[data_offset:]`` is a complete ``.npy`` file (column-major, little-endian).
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    data_offset: int
    npy_header: bytes


@dataclass(frozen=True)
class _ArrayData:
    """An array whose column-major bytes are produced on demand, a bounded slice at a time."""

    array: np.ndarray
    nbytes: int


_Segment = bytes | _ArrayData


@dataclass(frozen=True)
class Packed:
    """A serialized value that has not been materialised: huge arrays are streamed instead of copied.

    ``chunks()`` may be called any number of times; the array(s) it streams are referenced, not copied, so
    don't modify them until you are done with the chunks.
    """

    size: int
    compressed: bool
    array: ArrayView | None
    _segments: tuple[_Segment, ...] = field(repr=False)

    def chunks(self) -> Iterator[memoryview | bytes]:
        """Yield the serialized bytes in pieces of at most ``CHUNK_SIZE``; small pieces are coalesced."""
        limit = CHUNK_SIZE
        buffer = bytearray()
        for piece in _pieces(self._segments, limit):
            if len(piece) >= _INLINE_ARRAY_BYTES:
                if buffer:
                    yield bytes(buffer)
                    buffer = bytearray()
                yield piece
                continue
            if len(buffer) + len(piece) > limit:
                yield bytes(buffer)
                buffer = bytearray()
            buffer += piece
        if buffer:
            yield bytes(buffer)


def pack(obj: object, compress: bool = True) -> bytes:
    """Serialize ``obj`` into DataJoint's blob bytes (see the module docstring for the compression rule)."""
    packed = serialize(obj, compress)
    return _materialize(packed._segments, packed.size)


def serialize(obj: object, compress: bool = True) -> Packed:
    """Serialize ``obj`` without materialising large arrays, for streaming huge values to a store."""
    encoder = _Encoder()
    body_size = encoder.value(obj, 0)
    protocol = DJ0 if encoder.dj0 else MYM
    segments = (protocol, *encoder.out)
    size = len(protocol) + body_size

    if compress and COMPRESS_MIN < size <= COMPRESS_MAX:
        raw = _materialize(segments, size)
        if _worth_compressing(raw):
            compressed = ZLIB_PREFIX + _U64.pack(size) + zlib.compress(raw, COMPRESS_LEVEL)
            if len(compressed) < size:
                return Packed(size=len(compressed), compressed=True, array=None, _segments=(compressed,))
        segments = (raw,)
    return Packed(size=size, compressed=False, array=_array_view(obj, protocol), _segments=segments)


def unpack(data: bytes | bytearray | memoryview, squeeze: bool = False) -> object:
    """Deserialize DataJoint blob bytes; raises :class:`BlobError` for anything malformed or hostile.

    Numeric arrays are views of ``data`` (see "Aliasing" in the module docstring).  With ``squeeze``, singleton
    dimensions are dropped and 0-d arrays become Python scalars, as DataJoint's ``squeeze`` does.
    """
    try:
        view = memoryview(data).cast("B")
    except (TypeError, ValueError) as error:
        raise BlobError(f"blob must be a contiguous bytes-like object, not {type(data).__name__}") from error
    view = decompress(view)
    protocol = bytes(view[:4])
    if protocol not in (MYM, DJ0):
        raise BlobError(f"not a DataJoint blob: header {protocol!r} is neither {MYM!r} nor {DJ0!r}")
    reader = _Reader(view, 4, squeeze)
    try:
        value = reader.value(0)
    except RecursionError as error:  # only reachable when the caller is already deep in its own stack
        raise BlobError("blob nesting too deep for the current stack") from error
    if reader.pos != len(view):
        raise BlobError(f"blob has {len(view) - reader.pos} trailing bytes after its value")
    return value


def npy_header(dtype: np.dtype, shape: tuple[int, ...], fortran_order: bool = True) -> bytes:
    """A complete ``.npy`` header (version 1.0, or 2.0 when it does not fit) for data laid out as described."""
    header = {
        "descr": npy_format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": fortran_order,
        "shape": tuple(int(n) for n in shape),
    }
    for write in (npy_format.write_array_header_1_0, npy_format.write_array_header_2_0):
        out = io.BytesIO()
        try:
            write(out, header)
        except ValueError:  # header too long for version 1.0
            continue
        return out.getvalue()
    raise BlobError(f"cannot write a .npy header for shape {shape}")


# ---------------------------------------------------------------------------------------------------- writing


class _Encoder:
    """Turns a value into a flat list of segments, tracking whether it needs the ``dj0`` protocol."""

    def __init__(self) -> None:
        self.out: list[_Segment] = []
        self.dj0 = False

    def put(self, data: bytes) -> int:
        self.out.append(data)
        return len(data)

    def sized(self, obj: object, depth: int) -> int:
        """Write ``u64 length`` + value: the length is patched in once the value's size is known."""
        slot = len(self.out)
        self.out.append(b"")
        size = self.value(obj, depth)
        self.out[slot] = _U64.pack(size)
        return 8 + size

    def value(self, obj: object, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise BlobError(f"value nested deeper than {MAX_DEPTH} levels (or cyclic)")
        # MATLAB-compatible (mYm) values
        if isinstance(obj, MatCell):
            return self.cell(obj, depth)
        if isinstance(obj, MatStruct):
            return self.struct(obj, depth)
        if isinstance(obj, np.ndarray) and obj.dtype.names is None:
            return self.array(obj, depth)
        # everything else needs the Python-native protocol
        self.dj0 = True
        if isinstance(obj, np.ndarray):
            return self.record_array(obj, depth)
        if isinstance(obj, (np.number, np.bool_, np.datetime64)):
            return self.array(np.asarray(obj), depth)
        if isinstance(obj, bool):
            return self.put(b"\x0b" + (b"\x01" if obj else b"\x00"))
        if isinstance(obj, int):
            return self.put(_pack_int(obj))
        if isinstance(obj, float):
            return self.put(b"\x0d" + _F64.pack(obj))
        if isinstance(obj, complex):
            return self.put(b"\x0c" + _C128.pack(obj.real, obj.imag))
        if isinstance(obj, (datetime.date, datetime.time)):
            return self.put(_pack_datetime(obj))
        if isinstance(obj, decimal.Decimal):
            text = str(obj).encode()
            return self.put(b"d" + _U64.pack(len(text)) + text)
        if isinstance(obj, uuid.UUID):
            return self.put(b"u" + obj.bytes)
        if isinstance(obj, collections.abc.Mapping):
            return self.mapping(obj, depth)
        if isinstance(obj, str):
            text = obj.encode()
            return self.put(b"\x05" + _U64.pack(len(text))) + self.put(text)
        if isinstance(obj, (bytes, bytearray, memoryview)):
            data = bytes(obj)
            return self.put(b"\x06" + _U64.pack(len(data))) + self.put(data)
        if isinstance(obj, collections.abc.MutableSequence):
            return self.items(b"\x02", obj, depth)
        if isinstance(obj, collections.abc.Sequence):
            return self.items(b"\x01", obj, depth)
        if isinstance(obj, collections.abc.Set):
            return self.items(b"\x03", obj, depth)
        if obj is None:
            return self.put(b"\xff")
        raise BlobError(f"cannot serialize a value of type {type(obj).__name__} into a DataJoint blob")

    def items(self, code: bytes, items: collections.abc.Collection, depth: int) -> int:
        size = self.put(code + _U64.pack(len(items)))
        for item in items:
            size += self.sized(item, depth + 1)
        return size

    def mapping(self, mapping: collections.abc.Mapping, depth: int) -> int:
        size = self.put(b"\x04" + _U64.pack(len(mapping)))
        for key, item in mapping.items():
            size += self.sized(key, depth + 1) + self.sized(item, depth + 1)
        return size

    def array(self, array: np.ndarray, depth: int) -> int:
        array = np.asarray(array)  # drop subclasses (np.matrix would keep 2 dims when sliced)
        dtype = array.dtype
        header = b"A" + _U64.pack(array.ndim) + b"".join(_U64.pack(n) for n in array.shape)
        if dtype.kind in "OU":
            self.dj0 = True
            size = self.put(header + _U32.pack(_CLASS_VOID) + _U32.pack(0))
            for element in array.ravel(order="F"):
                size += self.sized(element, depth + 1)
            return size
        if dtype.kind == "S" and dtype.itemsize == 1:
            chars = array.view(np.uint8).astype("<u2").tobytes(order="F")  # MATLAB chars are 16 bits
            return self.put(header + _U32.pack(_CLASS_CHAR) + _U32.pack(0)) + self.put(chars)
        is_complex = dtype.kind == "c"
        parts = [array.real, array.imag] if is_complex else [array]
        class_id = _class_id(parts[0].dtype, dtype)
        if array.ndim == 0 or class_id >= _DATETIME_BASE:
            self.dj0 = True  # neither exists in MATLAB's mYm
        size = self.put(header + _U32.pack(class_id) + _U32.pack(int(is_complex)))
        for part in parts:
            size += self.array_data(part)
        return size

    def array_data(self, array: np.ndarray) -> int:
        little = _little_endian(array.dtype)
        nbytes = array.size * little.itemsize
        if nbytes <= _INLINE_ARRAY_BYTES:
            return self.put(np.asarray(array, dtype=little).tobytes(order="F"))
        self.out.append(_ArrayData(array, nbytes))
        return nbytes

    def record_array(self, array: np.ndarray, depth: int) -> int:
        array = np.asarray(array)
        names = _field_names(array.dtype, "record array")
        size = self.put(b"F" + _U32.pack(len(names)) + _join_names(names))
        for name in names:
            column = array[name]
            if column.shape != array.shape:
                raise BlobError(f"record field {name!r} is a subarray: DataJoint's format cannot hold it")
            if depth + 1 > MAX_DEPTH:
                raise BlobError(f"value nested deeper than {MAX_DEPTH} levels")
            if column.dtype.names is not None:
                size += self.record_array(column, depth + 1)
            else:
                size += self.array(column, depth + 1)
        return size

    def cell(self, cell: MatCell, depth: int) -> int:
        array = np.asarray(cell)
        size = self.put(b"C" + _U64.pack(array.ndim) + b"".join(_U64.pack(n) for n in array.shape))
        for element in array.ravel(order="F"):
            size += self.sized(element, depth + 1)
        return size

    def struct(self, struct_array: MatStruct, depth: int) -> int:
        array = np.asarray(struct_array)
        names = _field_names(array.dtype, "struct")
        size = self.put(
            b"S"
            + _U64.pack(array.ndim)
            + b"".join(_U64.pack(n) for n in array.shape)
            + _U32.pack(len(names))
            + _join_names(names)
        )
        flat = array.ravel(order="F")
        columns = [flat[name] for name in names]
        for index in range(flat.size):
            for column in columns:
                size += self.sized(column[index], depth + 1)
        return size


def _class_id(real_dtype: np.dtype, dtype: np.dtype) -> int:
    if real_dtype.kind == "M":
        unit, count = np.datetime_data(real_dtype)
        if unit in _DATETIME_UNITS and count == 1:
            return _DATETIME_BASE + _DATETIME_UNITS.index(unit)
    class_id = _CLASS_OF_NUMERIC.get((real_dtype.kind, real_dtype.itemsize))
    if class_id is None:
        raise BlobError(f"arrays of dtype {dtype} cannot be stored in a DataJoint blob (no MATLAB class id)")
    return class_id


def _field_names(dtype: np.dtype, what: str) -> tuple[str, ...]:
    names = dtype.names or ()
    if not names:
        raise BlobError(f"a {what} without fields cannot be stored (DataJoint cannot read it back)")
    if any("\0" in name or not name for name in names):
        raise BlobError(f"{what} field names must be non-empty and free of NUL characters")
    return names


def _join_names(names: tuple[str, ...]) -> bytes:
    return "\0".join(names).encode() + b"\0"


def _pack_int(value: int) -> bytes:
    n_bytes = value.bit_length() // 8 + 1
    if n_bytes > 0xFFFF:
        raise BlobError(f"integer needs {n_bytes} bytes; DataJoint's format allows at most 65535")
    return b"\x0a" + _U16.pack(n_bytes) + value.to_bytes(n_bytes, "little", signed=True)


def _pack_datetime(value: datetime.date | datetime.time) -> bytes:
    if isinstance(value, datetime.datetime):
        date, time = value.date(), value.timetz()
    elif isinstance(value, datetime.date):
        date, time = value, None
    else:
        date, time = None, value
    if time is not None and time.tzinfo is not None:
        raise BlobError("timezone-aware times cannot be stored: DataJoint's format would drop the timezone")
    date_code = -1 if date is None else (date.year * 100 + date.month) * 100 + date.day
    time_code = (
        -1
        if time is None
        else ((time.hour * 100 + time.minute) * 100 + time.second) * 1_000_000 + time.microsecond
    )
    return b"t" + _I32_I64.pack(date_code, time_code)


def _little_endian(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("<")


def _pieces(segments: tuple[_Segment, ...], limit: int) -> Iterator[memoryview | bytes]:
    """The raw pieces of a segment list, each at most ``limit`` bytes, in order."""
    for segment in segments:
        if isinstance(segment, _ArrayData):
            yield from _column_major_pieces(segment.array, limit)
        elif len(segment) <= limit:
            if segment:
                yield segment
        else:
            whole = memoryview(segment)
            for start in range(0, len(whole), limit):
                yield whole[start : start + limit]


def _materialize(segments: tuple[_Segment, ...], size: int) -> bytes:
    """The whole blob as one ``bytes``, holding at most one bounded piece besides the result.

    ``b"".join`` would keep every piece alive until the end -- a second full copy of a C-ordered array.
    """
    if len(segments) == 1 and isinstance(segments[0], bytes):
        return segments[0]
    if size <= CHUNK_SIZE:
        return b"".join(_pieces(segments, CHUNK_SIZE))
    out = io.BytesIO()
    out.seek(size - 1)
    out.write(b"\0")  # size the buffer once instead of growing it piece by piece
    out.seek(0)
    for piece in _pieces(segments, CHUNK_SIZE):
        out.write(piece)
    return out.getvalue()  # CPython hands over its buffer without copying


def _column_major_pieces(array: np.ndarray, limit: int) -> Iterator[memoryview]:
    """Yield ``array``'s little-endian column-major bytes in pieces of at most ``limit`` bytes.

    Column-major order is C order of the transpose (all axes reversed), so the output is cut into slabs of the
    last axis (the slowest in column-major order).  An F-contiguous little-endian array is sliced without
    copying; otherwise each slab is a fresh buffer filled by :func:`_transpose_into` (slabs of a 3-D array up to
    ``SLAB_SIZE``, cut into pieces of ``limit``; others of ``limit``), and the next slab is filled on a helper
    thread while the caller consumes (hashes, writes) the current one's pieces: the slab being consumed, the next
    one, and at most the previous one while the caller still holds a piece of it.
    """
    little = _little_endian(array.dtype)
    if array.size == 0:
        return
    if array.dtype == little and array.flags.f_contiguous:
        flat = memoryview(array.reshape(-1, order="F").view(np.uint8))
        for start in range(0, len(flat), limit):
            yield flat[start : start + limit]
        return
    slab = max(limit, SLAB_SIZE) if array.ndim == 3 else limit
    for whole in prefetched(_slab_jobs(array, little, slab)):
        for start in range(0, len(whole), limit):
            yield whole[start : start + limit]
        del whole  # the caller's pieces alone keep this slab alive while the next one is made


def _slab_jobs(array: np.ndarray, little: np.dtype, limit: int) -> Iterator[Callable[[], memoryview]]:
    """Jobs that each return the column-major bytes of one slab of ``array`` (at most ``limit`` bytes)."""
    itemsize = little.itemsize
    if array.ndim == 0 or array.size * itemsize <= limit:
        yield functools.partial(_fortran_bytes, array, little)
        return
    step = limit // (array[..., 0].size * itemsize)
    if step == 0:  # one slab alone is too large: cut it along its own last axis
        for index in range(array.shape[-1]):
            yield from _slab_jobs(array[..., index], little, limit)
        return
    for start in range(0, array.shape[-1], step):
        yield functools.partial(_fortran_bytes, array[..., start : start + step], little)


def prefetched(jobs: Iterator[Callable[[], memoryview]]) -> Iterator[memoryview]:
    """The results of ``jobs`` in order, each computed on a helper thread while the previous one is consumed.

    numpy and hashlib/os.write release the GIL for large buffers, so transposing the next slab overlaps the
    caller's work on this one.  A single job runs inline (no thread for small arrays)."""
    first = next(jobs, None)
    if first is None:
        return
    second = next(jobs, None)
    if second is None:
        yield first()
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="djfs-transpose") as pool:
        pending = pool.submit(first)
        for job in itertools.chain((second,), jobs):
            ready, pending = pending, pool.submit(job)
            yield ready.result()
        yield pending.result()


#: the column-major copy of a 3-D array is made in slabs of up to this (then yielded in ``CHUNK_SIZE`` pieces):
#: the two-copy transpose needs slabs some tens of columns wide to pay (measured: 16 MiB 1.1 s/GiB, 64 MiB 0.75)
SLAB_SIZE = 64 << 20
#: bytes of the (rows, T, X) buffer of the two-copy transpose (256 KiB to 4 MiB measured alike: 0.72-0.77 s/GiB)
_GATHER_BYTES = 512 << 10

#: tile of the cache-blocked copy, in elements along the first, second-to-last and last axis of the transposed
#: source (for a (T, Y, X) movie: X, Y, T): the cache lines a tile reads and writes stay in L1/L2 while reused
_TILE = (8, 128, 8)


def _fortran_bytes(array: np.ndarray, little: np.dtype) -> memoryview:
    """One bounded copy of ``array`` in column-major little-endian order, as a flat byte view."""
    out = np.empty(array.shape[::-1], dtype=little)  # C order of the transpose = column-major of array
    _transpose_into(out, array.T)
    return memoryview(out.reshape(-1).view(np.uint8))


def _transpose_into(out: np.ndarray, source: np.ndarray) -> None:
    """``out[...] = source`` for a C-contiguous ``out``, copied in cache-sized tiles.

    ``source`` is the transpose of a (typically C-ordered) array, so its last axis has the largest stride: a
    plain copy walks it element by element across the whole array and misses the cache (and TLB) on nearly
    every element -- 4x the CPU of this for a (T, Y, X) movie (measured: 4.9 s vs 1.2 s per GiB).  Tiling
    the first, the second-to-last and the last axis keeps each tile's cache lines resident while they are
    reused.
    """
    if source.ndim < 2 or source.size <= _TILE[0] * _TILE[1] * _TILE[2] or source.flags.c_contiguous:
        np.copyto(out, source)
        return
    if source.ndim == 3:
        _transpose_3d_into(out, source)
        return
    last, first = source.shape[-1], source.shape[0]
    bx, bt = _TILE[0], _TILE[2]
    if source.ndim == 2:
        bx, bt = 64, 64  # square tiles: rows of 64 elements on both sides
        for x in range(0, first, bx):
            for t in range(0, last, bt):
                out[x : x + bx, t : t + bt] = source[x : x + bx, t : t + bt]
        return
    middle, by = source.shape[-2], _TILE[1]
    for x in range(0, first, bx):
        for y in range(0, middle, by):
            for t in range(0, last, bt):
                out[x : x + bx, ..., y : y + by, t : t + bt] = source[x : x + bx, ..., y : y + by, t : t + bt]


def _transpose_3d_into(out: np.ndarray, source: np.ndarray) -> None:
    """``out[...] = source`` for the transpose of a 3-D (T, Y, X) array, in two copies with long inner loops.

    ``out`` is (X, Y, T).  For a group of rows y, the first copy gathers ``source[:, y, :]`` into a small
    (rows, T, X) buffer: runs of X contiguous elements, frame after frame; the second writes the buffer's
    transpose into ``out[:, y, :]``: contiguous runs of T elements.  numpy's inner loops then run over tens to
    thousands of elements instead of a tile's 8, and there are a few hundred numpy calls a slab, not tens of
    thousands: 0.75 s of CPU per GiB instead of 1.2 s for a (1024, 512, 512) float32 movie in 64 MiB slabs.
    (Splitting a slab's rows between two threads was measured too: more CPU, no shorter inserts on two cores.)
    """
    columns, rows, frames = source.shape
    group = max(1, _GATHER_BYTES // (frames * columns * out.itemsize))
    buffer = np.empty((min(group, rows), frames, columns), out.dtype)
    for y in range(0, rows, group):
        part = buffer[: min(group, rows - y)]
        np.copyto(part, source[:, y : y + group, :].transpose(1, 2, 0))
        np.copyto(out[:, y : y + group, :], part.transpose(2, 0, 1))


def _worth_compressing(raw: bytes) -> bool:
    """Whether a sample from the middle of ``raw`` shrinks enough to pay for compressing the whole blob."""
    start = max(0, (len(raw) - COMPRESS_SAMPLE) // 2)
    sample = raw[start : start + COMPRESS_SAMPLE]
    return len(zlib.compress(sample, COMPRESS_LEVEL)) < COMPRESS_SAMPLE_RATIO * len(sample)


def _array_view(obj: object, protocol: bytes) -> ArrayView | None:
    """The ``.npy`` description of a top-level real numeric/bool array with ndim >= 1, else None."""
    if not isinstance(obj, np.ndarray) or isinstance(obj, (MatCell, MatStruct)) or obj.ndim == 0:
        return None
    dtype = obj.dtype
    if dtype.names is not None or (dtype.kind, dtype.itemsize) not in _CLASS_OF_NUMERIC:
        return None
    little = _little_endian(dtype)
    shape = tuple(int(n) for n in obj.shape)
    data_offset = len(protocol) + 1 + 8 + 8 * len(shape) + 8
    return ArrayView(little, shape, data_offset, npy_header(little, shape, fortran_order=True))


# ---------------------------------------------------------------------------------------------------- reading


def decompress(data: bytes | bytearray | memoryview) -> memoryview:
    """The uncompressed serialized bytes of a blob: ``data`` itself unless it is ``ZL123``-framed."""
    view = memoryview(data).cast("B")
    if bytes(view[: len(ZLIB_PREFIX)]) != ZLIB_PREFIX:
        return view
    if len(view) < len(ZLIB_PREFIX) + 8:
        raise BlobError("truncated blob: compressed header is shorter than 14 bytes")
    (declared,) = _U64.unpack_from(view, len(ZLIB_PREFIX))
    return memoryview(_inflate(view[len(ZLIB_PREFIX) + 8 :], declared))


def _inflate(stream: memoryview, declared: int) -> bytearray:
    """Decompress a zlib stream that must yield exactly ``declared`` bytes, never producing more."""
    if declared > len(stream) * ZLIB_MAX_RATIO + 1024:
        raise BlobError(
            f"compressed blob declares {declared} bytes, more than {len(stream)} zlib bytes can hold"
        )
    decompressor = zlib.decompressobj()
    out = bytearray()
    step = 1 << 20
    position = 0
    pending: bytes | memoryview = b""
    try:
        while not decompressor.eof:
            if not pending:
                if position >= len(stream):
                    raise BlobError("truncated blob: the compressed stream ends early")
                pending = stream[position : position + step]
                position += step
            out += decompressor.decompress(pending, declared - len(out) + 1)  # +1 detects overflow
            if len(out) > declared:
                raise BlobError(f"compressed blob decompresses to more than the declared {declared} bytes")
            pending = decompressor.unconsumed_tail
    except zlib.error as error:
        raise BlobError(f"corrupt compressed blob: {error}") from error
    if decompressor.unused_data or position < len(stream):
        raise BlobError("compressed blob has trailing bytes after the zlib stream")
    if len(out) != declared:
        raise BlobError(f"compressed blob declares {declared} bytes but holds {len(out)}")
    return out


class _Reader:
    """A cursor over blob bytes; every declared length is checked against what remains before use."""

    def __init__(self, view: memoryview, pos: int, squeeze: bool) -> None:
        self.view = view
        self.pos = pos
        self.squeeze = squeeze

    @property
    def remaining(self) -> int:
        return len(self.view) - self.pos

    def need(self, n_bytes: int, what: str) -> None:
        if n_bytes > self.remaining:
            raise BlobError(
                f"truncated or forged blob: {what} needs {n_bytes} bytes at offset {self.pos},"
                f" only {self.remaining} remain"
            )

    def take(self, n_bytes: int, what: str) -> memoryview:
        self.need(n_bytes, what)
        self.pos += n_bytes
        return self.view[self.pos - n_bytes : self.pos]

    def unpack(self, layout: struct.Struct, what: str) -> tuple:
        self.need(layout.size, what)
        values = layout.unpack_from(self.view, self.pos)
        self.pos += layout.size
        return values

    def u64(self, what: str) -> int:
        return self.unpack(_U64, what)[0]

    def u32(self, what: str) -> int:
        return self.unpack(_U32, what)[0]

    def count(self, what: str, min_item_bytes: int) -> int:
        """A declared item count, refused when the remaining bytes cannot possibly hold that many items."""
        n = self.u64(what)
        self.need(n * min_item_bytes, f"{what} of {n}")
        return n

    def shape(self, what: str) -> tuple[tuple[int, ...], int]:
        ndim = self.u64(f"{what} ndim")
        if ndim > _MAX_NDIM:
            raise BlobError(f"{what} claims {ndim} dimensions (numpy allows at most {_MAX_NDIM})")
        shape = self.unpack(struct.Struct(f"<{ndim}Q"), f"{what} shape")
        return shape, math.prod(shape)

    def text(self, n_bytes: int, what: str) -> str:
        try:
            return bytes(self.take(n_bytes, what)).decode("utf-8")
        except UnicodeDecodeError as error:
            raise BlobError(f"{what} is not valid UTF-8: {error}") from error

    def names(self, n_fields: int, what: str) -> list[str]:
        self.need(n_fields, f"{what} names")
        names = []
        for _ in range(n_fields):
            window = bytes(self.view[self.pos : self.pos + 65536])
            end = window.find(b"\0")
            if end < 0:
                raise BlobError(f"{what} field name at offset {self.pos} is unterminated")
            names.append(self.text(end, f"{what} field name"))
            self.pos += 1
        return names

    def sized(self, depth: int) -> object:
        """A ``u64 length`` + value pair; the value must use exactly the declared length."""
        n_bytes = self.u64("element length")
        self.need(n_bytes, "element")
        start = self.pos
        value = self.value(depth)
        if self.pos - start != n_bytes:
            raise BlobError(
                f"element at offset {start} declares {n_bytes} bytes but uses {self.pos - start}"
            )
        return value

    def value(self, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise BlobError(f"blob nests deeper than {MAX_DEPTH} levels")
        offset = self.pos
        code = self.take(1, "type code")[0]
        if code == 0x41:  # "A"
            return self.array(depth)
        if code == 0xFF:
            return None
        if code in (0x01, 0x02, 0x03):
            n = self.count("item count", 9)
            items = []
            for _ in range(n):  # a loop, not a comprehension: one Python frame less per nesting level
                items.append(self.sized(depth + 1))
            if code == 0x01:
                return tuple(items)
            if code == 0x02:
                return items
            try:
                return set(items)
            except TypeError as error:
                raise BlobError(f"set at offset {offset} holds an unhashable item: {error}") from error
        if code == 0x04:
            n = self.count("dict size", 18)
            result = {}
            for _ in range(n):
                key = self.sized(depth + 1)
                try:
                    result[key] = self.sized(depth + 1)
                except TypeError as error:
                    raise BlobError(f"dict at offset {offset} has an unhashable key: {error}") from error
            return result
        if code == 0x05:
            return self.text(self.u64("string length"), "string")
        if code == 0x06:
            return bytes(self.take(self.u64("bytes length"), "bytes"))
        if code == 0x0A:
            (n_bytes,) = self.unpack(_U16, "int length")
            return int.from_bytes(self.take(n_bytes, "int"), "little", signed=True)
        if code == 0x0B:
            return self.take(1, "bool")[0] != 0
        if code == 0x0C:
            real, imag = self.unpack(_C128, "complex")
            return complex(real, imag)
        if code == 0x0D:
            return self.unpack(_F64, "float")[0]
        if code == 0x64:  # "d"
            text = self.text(self.u64("decimal length"), "decimal")
            try:
                return decimal.Decimal(text)
            except decimal.InvalidOperation as error:
                raise BlobError(f"invalid decimal {text[:80]!r}") from error
        if code == 0x74:  # "t"
            return _read_datetime(*self.unpack(_I32_I64, "datetime"))
        if code == 0x75:  # "u"
            return uuid.UUID(bytes=bytes(self.take(16, "uuid")))
        if code == 0x53:  # "S"
            return self.struct(depth)
        if code == 0x43:  # "C"
            return self.cell(depth)
        if code == 0x46:  # "F"
            return self.record_array(depth)
        if code == 0x50:  # "P"
            raise BlobError("sparse arrays are not supported (DataJoint does not support them either)")
        raise BlobError(f"unknown data structure code {bytes([code])!r} at offset {offset}")

    def array(self, depth: int) -> object:
        shape, n_elem = self.shape("array")
        class_id, is_complex = self.unpack(struct.Struct("<II"), "array class id")
        if class_id == _CLASS_VOID:
            self.need(n_elem * 9, f"object array of {n_elem} elements")
            flat = np.empty(n_elem, dtype=object)
            for index in range(n_elem):
                flat[index] = self.sized(depth + 1)
            return self.finish(_reshape(flat, shape), to_scalar=True)
        if class_id == _CLASS_CHAR:
            codes = self.frombuffer(np.dtype("<u2"), n_elem, "char array")
            if len(shape) == 1 or (len(shape) == 2 and shape[0] == 1):
                text = codes.tobytes().decode("utf-16-le", errors="surrogatepass")
                return self.finish(np.array([text]), to_scalar=True)
            chars = codes.astype("<u4").view("<U1")
            return self.finish(_reshape(chars, shape), to_scalar=True)
        dtype = DTYPE_OF_CLASS.get(class_id)
        if dtype is None:
            raise BlobError(f"unsupported MATLAB class id {class_id} in array")
        if is_complex:
            if dtype.kind not in "iuf":
                raise BlobError(f"class id {class_id} ({dtype}) cannot be complex")
            self.need(2 * n_elem * dtype.itemsize, f"complex array of {n_elem} elements")
            real = self.frombuffer(dtype, n_elem, "real part")
            imag = self.frombuffer(dtype, n_elem, "imaginary part")
            flat = np.empty(n_elem, dtype=np.complex64 if dtype == np.float32 else np.complex128)
            flat.real, flat.imag = real, imag
        else:
            flat = self.frombuffer(dtype, n_elem, "array data")
        return self.finish(_reshape(flat, shape), to_scalar=True)

    def frombuffer(self, dtype: np.dtype, n_elem: int, what: str) -> np.ndarray:
        """A view (no copy) of the next ``n_elem`` items: writeable exactly when the input buffer is."""
        n_bytes = n_elem * dtype.itemsize
        self.need(n_bytes, f"{what} ({n_elem} x {dtype})")
        array = np.frombuffer(self.view, dtype=dtype, count=n_elem, offset=self.pos)
        self.pos += n_bytes
        return array

    def finish(self, array: np.ndarray, to_scalar: bool) -> object:
        if not self.squeeze:
            return array
        squeezed = array.squeeze()
        return squeezed.item() if to_scalar and squeezed.ndim == 0 else squeezed

    def struct(self, depth: int) -> object:
        shape, n_elem = self.shape("struct")
        n_fields = self.u32("struct field count")
        if not n_fields:
            return np.array(None)  # what DataJoint returns for a struct without fields
        names = self.names(n_fields, "struct")
        self.need(n_elem * n_fields * 9, f"struct of {n_elem} x {n_fields} values")
        try:
            flat = np.empty(n_elem, dtype=[(name, object) for name in names])
        except (ValueError, TypeError) as error:
            raise BlobError(f"invalid struct field names {names[:5]!r}: {error}") from error
        for index in range(n_elem):
            for name in names:
                flat[name][index] = self.sized(depth + 1)
        return self.finish(_reshape(flat, shape), to_scalar=False).view(MatStruct)

    def cell(self, depth: int) -> object:
        shape, n_elem = self.shape("cell")
        self.need(n_elem * 9, f"cell of {n_elem} elements")
        flat = np.empty(n_elem, dtype=object)
        for index in range(n_elem):
            flat[index] = self.sized(depth + 1)
        return self.finish(_reshape(flat, shape), to_scalar=False).view(MatCell)

    def record_array(self, depth: int) -> object:
        n_fields = self.u32("record field count")
        if not n_fields:
            return np.array(None)  # what DataJoint returns for a record array without fields
        names = self.names(n_fields, "record array")
        columns = []
        for name in names:
            column = self.value(depth + 1)
            if not isinstance(column, np.ndarray):
                if not np.isscalar(column):  # a squeezed 0-d field is a scalar; anything else is forged
                    raise BlobError(f"record field {name!r} is a {type(column).__name__}, not an array")
                column = np.asarray(column)
            columns.append(column)
        shape = columns[0].shape
        if any(column.shape != shape for column in columns):
            raise BlobError(f"record array fields have different shapes: {[c.shape for c in columns][:5]}")
        try:
            records = np.empty(shape, dtype=[(name, column.dtype) for name, column in zip(names, columns)])
        except (ValueError, TypeError) as error:
            raise BlobError(f"invalid record array fields {names[:5]!r}: {error}") from error
        for name, column in zip(names, columns):
            records[name] = column
        return records.view(np.recarray)


def _reshape(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Column-major reshape; a view for contiguous input."""
    try:
        return flat.reshape(shape, order="F")
    except ValueError as error:
        raise BlobError(f"cannot shape {flat.size} elements as {shape}: {error}") from error


def _read_datetime(date_code: int, time_code: int) -> datetime.date | datetime.time | datetime.datetime | None:
    try:
        date = (
            datetime.date(date_code // 10000, date_code // 100 % 100, date_code % 100) if date_code >= 0 else None
        )
        time = (
            datetime.time(
                time_code // 10_000_000_000,
                time_code // 100_000_000 % 100,
                time_code // 1_000_000 % 100,
                time_code % 1_000_000,
            )
            if time_code >= 0
            else None
        )
    except ValueError as error:
        raise BlobError(f"invalid date/time code {date_code}/{time_code}: {error}") from error
    if date is not None and time is not None:
        return datetime.datetime.combine(date, time)
    return date if date is not None else time
