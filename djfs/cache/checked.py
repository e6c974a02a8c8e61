"""The format of every cache file: the data, then an XXH3 checksum per 256 KiB block, then a footer.

::

    data (size bytes) | n x u64 XXH3 of each CHECK_BLOCK of data | footer (32 bytes)
    footer = b"DJFSCK01" | u64 size | u32 block | u32 n | u64 XXH3(table || first 24 footer bytes)

Why: cache files are written without ``fsync`` (the caller never waits for the cache disk), so after a power
loss a renamed file may hold zeros, a torn tail, or nothing; and disks flip bits.  Every read from the cache
checks the blocks it returns, so none of that ever reaches a reader: a damaged file is reported as
``DamagedFile`` and the cache drops it (the object is fetched again).  The data starts at offset 0, so the
mount can hand libfuse ``(fd, position)`` of a file it verified once.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, BinaryIO

from .. import hashing
from ..errors import CorruptObjectError
from ..stores.base import pread_all

if TYPE_CHECKING:
    import hashlib

MAGIC = b"DJFSCK01"
_FOOTER = struct.Struct("<8sQII")
FOOTER_SIZE = _FOOTER.size + 8
BLOCK = hashing.CHECK_BLOCK
VERIFY_STEP = 4 * BLOCK   # bytes a whole-file check reads at a time (fits the CPU's cache)


class DamagedFile(CorruptObjectError):
    """A cache file whose footer or blocks don't check out: drop it and fetch the object again."""


