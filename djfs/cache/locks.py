"""The fill lock: one fill of a name at a time among this process's threads and among processes."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class FillLocks:
    """``with locks.hold(name):`` — a thread lock per name, then an exclusive ``flock`` on ``<directory>/<name>``.

    Lock files are removed after use; that races with a process that opened the file just before, so after
    locking, a process checks that its file is still the one under the name, and starts over if not.  Thread
    lock entries disappear when nobody holds or waits for them.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._threads: dict[str, list] = {}   # name -> [lock, holders and waiters]

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        with self._thread_lock(name), self._file_lock(name):
            yield

    @contextmanager
    def _thread_lock(self, name: str) -> Iterator[None]:
        with self._lock:
            entry = self._threads.setdefault(name, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._threads[name]

    @contextmanager
    def _file_lock(self, name: str) -> Iterator[None]:
        path = os.path.join(self.directory, name)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                mine = os.fstat(fd)
                try:
                    current = os.stat(path)
                    same = (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev)
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        try:
            yield
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
            os.close(fd)  # releases the lock
