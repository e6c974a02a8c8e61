"""A TIFF view of frames that lie row-major and contiguous in a stored object: the header is generated, the
pixels are the stored bytes themselves.

The file is ``header + frames``: the header holds the TIFF file header, ImageJ's description and one IFD per
frame (all before the data, so the mount serves the file as "header bytes + a byte range of the stored object",
like every ``.npy``); each IFD has a single strip pointing at its frame::

    [TIFF header][ImageJ description][IFD 0 ... IFD T-1][padding to 64 bytes][frame 0][frame 1]...[frame T-1]

* Uncompressed, one sample per pixel, ``BlackIsZero``, one strip per frame, byte order of the data ("II" or
  "MM").  Classic TIFF while the whole file fits in 4 GiB, BigTIFF (64-bit offsets) above.
* The first IFD carries ImageJ's hyperstack description (``ImageJ=1.11a\\nimages=T\\nframes=T\\n...``): ImageJ
  and Fiji read the first IFD only, take the frame count from it and compute where each frame lies (the frames
  are contiguous), so they open a stack -- or a virtual stack -- without reading every IFD or frame.  Readers
  that walk the IFDs (libtiff, tifffile, Pillow) find them all in the header, which is small (about 150 bytes
  per frame) and never touches the stored object.
* Up to ``MAX_IFDS`` frames every frame has its IFD (~150 bytes each, 15 MB at most).  Longer movies get the
  first IFD only, as ImageJ itself writes stacks over 4 GiB: ImageJ, Fiji and tifffile read the stack from the
  description; a reader that walks IFDs sees one frame.  (Types ImageJ can't read get no view that long.)
* Sample types: every real numeric type and bool (as 8-bit 0/1 values).  ImageJ's description is written for the
  types ImageJ reads (8/16/32-bit integers, float32, float64, bool); 64-bit integers, float16 and complex
  numbers still get a standard multi-page TIFF (libtiff and tifffile read them; ImageJ can't).  Anything else
  (strings, records, datetimes) has no TIFF view.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

#: TIFF SampleFormat of numpy dtype kinds: 1 unsigned, 2 signed, 3 IEEE float, 6 complex IEEE float
_SAMPLE_FORMAT = {"b": 1, "u": 1, "i": 2, "f": 3, "c": 6}
_ITEMSIZES = {"b": (1,), "u": (1, 2, 4, 8), "i": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}
#: (kind, itemsize) of the sample types ImageJ opens (it reads only the first IFD of an ImageJ stack)
_IMAGEJ_TYPES = {("b", 1), ("u", 1), ("i", 1), ("u", 2), ("i", 2), ("u", 4), ("i", 4), ("f", 4), ("f", 8)}
ALIGN = 64  # the data starts at a multiple of this (as in a .npy), so readers can memory-map it aligned
MAX_IFDS = 100_000  # more frames than this: the first IFD only (bounds the header, made at every open)

# TIFF field types
_SHORT, _LONG, _ASCII, _LONG8 = 3, 4, 2, 16
# tags, in the ascending order an IFD lists them
_NEW_SUBFILE_TYPE, _WIDTH, _LENGTH, _BITS, _COMPRESSION, _PHOTOMETRIC = 254, 256, 257, 258, 259, 262
_DESCRIPTION, _STRIP_OFFSETS, _SAMPLES, _ROWS_PER_STRIP, _STRIP_BYTES, _PLANAR, _SAMPLE_FORMAT_TAG = (
    270, 273, 277, 278, 279, 284, 339)
_TAGS_PER_IFD = 12  # the tags above, the description only in the first IFD


def supported(dtype: np.dtype) -> bool:
    """Whether TIFF can hold samples of this dtype."""
    dtype = np.dtype(dtype)
    return dtype.names is None and dtype.itemsize in _ITEMSIZES.get(dtype.kind, ())


@dataclass(frozen=True)
class TiffLayout:
    """The TIFF view of ``frames`` contiguous row-major frames of ``height x width`` samples."""

    dtype: np.dtype
    frames: int
    height: int
    width: int
    big: bool           # BigTIFF (64-bit offsets)
    header_size: int    # bytes before the first frame: the data offset inside the TIFF file

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * self.dtype.itemsize

    @property
    def size(self) -> int:
        """Size of the whole TIFF file."""
        return self.header_size + self.frames * self.frame_bytes

    @property
    def imagej(self) -> bool:
        return (self.dtype.kind, self.dtype.itemsize) in _IMAGEJ_TYPES

    @property
    def ifds(self) -> int:
        """How many IFDs the header holds: one per frame, or the first only for very long movies."""
        return self.frames if self.frames <= MAX_IFDS else 1

    def description(self) -> bytes:
        """ImageJ's hyperstack description (NUL-terminated), or b"" for types ImageJ can't read."""
        if not self.imagej:
            return b""
        text = "ImageJ=1.11a\n"
        if self.frames > 1:
            text += f"images={self.frames}\nframes={self.frames}\nhyperstack=true\nmode=grayscale\nloop=false\n"
        return text.encode("ascii") + b"\0"

    def header(self) -> bytes:
        """The header bytes: file header, description, every IFD, padding; the frames follow."""
        order = "<" if _byte_order(self.dtype) == "<" else ">"
        ifd0_at = _file_header_size(self.big) + _even(len(self.description()))
        entry, count_size, offset_size = _sizes(self.big)
        ifd0_size = count_size + (_TAGS_PER_IFD + bool(self.description())) * entry + offset_size
        ifd_size = count_size + _TAGS_PER_IFD * entry + offset_size
        first_strip = self.header_size

        out = bytearray(self.header_size)
        magic = order.replace("<", "II").replace(">", "MM").encode()
        if self.big:
            out[0:16] = magic + struct.pack(order + "HHHQ", 43, 8, 0, ifd0_at)
        else:
            out[0:8] = magic + struct.pack(order + "HI", 42, ifd0_at)
        description = self.description()
        description_at = _file_header_size(self.big)
        out[description_at:description_at + len(description)] = description

        def ifd(strip: int, next_ifd: int, with_description: bool) -> bytes:
            entries = self._entries(strip, description_at if with_description else None, len(description))
            return _pack_ifd(order, self.big, entries, next_ifd)

        rest_at = ifd0_at + ifd0_size
        out[ifd0_at:rest_at] = ifd(first_strip, rest_at if self.ifds > 1 else 0, bool(description))
        if self.ifds > 1:
            # IFDs 1..T-1 differ only in their strip offset and next-IFD offset: stamp them into a template
            template = np.frombuffer(ifd(0, 0, False), np.uint8)
            table = np.tile(template, (self.frames - 1, 1))
            strip_field = count_size + self._strip_offsets_index() * entry + (12 if self.big else 8)
            width = 8 if self.big else 4
            dtype = np.dtype(f"{order}u{width}")
            strips = first_strip + np.arange(1, self.frames, dtype=np.uint64) * np.uint64(self.frame_bytes)
            nexts = rest_at + np.arange(1, self.frames, dtype=np.uint64) * np.uint64(ifd_size)
            nexts[-1] = 0
            table[:, strip_field:strip_field + width] = strips.astype(dtype).view(np.uint8).reshape(-1, width)
            table[:, ifd_size - width:] = nexts.astype(dtype).view(np.uint8).reshape(-1, width)
            out[rest_at:rest_at + table.size] = table.tobytes()
        return bytes(out)

    def _strip_offsets_index(self) -> int:
        return [tag for tag, *_ in self._entries(0, None, 0)].index(_STRIP_OFFSETS)

    def _entries(self, strip: int, description_at: int | None, description_size: int) -> list[tuple]:
        kind, itemsize = self.dtype.kind, self.dtype.itemsize
        offset_type = _LONG8 if self.big else _LONG
        entries = [
            (_NEW_SUBFILE_TYPE, _LONG, 1, 0),
            (_WIDTH, _LONG, 1, self.width),
            (_LENGTH, _LONG, 1, self.height),
            (_BITS, _SHORT, 1, itemsize * 8),
            (_COMPRESSION, _SHORT, 1, 1),
            (_PHOTOMETRIC, _SHORT, 1, 1),  # BlackIsZero
            (_STRIP_OFFSETS, offset_type, 1, strip),
            (_SAMPLES, _SHORT, 1, 1),
            (_ROWS_PER_STRIP, _LONG, 1, self.height),
            (_STRIP_BYTES, offset_type, 1, self.frame_bytes),
            (_PLANAR, _SHORT, 1, 1),
            (_SAMPLE_FORMAT_TAG, _SHORT, 1, _SAMPLE_FORMAT[kind]),
        ]
        if description_at is not None:
            entries.insert(6, (_DESCRIPTION, _ASCII, description_size, description_at))
        return entries


def layout(dtype: np.dtype, shape: tuple[int, ...]) -> TiffLayout | None:
    """The TIFF view of C-ordered data of this dtype and shape -- (frames, height, width) or (height, width) --
    or None when TIFF can't show it (another number of dimensions, an empty axis, an unsupported type)."""
    dtype = np.dtype(dtype)
    if len(shape) not in (2, 3) or not supported(dtype) or min(shape) < 1:
        return None
    frames, height, width = (1, *shape) if len(shape) == 2 else shape
    if width >= 1 << 32 or height >= 1 << 32:
        return None
    for big in (False, True):
        probe = TiffLayout(dtype, frames, height, width, big, 0)
        if probe.ifds < frames and not probe.imagej:
            return None  # one IFD and no description: nothing would show the other frames
        description = len(probe.description())
        entry, count_size, offset_size = _sizes(big)
        ifds = probe.ifds * (count_size + _TAGS_PER_IFD * entry + offset_size) + (entry if description else 0)
        header_size = -(-(_file_header_size(big) + _even(description) + ifds) // ALIGN) * ALIGN
        result = TiffLayout(dtype, frames, height, width, big, header_size)
        if big or result.size < 1 << 32:
            return result
    raise AssertionError("unreachable")


def _byte_order(dtype: np.dtype) -> str:
    """'<' or '>' for the data's byte order ('<' for one-byte types and native little-endian)."""
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False):
        return ">"
    return "<"


