"""A store in a local or shared (NFS, SMB, Lustre …) file system folder.

Writes go to a hidden temporary file in the object's own directory, are fsynced, then renamed over the final
name, and the directory is fsynced: a reader — on this host or another one sharing the folder — sees either no
object or the whole object, never a partial one, even after a crash.  Temporary names start with ``.``, which
no valid key does, so they never show up in ``list`` (and so are never taken for objects).

The store's root folder is created on first write only if its parent exists: when a network share is not
mounted, the parent is missing, and writing into an empty mount point on the local disk would silently put
objects where nobody else can see them.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CorruptObjectError, StoreError
from .base import MAX_IO, Data, Filled, ObjectInfo, Store, as_chunks, check_size, pread_all, is_valid_key, validate_key, validate_prefix

READ_STEP = 4 << 20  # pieces of a read whose progress is reported (hashing overlaps the next piece's read)


class FileStore(Store):
    """Objects are files ``<root>/<key>``."""

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        if not root.is_absolute():
            raise ValueError(f"a file store needs an absolute path, not {os.fspath(root)!r}")
        self.root = root
        self._root = os.fspath(root)

    def describe(self) -> str:
        return f"file://{self._root}"

    def _path(self, key: str) -> str:
        return os.path.join(self._root, validate_key(key))

    def _fail(self, action: str, key: str, error: OSError) -> StoreError:
        return StoreError(f"can't {action} {key!r} in {self.describe()}: {error.strerror or error}")

    # -- writing --------------------------------------------------------------------------------------------

    def _make_directory(self, directory: str) -> None:
        if not os.path.isdir(self._root):
            parent = os.path.dirname(self._root)
            if not os.path.isdir(parent):
                raise StoreError(f"the location {parent!r} of {self.describe()} does not exist "
                                 "(is the share mounted?)")
        os.makedirs(directory, exist_ok=True)

    def put(self, key: str, data: Data, size: int | None = None) -> None:
        path = self._path(key)
        directory, name = os.path.split(path)
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            try:
                fd = os.open(temporary, flags, 0o666)
            except FileNotFoundError:
                self._make_directory(directory)
                fd = os.open(temporary, flags, 0o666)
        except OSError as error:
            if isinstance(error, StoreError):
                raise
            raise self._fail("write", key, error) from error
        try:
            try:
                written = 0
                for chunk in as_chunks(data):  # errors raised by the caller's stream pass through unchanged
                    try:
                        written += _write_all(fd, chunk)
                    except OSError as error:
                        raise self._fail("write", key, error) from error
                check_size(written, size, key, self)
                try:
                    os.fsync(fd)
                except OSError as error:
                    raise self._fail("write", key, error) from error
            finally:
                os.close(fd)
            try:
                os.replace(temporary, path)
            except OSError as error:
                raise self._fail("write", key, error) from error
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        try:
            _fsync_directory(directory)
        except OSError as error:
            raise self._fail("write", key, error) from error

    # -- reading --------------------------------------------------------------------------------------------

    def _open(self, key: str) -> int:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._missing(key) from None
        except OSError as error:
            raise self._fail("read", key, error) from error
        if not _is_file(os.fstat(fd).st_mode):  # a directory such as "ab/cd" is not an object
            os.close(fd)
            raise self._missing(key)
        return fd

    @contextmanager
    def _reading(self, key: str) -> Iterator[int]:
        """An open descriptor of the object; OS errors become store errors naming the key."""
        fd = self._open(key)
        try:
            yield fd
        except IsADirectoryError:
            raise self._missing(key) from None
        except StoreError:
            raise
        except OSError as error:
            raise self._fail("read", key, error) from error
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        with self._reading(key) as fd, open(fd, "rb", buffering=0, closefd=False) as file:
            return file.read()  # sized from fstat: one allocation

    def get_into(self, key: str, buffer: memoryview, filled: Filled | None = None) -> None:
        view = memoryview(buffer).cast("B")
        step = READ_STEP if filled is not None else MAX_IO  # report progress often enough to overlap hashing
        with self._reading(key) as fd:
            stored = os.fstat(fd).st_size
            if stored != len(view):
                raise CorruptObjectError(f"object {key!r} in {self.describe()} has {stored} bytes, "
                                         f"{len(view)} were expected")
            position = 0
            with open(fd, "rb", buffering=0, closefd=False) as file:
                while position < len(view):
                    count = file.readinto(view[position:position + step])
                    if not count:
                        raise CorruptObjectError(f"object {key!r} in {self.describe()} shrank while being read")
                    if filled is not None:
                        filled(position, position + count)
                    position += count

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        with self._reading(key) as fd:
            return pread_all(fd, length, offset)

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        except OSError as error:
            raise self._fail("stat", key, error) from error
        if not _is_file(info.st_mode):
            raise self._missing(key)
        return info.st_size

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def remove(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as error:
            raise self._fail("remove", key, error) from error

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        start = prefix.rpartition("/")[0]
        yield from self._walk(start, prefix)

    def _walk(self, relative: str, prefix: str) -> Iterator[ObjectInfo]:
        directory = os.path.join(self._root, relative) if relative else self._root
        try:
            with os.scandir(directory) as scan:
                entries = [(entry.name, entry.is_dir()) for entry in scan]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as error:
            raise self._fail("list", relative or "/", error) from error
        # sorting a directory as "name/" yields keys in plain lexicographic order, as S3 lists them
        for name, is_directory in sorted(entries, key=lambda entry: entry[0] + "/" if entry[1] else entry[0]):
            key = f"{relative}/{name}" if relative else name
            if not is_valid_key(key):
                continue
            if is_directory:
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    yield from self._walk(key, prefix)
            elif key.startswith(prefix):
                try:
                    info = os.stat(os.path.join(self._root, key))
                except FileNotFoundError:
                    continue  # removed while listing
                yield ObjectInfo(key, info.st_size, info.st_mtime)


def _is_file(mode: int) -> bool:
    return stat.S_ISREG(mode)


def _write_all(fd: int, chunk: memoryview) -> int:
    """Write a whole chunk: os.write may write less than asked."""
    position = 0
    while position < len(chunk):
        position += os.write(fd, chunk[position:position + MAX_IO])
    return position


def _fsync_directory(directory: str) -> None:
    """Make the rename durable; some file systems (and all of Windows) can't open a directory: skip there."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
