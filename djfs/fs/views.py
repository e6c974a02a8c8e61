"""How one stored value becomes one file of the mount.

Every blob or external attribute of a row is one file, named after the attribute and the *view* of its value
(``djfs.objects.external.view_of`` decides it when an external value is stored; for blobs kept inside MySQL the same
rules are applied here to the blob's first bytes):

``<attr>.npy``   a numeric or boolean array with ndim >= 1: a real ``.npy`` (header + column-major data) that
                 ``numpy.load(path, mmap_mode='r')`` opens.  When the stored blob is uncompressed, its data *is*
                 a byte range of the stored object (from ``data_offset``), so reads become range reads of the
                 object and nothing is decoded; a compressed array is inflated once into the disk cache (a *derived*
                 file, kept across mounts) and served from there.
``<attr>.bin``   ``bytes`` values, raw.
``<attr>.blob``  anything else, as the *uncompressed* serialized blob (``djfs.blob.unpack`` and DataJoint read it).
``<attr>.tif``   beside the ``.npy`` of a 2-D or 3-D array stored in C order (``npy@``): an uncompressed TIFF whose
                 generated header (``djfs.fs.tiff``) points into the stored frames, for Fiji/ImageJ and libtiff.
``row.json``     the row's other attributes as a JSON object.

Sizes are exact and known without touching a store: external views record ``view_size``; an in-MySQL blob's
view is computed from ``LENGTH()`` and its first bytes (inflating a few hundred bytes when compressed).
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import functools
import hashlib
import json
import math
import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .. import blob, npy
from ..errors import CorruptObjectError
from ..objects.external import View
from ..relational.heading import Heading
from . import tiff

EXTENSIONS = {"npy": ".npy", "bytes": ".bin", "blob": ".blob", "tif": ".tif"}
ROW_FILE = "row.json"
#: bytes of an in-MySQL blob fetched with each row's metadata: enough for any array header (64 dims)
PREFIX_BYTES = 1024
_HEADER_NEED = 4 + 1 + 8 + 8 * 64 + 8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# MATLAB class ids of real numeric and logical arrays (blob's table, without datetime64 ids)
_NUMERIC_CLASSES = {class_id: dtype for class_id, dtype in blob.DTYPE_OF_CLASS.items() if class_id < 65536}


def file_name(attribute: str, kind: str) -> str:
    return attribute + EXTENSIONS[kind]


@dataclass(frozen=True)
class FileSpec:
    """One file of a row directory: what it shows and where its bytes come from."""

    name: str
    kind: str                        # npy | bytes | blob | json
    size: int
    mtime: float
    ino: int
    source: str                      # external | inline | json
    attribute: str | None = None
    identity: str = ""               # content identity (the hash of an external value); '' = known at open
    entry: dict | None = None        # the ~external row of an external value
    header: bytes = b""              # bytes before the data (the .npy header)
    data_offset: int | None = None   # where the file's data starts in the stored bytes, if a plain range
    content: bytes | None = None     # row.json
    error: str = ""                  # set when the value can't be served (bad hash, no entry): EIO on open
    transient: bool = False          # the error may pass (a store not answering): never kept, asked again


# -- the TIFF view -------------------------------------------------------------------------------------------


def _tiff_layout(spec: FileSpec) -> tiff.TiffLayout | None:
    """The TIFF layout of an external ``.npy`` file whose frames are row-major and contiguous, else None."""
    if spec.kind != "npy" or spec.source != "external" or spec.data_offset is None:
        return None
    return _layout_of(bytes(spec.header), spec.size)


@functools.lru_cache(maxsize=4096)
def _layout_of(npy_header: bytes, size: int) -> tiff.TiffLayout | None:
    """``_tiff_layout`` of a ``.npy`` header and file size: kept, as the values of a column mostly share a
    header, and parsing one (numpy's ``literal_eval``) was a quarter of the time of making a row's files."""
    try:
        header = npy.read_header(npy_header)
    except CorruptObjectError:
        return None
    data = math.prod(header.shape) * header.dtype.itemsize
    if header.fortran_order or header.size != len(npy_header) or data != size - len(npy_header):
        return None  # another layout, or a header that does not describe the file: no TIFF view
    return tiff.layout(header.dtype, header.shape)


def tiff_file(spec: FileSpec) -> FileSpec | None:
    """The ``<attr>.tif`` beside an ``<attr>.npy`` in C order (2-D or 3-D), reading the same stored bytes.

    Its header (the IFDs: ~150 bytes a frame) is made when the file is opened (``file_header``), not kept with
    the row's listing."""
    layout = _tiff_layout(spec)
    if layout is None or spec.attribute is None:
        return None
    return dataclasses.replace(spec, name=file_name(spec.attribute, "tif"), kind="tif", size=layout.size,
                               ino=inode_of(spec.identity, "tif"), header=b"")


def file_header(spec: FileSpec) -> bytes:
    """The bytes a file shows before its range of the stored object."""
    if spec.kind != "tif":
        return spec.header
    assert spec.entry is not None
    npy_file = dataclasses.replace(spec, kind="npy", header=bytes(spec.entry["view_header"] or b""),
                                   size=int(spec.entry["view_size"]))
    layout = _tiff_layout(npy_file)
    if layout is None or layout.size != spec.size:
        raise CorruptObjectError(f"{spec.name}: the stored value no longer has a TIFF view")
    return layout.header()


# -- describing serialized blobs ----------------------------------------------------------------------------


def _array_layout(body: bytes) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """(dtype, shape, data offset) of a top-level real numeric array in an uncompressed blob body, else None."""
    if len(body) < 13 or body[:4] not in (blob.MYM, blob.DJ0) or body[4:5] != b"A":
        return None
    (ndim,) = _U64.unpack_from(body, 5)
    if not 1 <= ndim <= 64 or len(body) < 13 + 8 * ndim + 8:
        return None
    shape = struct.unpack_from(f"<{ndim}Q", body, 13)
    class_id, is_complex = struct.unpack_from("<II", body, 13 + 8 * ndim)
    dtype = _NUMERIC_CLASSES.get(class_id)
    if dtype is None or is_complex:
        return None
    return np.dtype(dtype), tuple(int(n) for n in shape), 13 + 8 * ndim + 8


def describe(body_prefix: bytes, body_length: int, compressed: bool) -> View:
    """The view of a serialized value from the first bytes of its (uncompressed) body and the body's length."""
    layout = _array_layout(body_prefix)
    if layout is not None:
        dtype, shape, offset = layout
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if body_length - offset == nbytes:
            header = blob.npy_header(dtype, shape, fortran_order=True)
            return View("npy", len(header) + nbytes, header, None if compressed else offset)
    if len(body_prefix) >= 13 and body_prefix[:5] == blob.DJ0 + b"\x06":
        (length,) = _U64.unpack_from(body_prefix, 5)
        if body_length == 13 + length:
            return View("bytes", length, b"", None if compressed else 13)
    return View("blob", body_length, b"", None if compressed else 0)


def describe_inline(prefix: bytes, length: int) -> View | None:
    """The view of a blob stored in MySQL from its first bytes and length; None when the prefix is too short."""
    prefix = bytes(prefix)
    if prefix[:6] != blob.ZLIB_PREFIX:
        if len(prefix) < min(length, _HEADER_NEED):
            return None
        return describe(prefix, length, compressed=False)
    if len(prefix) < 14:
        return None if length > len(prefix) else View("blob", length, b"", 0)
    (declared,) = _U64.unpack_from(prefix, 6)
    try:
        body = zlib.decompressobj().decompress(prefix[14:], _HEADER_NEED)
    except zlib.error:
        return View("blob", length, b"", 0)  # not a valid compressed blob: serve the bytes as they are
    if len(body) < min(declared, _HEADER_NEED) and len(prefix) < length:
        return None
    return describe(body, declared, compressed=True)


def render(kind: str, header: bytes, stored: bytes | bytearray | memoryview, size: int, out: BinaryIO) -> None:
    """Write the whole file of a value, decoded from its whole stored bytes (when it is not a plain byte range)."""
    body = blob.decompress(stored)
    if kind == "npy":
        layout = _array_layout(bytes(body[:_HEADER_NEED]))
        if layout is None:
            raise CorruptObjectError("stored value is not the array its view says")
        parts = [header, body[layout[2]:]]
    elif kind == "bytes":
        parts = [body[13:]]
    else:
        parts = [body]
    length = sum(len(part) for part in parts)
    if length != size:
        raise CorruptObjectError(f"stored value renders to {length} bytes, its view says {size}")
    for part in parts:
        out.write(part)


# -- rows -----------------------------------------------------------------------------------------------------


def _json_value(attribute, value: Any) -> Any:
    if value is None:
        return None
    if attribute.is_uuid and isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return str(uuid.UUID(bytes=bytes(value)))
    if attribute.is_json:
        try:
            return json.loads(value)
        except (TypeError, ValueError):
            return value if isinstance(value, str) else None
    if attribute.type == "bool" and isinstance(value, int):
        return bool(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta, decimal.Decimal)):
        return str(value)
    return value