def trailer(size: int, sums: list[int]) -> bytes:
    """The checksum table and the footer that follow ``size`` bytes of data."""
    if len(sums) != -(-size // BLOCK):
        raise ValueError(f"{len(sums)} block checksums for {size} bytes")
    table = struct.pack(f"<{len(sums)}Q", *sums)
    head = _FOOTER.pack(MAGIC, size, BLOCK, len(sums))
    return table + head + struct.pack("<Q", hashing.block_sum(table + head))


def file_size(size: int) -> int:
    """Bytes on disk of a cache file holding ``size`` bytes of data."""
    return size + 8 * -(-size // BLOCK) + FOOTER_SIZE


class CheckedWriter:
    """A file-like sink for a fill: writes the data, sums its blocks, counts it; ``finish`` adds the trailer.

    ``content`` (a running digest) is fed the same bytes, so a fill verifies the object while writing it.
    ``sums``, the block checksums the caller already took of these bytes (the reader checks every block it gets
    from a store with them), spare summing the data a second time.
    """

    def __init__(self, file: BinaryIO, label: str, size: int, content: "hashlib._Hash | None" = None,
                 sums: list[int] | None = None) -> None:
        if sums is not None and len(sums) != -(-size // BLOCK):
            raise ValueError(f"{len(sums)} block checksums for {size} bytes")
        self._file = file
        self._label = label
        self._size = size
        self.content = content
        self._known = sums
        self._sums = hashing.BlockSums() if sums is None else None
        self.count = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        if self.count + len(view) > self._size:
            raise CorruptObjectError(f"{self._label} is longer than its recorded size of {self._size} bytes")
        if self.content is not None:
            self.content.update(view)
        if self._sums is not None:
            self._sums.update(view)
        position = 0
        while position < len(view):  # a raw file may write less than asked
            position += self._file.write(view[position:]) or 0
        self.count += len(view)
        return len(view)

    def finish(self) -> list[int]:
        """Check the length and append the trailer; returns the block checksums."""
        if self.count != self._size:
            raise CorruptObjectError(f"{self._label} is truncated: {self.count} of {self._size} bytes")
        sums = self._sums.finish() if self._sums is not None else list(self._known or ())
        tail = memoryview(trailer(self._size, sums))
        while len(tail):
            tail = tail[self._file.write(tail) or 0:]
        return sums

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass  # unbuffered: a failing write raises at once

    def tell(self) -> int:
        return self.count

    @property
    def closed(self) -> bool:
        return False


class CheckedFile:
    """An open cache file: its data size, its block checksums, and reads that check every block they touch."""

    def __init__(self, file: BinaryIO, size: int, sums: list[int], label: str) -> None:
        self.file = file
        self.fd = file.fileno()
        self.size = size
        self.sums = sums
        self.label = label

    @classmethod
    def open(cls, path: str, size: int | None, label: str) -> "CheckedFile | None":
        """The file at ``path`` (None if missing); ``DamagedFile`` if its footer or table is bad, or its size is
        not ``size``."""
        try:
            file = open(path, "rb", buffering=0)
        except FileNotFoundError:
            return None
        try:
            fd = file.fileno()
            length = os.fstat(fd).st_size
            if length < FOOTER_SIZE:
                raise DamagedFile(f"{label} ({path}) is too short to be a cache file")
            footer = pread_all(fd, FOOTER_SIZE, length - FOOTER_SIZE)
            magic, stored, block, count = _FOOTER.unpack(footer[:_FOOTER.size])
            if magic != MAGIC or block != BLOCK or count != -(-stored // BLOCK) or length != file_size(stored):
                raise DamagedFile(f"{label} ({path}) has no valid footer")
            table = pread_all(fd, 8 * count, stored)
            (check,) = struct.unpack("<Q", footer[_FOOTER.size:])
            if len(table) != 8 * count or hashing.block_sum(table + footer[:_FOOTER.size]) != check:
                raise DamagedFile(f"{label} ({path}) has a damaged checksum table")
            if size is not None and stored != size:
                raise DamagedFile(f"{label} ({path}) holds {stored} bytes, {size} expected")
            return cls(file, stored, list(struct.unpack(f"<{count}Q", table)), f"{label} ({path})")
        except BaseException:
            file.close()
            raise

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes (fewer at the end) from ``offset``, every block they touch checked."""
        length = max(0, min(length, self.size - offset))
        if not length:
            return b""
        first, last = offset // BLOCK, (offset + length - 1) // BLOCK
        start = first * BLOCK
        data = pread_all(self.fd, min(self.size, (last + 1) * BLOCK) - start, start)
        self._check(memoryview(data), first)
        if start == offset and len(data) == length:
            return data
        return data[offset - start:offset - start + length]

    def read_blocks(self, offset: int, lengths: list[int]) -> list[bytearray]:
        """Consecutive pieces from ``offset`` (a multiple of ``BLOCK``; each piece but the last a multiple of it)
        in one ``preadv`` into a buffer each (a big read, no copy after it), every block checked."""
        if offset % BLOCK or any(length % BLOCK for length in lengths[:-1]) or \
                offset + sum(lengths) > self.size:
            raise ValueError("read_blocks needs pieces aligned to the checksum blocks, within the data")
        buffers = [bytearray(length) for length in lengths]
        views = [memoryview(buffer) for buffer in buffers]
        position, pending = offset, views
        while pending:
            count = os.preadv(self.fd, pending, position)
            if not count:
                raise DamagedFile(f"{self.label} shrank while read")
            position += count
            while pending and count >= len(pending[0]):
                count -= len(pending[0])
                pending = pending[1:]
            if pending and count:
                pending = [pending[0][count:], *pending[1:]]
        first = offset // BLOCK
        for view in views:
            self._check(view, first)
            first += -(-len(view) // BLOCK)
        return buffers

    def read_into(self, view: memoryview) -> None:
        """All the data into ``view`` (of exactly ``size`` bytes), checked."""
        if len(view) != self.size:
            raise ValueError("read_into needs a buffer of the file's data size")
        done = 0
        while done < self.size:
            count = os.preadv(self.fd, [view[done:done + (64 << 20)]], done)
            if not count:
                raise DamagedFile(f"{self.label} shrank while read")
            done += count
        self._check(view, 0)

    def verify(self) -> None:
        """Check every block (for a file whose data libfuse will read by descriptor, unchecked).

        Read through one small buffer, reused: it stays in the CPU's cache between the read and the hash (three
        times faster than fresh buffers of 16 MiB, measured; an ``mmap`` would be faster still, but a file
        truncated under it would kill the process with SIGBUS)."""
        buffer = memoryview(bytearray(VERIFY_STEP))
        self.advise()  # the whole file read ahead from the disk at once, not 1 MiB at a time
        for start in range(0, self.size, VERIFY_STEP):
            length = min(VERIFY_STEP, self.size - start)
            done = 0
            while done < length:
                count = os.preadv(self.fd, [buffer[done:length]], start + done)
                if not count:
                    raise DamagedFile(f"{self.label} shrank while read")
                done += count
            self._check(buffer[:length], start // BLOCK)

    def advise(self) -> None:
        """Ask the kernel to read the data from the disk now (it returns at once; reads later find it in memory)."""
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, self.size, os.POSIX_FADV_WILLNEED)

    def _check(self, view: memoryview, first: int) -> None:
        for number, start in enumerate(range(0, len(view), BLOCK), first):
            if hashing.block_sum(view[start:start + BLOCK]) != self.sums[number]:
                raise DamagedFile(f"{self.label}: block {number} does not match its checksum")

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "CheckedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
