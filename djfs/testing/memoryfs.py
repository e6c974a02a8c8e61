"""A file system served from memory through the low-level libfuse binding (``djfs.fs.lowlevel``), listings kept by
the kernel: the ceiling of a Python FUSE on this machine in ``scripts/bench_listing.py``, and what
``tests/test_lowlevel.py`` mounts.

The tree is the shape of a mounted table: ``/Trial/trial=N/`` with ``frames.npy`` (a real ``.npy`` of 16 float32
values, 192 bytes) and ``row.json`` (``{"trial": N}``, 20 bytes) per row.  Run it as
``python -m djfs.testing.memoryfs MOUNTPOINT [--rows N]``; through the mount's root:

* ``user.memoryfs.calls`` (getxattr): the requests that reached Python so far, per kind, as JSON;
* ``user.memoryfs.inodes`` (getxattr): how many node ids the kernel holds (FORGET gives them back);
* ``user.memoryfs.add`` (setxattr, mounted ``--writable``; value ``DIRECTORY/NAME``): add an empty file to a
  directory, then tell the kernel to forget the directory's kept listing (``notify_inval_inode``) -- or, the value
  prefixed ``quiet:``, don't;
* ``user.memoryfs.forget`` (setxattr, ``--writable``; value a directory other than the root): tell the kernel to
  drop the names in it (``notify_inval_entry``), and with them the inodes beneath, which it then FORGETs.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import io
import json
import os
import stat
import sys
import threading
from typing import Any

import numpy as np

from ..fs import callbacks, lowlevel

CALLS_XATTR = "user.memoryfs.calls"
INODES_XATTR = "user.memoryfs.inodes"
ADD_XATTR = "user.memoryfs.add"
FORGET_XATTR = "user.memoryfs.forget"
QUIET = "quiet:"
DIRECTORY = {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
FRAMES_SIZE, ROW_SIZE = 192, 20

Tree = dict[str, list[tuple[str, dict]]]


def table_tree(rows: int) -> Tree:
    """``/Trial`` with ``rows`` row directories of two files: directory path -> its entries (name, attributes)."""
    tree: Tree = {"/": [("Trial", DIRECTORY)], "/Trial": []}
    for i in range(rows):
        tree["/Trial"].append((f"trial={i}", DIRECTORY))
        tree[f"/Trial/trial={i}"] = [(name, {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": size})
                                     for name, size in (("frames.npy", FRAMES_SIZE), ("row.json", ROW_SIZE))]
    return tree


def frames(trial: int) -> np.ndarray:
    """What row ``trial``'s ``frames.npy`` holds."""
    return np.arange(16, dtype=np.float32) + trial


def content(path: str) -> bytes:
    """A file's bytes, made from its path: ``/Trial/trial=N/frames.npy`` or ``row.json``; others are empty."""
    parts = path.split("/")
    if len(parts) != 4 or not parts[2].startswith("trial="):
        return b""
    trial = int(parts[2].removeprefix("trial="))
    if parts[3] == "frames.npy":
        buffer = io.BytesIO()
        np.save(buffer, frames(trial))
        return buffer.getvalue()
    if parts[3] == "row.json":
        return json.dumps({"trial": trial}).encode().ljust(ROW_SIZE - 1) + b"\n"
    return b""


