"""Reading whole objects and byte ranges of a store, checked before anyone gets the bytes.

* A whole object is checked against its content digest (``ObjectId``).  The digest is computed on another
  thread *while* the store is still delivering the rest (``Store.get_into`` reports each finished range), so
  verification costs about ``max(read, hash)`` instead of their sum.  The same pass records the object's block
  checksums (``hashing.BlockSums``): the cache keeps them, and they check later byte-range reads.
* A byte range can't be checked against the content digest; it is checked against those block checksums when
  they are known (``check_range``), else only its length is.
* A mismatch is ``CorruptObjectError`` naming the store and the key.
"""

from __future__ import annotations

import threading

from .. import hashing
from ..errors import CorruptObjectError
from ..hashing import CHECK_BLOCK, ObjectId
from .base import Store


class _InOrder:
    """Hashes a buffer in order on its own thread as ranges of it are reported filled (in any order)."""

    def __init__(self, oid: ObjectId, view: memoryview, sums: bool = True) -> None:
        self._view = view
        self.state = oid.hasher()
        self.sums = hashing.BlockSums() if sums else None
        self._ready: dict[int, int] = {}
        self._position = 0
        self._stopped = False
        self._closing = False   # everything has been reported: stop when nothing continues the prefix
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="djfs-verify", daemon=True)
        self._thread.start()

    def filled(self, start: int, end: int) -> None:
        with self._cond:
            if end > self._ready.get(start, start):
                self._ready[start] = end
            self._cond.notify()

    def _next(self) -> int | None:
        """The end of a reported range that continues the hashed prefix (the caller holds ``_cond``)."""
        end = self._ready.pop(self._position, None)
        if end is None:
            for start, stop in list(self._ready.items()):  # a retry may report other boundaries
                if stop <= self._position:
                    del self._ready[start]
                elif start < self._position:
                    del self._ready[start]
                    return stop
        return end

    def _run(self) -> None:
        size = len(self._view)
        while True:
            with self._cond:
                while True:
                    end = None if self._position >= size else self._next()
                    if end is not None or self._stopped or self._position >= size or self._closing:
                        break
                    self._cond.wait()
                if end is None:
                    return
                start = self._position
            piece = self._view[start:end]  # hashing releases the GIL: the store keeps reading meanwhile
            self.state.update(piece)
            if self.sums is not None:
                self.sums.update(piece)
            with self._cond:
                self._position = end

    def finish(self) -> int:
        """Wait for the hash of everything reported; returns how many bytes were hashed."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        return self._position

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()


def fetch_verified(store: Store, key: str, oid: ObjectId, size: int, verify: bool = True, sums: bool = True) -> \
        tuple[bytearray, list[int] | None]:
    """The whole object and its block checksums (None unless ``sums``: only a cache needs them); checked against
    its digest unless ``verify`` is False (then only its size is checked, by the store)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    if not verify:
        if size:
            store.get_into(key, view)
        return buffer, hashing.sums_of(view) if sums else None
    checker = _InOrder(oid, view, sums)
    try:
        if size:
            store.get_into(key, view, checker.filled)
    except BaseException:
        checker.stop()
        raise
    if checker.finish() != size or not oid.matches(checker.state):
        raise CorruptObjectError(f"object {key!r} in {store.describe()} does not match its content digest "
                                 f"({oid.key}): corrupted or replaced")
    return buffer, checker.sums.finish() if checker.sums is not None else None


def check_range(store: Store, key: str, sums: list[int] | None, offset: int, data: bytes, size: int,
                data_sums: list[int] | None = None) -> None:
    """Check ``data``, read from ``offset``, against the object's block checksums (when known) and its length.

    ``offset`` must be a multiple of ``CHECK_BLOCK``, and ``data`` end at a block boundary or at the object's end.
    ``data_sums``: the checksums of ``data``'s blocks if the caller has taken them already.
    """
    expected = min(len(data), size - offset)
    if len(data) != expected or offset % CHECK_BLOCK or (offset + len(data) != size and len(data) % CHECK_BLOCK):
        raise CorruptObjectError(f"object {key!r} in {store.describe()}: {len(data)} bytes at {offset} don't "
                                 f"fit its size {size} or its checksum blocks")
    if sums is None:
        return
    view = memoryview(data)
    if data_sums is None:
        data_sums = hashing.sums_of(view)
    for number, start in enumerate(range(0, len(view), CHECK_BLOCK), offset // CHECK_BLOCK):
        if data_sums[number - offset // CHECK_BLOCK] != sums[number]:
            raise CorruptObjectError(f"object {key!r} in {store.describe()}: bytes {offset + start}.."
                                     f"{offset + min(start + CHECK_BLOCK, len(view))} don't match the checksums "
                                     "recorded when it was read whole (corrupted or replaced)")