#: attribute types whose int or str values ``_json_value`` changes (every other int or str is written as is)
_CONVERTED_TYPES = {"bool", "json"}


def row_json(heading: Heading, values: dict[str, Any]) -> bytes:
    """``row.json``: the attributes that are not files, in heading order (dates as text, binary as hex)."""
    document: dict[str, Any] = {}
    nested = False
    for name, value in values.items():
        # ints and strings (most keys) are written as they are, without asking _json_value: ls -lR makes
        # thousands of these files
        if (type(value) is not int and type(value) is not str) or heading[name].type in _CONVERTED_TYPES:
            value = _json_value(heading[name], value)
            nested = nested or isinstance(value, (dict, list))
        document[name] = value
    if not document or nested:
        text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    else:  # json.dumps(indent=2)'s text, from one call of the C encoder (indent= takes the pure-Python one): ls -lR
        # makes thousands of these
        text = "{\n  " + _encode_flat(document)[1:-1] + "\n}"
    return (text + "\n").encode("utf-8")


#: a flat object's members one per line, as ``indent=2`` lays them out, without the braces' line breaks
_encode_flat = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",\n  ", ": ")).encode


# -- inode numbers --------------------------------------------------------------------------------------------


def inode_of(*parts: str) -> int:
    """A stable 63-bit inode number (never 0 or 1, the root's) from a content hash or a path."""
    digest = hashlib.blake2b("\0".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return max(2, int.from_bytes(digest, "little") & ((1 << 63) - 1))


def digest_of(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
