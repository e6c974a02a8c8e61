"""``npy@`` values: the stored object is a real ``.npy`` file of the array, in the array's own memory order.

An ``npy@`` / ``npy@<store>`` attribute is a variant of ``external`` (same ``~external`` entries, upload locks,
cache, verification, gc and named stores) with another serialization: numpy's ``.npy`` format instead of
DataJoint's blob.  The stored object is::

    .npy header (version 1.0, or 2.0 when needed; padded to 64 bytes)  ||  the array's buffer, as it lies in memory

* C-contiguous arrays are written as they are (``fortran_order: False``); F-contiguous ones too
  (``fortran_order: True``); other views (strided, reversed) in C order, copied in bounded pieces.  Nothing is
  transposed, so the frames of a (T, Y, X) movie are contiguous in the object and a reader of 10 frames reads
  10 frames' bytes.  dtype (byte order included), shape and order come back as they went in.
* Numeric and bool arrays only (integers, floats, complex, bool); anything else is refused with a message that
  names ``external`` (DataJoint's blob holds Python values, strings, records, MATLAB structs).
* Hash and origin as for ``external``: SHA-256 of ``npy bytes || 0x00 || origin``, base64url, with the origin
  ``<full table name> \\n <key as JSON> [\\n <store>]``.  The bytes tell the two serializations apart: a
  ``.npy`` starts with ``\\x93NUMPY``, a blob with ``mYm\\0``, ``dj0\\0`` or ``ZL123\\0``.
* The mount serves the object byte for byte as ``<attr>.npy`` (its ``~external`` view is ``npy`` with the
  header and ``data_offset`` = header length) and, for C-ordered 2-D and 3-D arrays, a ``<attr>.tif`` view.
"""

from __future__ import annotations

import functools
import io
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.lib.format as npy_format

from . import blob
from .errors import CorruptObjectError, DataError

MAGIC = b"\x93NUMPY"
MAX_HEADER = 4096  # the ~external view_header column holds at most this; 64 dimensions need ~1.5 KB
_KINDS = "biufc"


@dataclass(frozen=True)
class NpyPacked:
    """An array about to be stored as ``.npy``: its header and its buffer, streamed without copying."""

    header: bytes
    array: np.ndarray      # the array in the order its bytes are written (a view, not a copy)
    fortran_order: bool

    compressed = False

    @property
    def size(self) -> int:
        return len(self.header) + self.array.nbytes

    def chunks(self) -> Iterator[memoryview | bytes]:
        """The header, then the buffer in pieces of at most ``blob.CHUNK_SIZE`` (views when contiguous)."""
        yield self.header
        array, limit = self.array, blob.CHUNK_SIZE
        if array.size == 0:
            return
        if array.flags.c_contiguous or array.flags.f_contiguous:
            flat = memoryview(array.reshape(-1, order="F" if self.fortran_order else "C").view(np.uint8))
            for start in range(0, len(flat), limit):
                yield flat[start:start + limit]
            return
        # a strided view: C order, copied in bounded pieces, the next one on a helper thread while this is used
        yield from blob.prefetched(_c_order_jobs(array, limit))


def _c_order_jobs(array: np.ndarray, limit: int) -> Iterator[Callable[[], memoryview]]:
    """Jobs that each copy the next piece of a non-contiguous array's C-order bytes (at most ``limit`` bytes, one
    item at least)."""
    if array.nbytes <= limit or array.ndim == 0:
        yield functools.partial(_c_order_bytes, array)
        return
    row = array[0].nbytes if array.ndim > 1 else array.itemsize
    if row > limit and array.ndim > 1:
        for index in range(array.shape[0]):
            yield from _c_order_jobs(array[index], limit)
        return
    step = max(1, limit // row)
    for start in range(0, array.shape[0], step):
        yield functools.partial(_c_order_bytes, array[start:start + step])


def _c_order_bytes(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def serialize(value: object, where: str = "npy@") -> NpyPacked:
    """The ``.npy`` serialization of a numeric or bool array; ``DataError`` for anything else."""
    if not isinstance(value, np.ndarray):
        raise DataError(f"{where} holds numeric or bool numpy arrays, not {type(value).__name__}: use an "
                        "`external` (DataJoint blob) attribute for other values")
    array = np.asarray(value)  # drops subclasses (np.matrix, np.memmap): what fetch gives back is an ndarray
    dtype = array.dtype
    if dtype.names is not None or dtype.kind not in _KINDS:
        raise DataError(f"{where} holds numeric or bool arrays, not dtype {dtype}: use an `external` "
                        "(DataJoint blob) attribute for it")
    if dtype.kind == "f" and dtype.itemsize > 8 or dtype.kind == "c" and dtype.itemsize > 16:
        raise DataError(f"{where}: dtype {dtype} is platform-specific; use float64/complex128 or `external`")
    fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)
    header = blob.npy_header(dtype, array.shape, fortran_order=fortran)
    if len(header) > MAX_HEADER:
        raise DataError(f"{where}: the .npy header of shape {array.shape} is too long")
    return NpyPacked(header, array, fortran)


@dataclass(frozen=True)
class Header:
    """What a ``.npy`` header says."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    size: int  # bytes of the header: the data starts here


def read_header(data: bytes | bytearray | memoryview) -> Header:
    """Parse and check the header at the start of ``data`` (``CorruptObjectError`` if it is not a plain
    numeric/bool ``.npy`` header of at most ``MAX_HEADER`` bytes)."""
    view = memoryview(data).cast("B")
    prefix = bytes(view[:MAX_HEADER])
    if not prefix.startswith(MAGIC) or len(prefix) < 10:
        raise CorruptObjectError("not a .npy object: it does not start with the .npy magic")
    stream = io.BytesIO(prefix)
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(stream, max_header_size=MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(stream, max_header_size=MAX_HEADER)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, struct.error, EOFError) as error:
        raise CorruptObjectError(f"malformed .npy header: {error}") from None
    if dtype.names is not None or dtype.kind not in _KINDS or dtype.hasobject:
        raise CorruptObjectError(f".npy object holds dtype {dtype}, not a numeric or bool array")
    return Header(dtype, tuple(int(n) for n in shape), bool(fortran), stream.tell())


def decode(data: bytes | bytearray | memoryview, squeeze: bool = False) -> object:
    """The array of a stored ``.npy`` object: a view of ``data`` (no copy; writeable when ``data`` is)."""
    header = read_header(data)
    view = memoryview(data).cast("B")
    count = math.prod(header.shape)
    if len(view) - header.size != count * header.dtype.itemsize:
        raise CorruptObjectError(f".npy object of shape {header.shape} and dtype {header.dtype} should have "
                                 f"{count * header.dtype.itemsize} data bytes, it has {len(view) - header.size}")
    array = np.frombuffer(view, dtype=header.dtype, count=count, offset=header.size)
    array = array.reshape(header.shape, order="F" if header.fortran_order else "C")
    if not squeeze:
        return array
    squeezed = array.squeeze()
    return squeezed.item() if squeezed.ndim == 0 else squeezed


def is_npy(data: bytes | bytearray | memoryview) -> bool:
    return bytes(memoryview(data)[:len(MAGIC)]) == MAGIC