class MemoryOperations(lowlevel.Operations):
    """``table_tree`` (plus what ``user.memoryfs.add`` adds) for ``lowlevel.Session``, counting requests."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.attributes = {lowlevel.join(base, name): value for base, entries in tree.items()
                           for name, value in entries}
        self.attributes["/"] = DIRECTORY
        self.calls: collections.Counter = collections.Counter()
        self.session: lowlevel.Session | None = None
        self._lock = threading.Lock()

    def count_call(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def getattr(self, path: str, fh: Any = None) -> dict:
        try:
            return self.attributes[path]
        except KeyError:
            raise OSError(errno.ENOENT, path) from None

    def directory(self, path: str, offset: int = 0, keep: bool = True) -> list:
        if path not in self.tree:
            raise OSError(errno.ENOTDIR if path in self.attributes else errno.ENOENT, path)
        return [(".", None), ("..", None), *self.tree[path]]

    def open(self, path: str, fi: Any) -> int:
        if stat.S_ISDIR(self.getattr(path)["st_mode"]):
            raise OSError(errno.EISDIR, path)
        fi.keep_cache = 1  # contents never change
        if self.read_buf is not None:  # the bytes in a memory file, handed to libfuse by descriptor
            fi.fh = os.memfd_create("memoryfs")
            os.write(fi.fh, content(path))
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        self.count_call("copied_reads")
        return content(path)[offset:offset + size]

    def read_buf(self, path: str, bufpp: Any, size: int, offset: int, fi: Any) -> int:
        """Like djfs's ``Operations.read_buf``: the bytes as a (descriptor, position, length) segment."""
        length = max(0, min(size, os.fstat(fi.fh).st_size - offset))
        vector = callbacks.fd_bufvec([(fi.fh, offset, length)] if length else [])
        if not vector:
            return -errno.ENOMEM
        self.count_call("fd_segments")
        ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = vector
        return 0

    def release(self, path: str, fi: Any) -> int:
        if self.read_buf is not None:
            os.close(fi.fh)
        return 0

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if path == "/" and name == CALLS_XATTR:
            with self._lock:
                return json.dumps(dict(self.calls)).encode()
        if path == "/" and name == INODES_XATTR and self.session is not None:
            return str(len(self.session.inodes)).encode()
        raise OSError(errno.ENODATA if name.startswith("user.") else errno.EOPNOTSUPP, name)

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        """The controls (see the module docstring): requests on the root, so telling the kernel about other
        inodes can't wait on the one being served."""
        if path == "/" and name == ADD_XATTR:
            self._add(value.decode())
        elif path == "/" and name == FORGET_XATTR:
            self._drop_names(value.decode())
        else:
            raise OSError(errno.ENOTSUP, name)
        return 0

    def _add(self, text: str) -> None:
        quiet = text.startswith(QUIET)
        directory, _, file = text.removeprefix(QUIET).rpartition("/")
        directory = directory or "/"
        if directory not in self.tree or not file:
            raise OSError(errno.ENOENT, text)
        attributes = {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": 0}
        self.tree[directory] = [*self.tree[directory], (file, attributes)]
        self.attributes[lowlevel.join(directory, file)] = attributes
        if not quiet and self.session is not None and directory != "/":
            result = self.session.invalidate_inode(directory)
            if result not in (0, -errno.ENOENT):
                raise OSError(-result, f"invalidating {directory}")

    def _drop_names(self, directory: str) -> None:
        if directory not in self.tree or directory == "/" or self.session is None:
            raise OSError(errno.ENOENT, directory)
        for name, _ in self.tree[directory]:
            result = self.session.invalidate_entry(directory, name)
            if result not in (0, -errno.ENOENT):
                raise OSError(-result, f"invalidating {directory}/{name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=60.0, help="the kernel's entry and attribute timeouts")
    parser.add_argument("--single-thread", action="store_true")
    parser.add_argument("--copy-reads", action="store_true", help="read (bytes through Python), not read_buf")
    parser.add_argument("--opendir", action="store_true",
                        help="answer opendir (as libfuse's high-level API does): the kernel keeps no listing")
    parser.add_argument("--writable", action="store_true",
                        help="mount read-write (for user.memoryfs.add); read-only, the kernel never asks again for "
                             "a directory's attributes after listing it (no atime to update)")
    args = parser.parse_args(argv)
    operations = MemoryOperations(table_tree(args.rows))
    if args.copy_reads:
        operations.read_buf = None  # type: ignore[method-assign,assignment]
    options = ["fsname=memoryfs", "default_permissions", "rw" if args.writable else "ro"]
    session = lowlevel.Session(operations, args.mountpoint, options,
                               entry_timeout=args.timeout, attr_timeout=args.timeout,
                               threads=not args.single_thread, keep_listings=not args.opendir)
    operations.session = session
    return 0 if session.run() >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
