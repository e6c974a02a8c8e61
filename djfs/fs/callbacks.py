"""What every call from libfuse into Python needs, through the high-level API (``operations.FileSystem``) or the
low-level one (``lowlevel.Session``): the calling thread's Python state kept, ``struct stat`` filled fast, and
data handed over in libfuse's buffer vectors (``read_buf``)."""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

_pinned: set[int] = set()  # libfuse threads whose Python thread state is kept


def pin_thread_state() -> None:
    """Keep the calling libfuse thread's Python thread state from one call to the next (one
    ``PyGILState_Ensure`` never released) instead of Python creating and destroying one per call (ctypes
    callbacks on foreign threads): a fifth of the daemon's CPU time in ``ls -lR``.  Called from inside a
    callback, with the GIL held."""
    thread = threading.get_ident()
    if thread not in _pinned:
        ctypes.pythonapi.PyGILState_Ensure()
        _pinned.add(thread)


_TIMESPECS = {"st_atime": "st_atimespec", "st_mtime": "st_mtimespec", "st_ctime": "st_ctimespec"}


def fill_stat(entry: Any, attributes: dict[str, Any]) -> None:
    """Write attributes as ``Operations`` makes them (``struct stat`` fields, times in nanoseconds) into a
    ``struct stat``: what ``mfusepy.set_st_attrs`` does, without its checks per key (1.4 µs instead of 2.5:
    readdirplus fills one per entry)."""
    for key, value in attributes.items():
        timespec = _TIMESPECS.get(key)
        if timespec is None:
            setattr(entry, key, value)
        else:
            field = getattr(entry, timespec)
            field.tv_sec, field.tv_nsec = divmod(value, 1_000_000_000)


# -- replies of data: libfuse's buffer vectors (read_buf), allocated with libc since libfuse frees them -----------

FUSE_BUF_IS_FD = 1 << 1
FUSE_BUF_FD_SEEK = 1 << 2

libc = ctypes.CDLL(None)
libc.calloc.restype = ctypes.c_void_p
libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


@functools.cache
def _buf() -> type[ctypes.Structure]:
    """libfuse's ``struct fuse_buf``, as the loaded libfuse lays it out (3.17 appends ``mem_size``): a vector of
    several buffers must have libfuse's stride."""
    from .libfuse import load_mfusepy
    mfusepy = load_mfusepy()  # the one already loaded
    fields = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p), ("fd", ctypes.c_int),
              ("pos", ctypes.c_int64)]
    if (mfusepy.fuse_version_major, mfusepy.fuse_version_minor) >= (3, 17):
        fields.append(("mem_size", ctypes.c_size_t))
    return type("Buf", (ctypes.Structure,), {"_fields_": fields})


@functools.cache
def bufvec_type(count: int) -> type[ctypes.Structure]:
    """libfuse's ``struct fuse_bufvec`` with ``count`` inline buffers (its ``buf`` is a trailing array; mfusepy
    declares it as a pointer)."""
    return type("BufVec", (ctypes.Structure,), {"_fields_": [
        ("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t), ("buf", _buf() * count)]})


def fd_bufvec(segments: list[tuple[int, int, int]]) -> int:
    """A calloc'd ``fuse_bufvec`` of (descriptor, position, length) segments: the bytes go from the files' page
    cache to the kernel without passing through Python.  0 if out of memory."""
    kind = bufvec_type(len(segments))
    vector = libc.calloc(1, ctypes.sizeof(kind))
    if vector:
        buffers = kind.from_address(vector)
        buffers.count = len(segments)
        for buffer, (fd, position, length) in zip(buffers.buf, segments):
            buffer.size = length
            buffer.flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK
            buffer.fd = fd
            buffer.pos = position
    return vector or 0


def memory_bufvec(pieces: list[tuple[bytes | bytearray, int, int]]) -> int:
    """A calloc'd ``fuse_bufvec`` of one malloc'd buffer holding (data, start, length) pieces, copied once from
    where they lie.  0 if out of memory."""
    kind = bufvec_type(1)
    vector = libc.calloc(1, ctypes.sizeof(kind))
    if not vector:
        return 0
    total = sum(piece[2] for piece in pieces)
    memory = libc.malloc(max(1, total))
    if not memory:
        libc.free(vector)
        return 0
    position = 0
    for data, start, length in pieces:
        ctypes.memmove(memory + position, _address(data) + start, length)
        position += length
    buffers = kind.from_address(vector)
    buffers.count = 1
    buffer = buffers.buf[0]
    buffer.size = total
    buffer.mem = memory
    if hasattr(buffer, "mem_size"):
        buffer.mem_size = total
    return vector


def free_bufvec(vector: int) -> None:
    """Free a vector made here and its memory buffers (what libfuse's high-level API does after replying)."""
    if vector:
        count = bufvec_type(0).from_address(vector).count
        for buffer in bufvec_type(count).from_address(vector).buf:
            if not buffer.flags & FUSE_BUF_IS_FD and buffer.mem:
                libc.free(buffer.mem)
        libc.free(vector)


def _address(data: bytes | bytearray) -> int:
    """Where a bytes or bytearray object keeps its bytes (no copy), for one memmove into libfuse's buffer."""
    if isinstance(data, bytearray):
        return ctypes.addressof(ctypes.c_char.from_buffer(data)) if data else 0
    if not isinstance(data, bytes):
        raise TypeError(f"can't address {type(data).__name__}")
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
