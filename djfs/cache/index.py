"""The cache's in-memory index of its files: sizes, total, least-recently-used order; thread-safe.

Recency is shared between processes through the files' mtimes (the cache touches a file now and then when it
is used, and rebuilds the index from a scan ordered by mtime); this class only keeps this process's view.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict


class LruIndex:
    """name -> size, oldest use first, with a running total and room reserved for files about to appear."""

    def __init__(self, touch_interval: float = 10.0) -> None:
        self.touch_interval = touch_interval
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, list] = OrderedDict()   # name -> [size, last time marked used]
        self._total = 0
        self._reserved = 0

    def add(self, name: str, size: int) -> None:
        """Record a file as just used."""
        with self._lock:
            self._add(name, size, time.time())

    def _add(self, name: str, size: int, when: float) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._total -= entry[0]
        self._entries[name] = [size, when]
        self._total += size

    def forget(self, name: str) -> None:
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is not None:
                self._total -= entry[0]

    def touch(self, name: str, size: int) -> bool:
        """Mark a file used; True when its mtime should be refreshed too (other processes see its use)."""
        now = time.time()
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry[0] != size:
                self._add(name, size, now)
                return True
            self._entries.move_to_end(name)
            if now - entry[1] >= self.touch_interval:
                entry[1] = now
                return True
            return False

    def replace(self, found: list[tuple[float, str, int]]) -> None:
        """Rebuild from a scan: (mtime, name, size), in any order."""
        found = sorted(found)
        with self._lock:
            self._entries = OrderedDict((name, [size, mtime]) for mtime, name, size in found)
            self._total = sum(size for _, _, size in found)

    def reserve(self, size: int) -> None:
        with self._lock:
            self._reserved += size

    def unreserve(self, size: int) -> None:
        with self._lock:
            self._reserved -= size

    def victims(self, limit: int, protect: str | None = None) -> list[str]:
        """Remove (from the index) and return the oldest names until total + reserved fits ``limit``."""
        victims = []
        with self._lock:
            while self._total + self._reserved > limit and self._entries:
                name, entry = next(iter(self._entries.items()))
                if name == protect:
                    if len(self._entries) == 1:
                        break
                    self._entries.move_to_end(name)
                    continue
                del self._entries[name]
                self._total -= entry[0]
                victims.append(name)
        return victims

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._total = 0

    @property
    def total(self) -> int:
        with self._lock:
            return self._total

    def counts(self) -> Counter:
        """Files per top directory (objects, blocks, …)."""
        with self._lock:
            return Counter(name.partition("/")[0] for name in self._entries)