def _file_header_size(big: bool) -> int:
    return 16 if big else 8


def _sizes(big: bool) -> tuple[int, int, int]:
    """(bytes per IFD entry, of the entry count, of the next-IFD offset)."""
    return (20, 8, 8) if big else (12, 2, 4)


def _even(n: int) -> int:
    return n + (n & 1)


def _pack_ifd(order: str, big: bool, entries: list[tuple], next_ifd: int) -> bytes:
    """One IFD: every value fits inline (a single SHORT, LONG or LONG8), the description is an offset."""
    value_size = 8 if big else 4
    parts = [struct.pack(order + ("Q" if big else "H"), len(entries))]
    for tag, field_type, count, value in entries:
        if field_type == _SHORT:
            inline = struct.pack(order + "H", value)
        elif field_type == _LONG8:
            inline = struct.pack(order + "Q", value)
        elif field_type == _ASCII and count <= value_size:
            raise AssertionError("an ImageJ description never fits inline")
        else:  # LONG, or the description's offset
            inline = struct.pack(order + ("Q" if big and field_type == _ASCII else "I"), value)
        inline = inline.ljust(value_size, b"\0")
        parts.append(struct.pack(order + ("HHQ" if big else "HHI"), tag, field_type, count) + inline)
    parts.append(struct.pack(order + ("Q" if big else "I"), next_ifd))
    return b"".join(parts)
