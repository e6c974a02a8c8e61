"""libfuse 3's low-level API through ctypes, carrying a path-based file system: what the high-level API can't do.

Why: the kernel keeps a directory's listing in its page cache (``FOPEN_CACHE_DIR``) only when the file system
asks for it at opendir, and libfuse 3.14's high-level ``opendir`` never passes that flag on (mfusepy is built on
the high-level API).  Through the low-level API, ``opendir`` can answer ENOSYS: the kernel then stops sending
OPENDIR and RELEASEDIR altogether and keeps every listing (``FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR``) in its page
cache until the directory's inode is invalidated (``Session.invalidate_inode``), its inode is evicted, or a
refresh of its attributes shows another mtime: a refresh with the same mtime keeps it (seen with djfs on kernel
6.x: past ``attr_timeout`` only LOOKUPs came, no READDIRPLUS), so a file system whose directory mtimes don't
follow their contents must invalidate what changed.  A second ``ls -lR`` then reaches the file system not at all,
instead of with four round trips per directory.

What the low-level API asks in exchange, and this module provides:

* inode numbers (the kernel's node ids) instead of paths: ``Inodes`` keeps each node id's parent and name (its
  path is built when a request needs it) and the kernel's lookup count per node id (one per ``lookup`` reply
  and per readdirplus entry, given back by FORGET), dropping the entry when the kernel forgets it;
* the replies: every request is answered exactly once (``fuse_reply_*``), errors as ``fuse_reply_err``;
* the directory stream: a listing is handed out from ``offset`` in buffers of the kernel's size, each entry with
  its attributes (``fuse_add_direntry_plus``), its offset the entry's index + 1.

``Operations`` is the path-based interface a file system implements, shaped like djfs's mfusepy ``Operations``
(``getattr``, ``directory``/``entry_attributes``, ``open``, ``read``/``read_buf``, ``release``, ``statfs``,
``getxattr`` ...); errors are raised as ``OSError`` with an errno.  Only libfuse 3 has this API (``struct
fuse_lowlevel_ops`` as of 3.14; libfuse takes its size, so later members are simply absent; libfuse 2's
low-level API differs and is not bound); the ``struct stat``, ``fuse_file_info`` and ``fuse_conn_info`` types are
mfusepy's, loaded for libfuse 3.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import signal
import stat
import threading
from typing import Any, Callable, Sequence

from .callbacks import fill_stat, free_bufvec, pin_thread_state
from .libfuse import LibfuseError, find, load_mfusepy

log = logging.getLogger(__name__)
mfusepy = load_mfusepy(3)  # its c_stat, fuse_file_info, fuse_conn_info and c_statvfs, laid out for libfuse 3

ROOT = 1  # FUSE_ROOT_ID
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14  # the kernel would alternate readdirplus and readdir: always plus here
FUSE_BUF_SPLICE_MOVE = 1 << 3  # fuse_reply_data: move pages rather than copy them, where splicing is on
Attributes = dict[str, Any]  # struct stat fields (st_mode, st_size ...), times in nanoseconds like mfusepy's use_ns


class EntryParam(ctypes.Structure):
    """``struct fuse_entry_param``: a node id, its attributes and how long the kernel may keep them."""
    _fields_ = [("ino", ctypes.c_uint64), ("generation", ctypes.c_uint64), ("attr", mfusepy.c_stat),
                ("attr_timeout", ctypes.c_double), ("entry_timeout", ctypes.c_double)]


class ForgetData(ctypes.Structure):
    """``struct fuse_forget_data``."""
    _fields_ = [("ino", ctypes.c_uint64), ("nlookup", ctypes.c_uint64)]


class Args(ctypes.Structure):
    """``struct fuse_args``."""
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)), ("allocated", ctypes.c_int)]


class LoopConfig32(ctypes.Structure):
    """``struct fuse_loop_config`` as ``fuse_session_loop_mt_32`` (libfuse 3.2-3.11) takes it."""
    _fields_ = [("clone_fd", ctypes.c_int), ("max_idle_threads", ctypes.c_uint)]


_req, _ino, _size, _off = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, mfusepy.c_off_t
_fi = ctypes.POINTER(mfusepy.fuse_file_info)
#: the members of ``struct fuse_lowlevel_ops`` in libfuse's order (3.14); a prototype for those bound here
_OPS: list[tuple[str, Any]] = [
    ("init", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)),
    ("destroy", ctypes.CFUNCTYPE(None, ctypes.c_void_p)),
    ("lookup", ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_char_p)),
    ("forget", ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_uint64)),
    ("getattr", ctypes.CFUNCTYPE(None, _req, _ino, _fi)),
    *((name, None) for name in ("setattr", "readlink", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename",
                                "link")),
    ("open", ctypes.CFUNCTYPE(None, _req, _ino, _fi)),
    ("read", ctypes.CFUNCTYPE(None, _req, _ino, _size, _off, _fi)),
    ("write", None), ("flush", None),
    ("release", ctypes.CFUNCTYPE(None, _req, _ino, _fi)),
    ("fsync", None),
    ("opendir", ctypes.CFUNCTYPE(None, _req, _ino, _fi)),
    ("readdir", ctypes.CFUNCTYPE(None, _req, _ino, _size, _off, _fi)),
    ("releasedir", ctypes.CFUNCTYPE(None, _req, _ino, _fi)),
    ("fsyncdir", None),
    ("statfs", ctypes.CFUNCTYPE(None, _req, _ino)),
    ("setxattr", ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_char_p, ctypes.c_void_p, _size, ctypes.c_int)),
    ("getxattr", ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_char_p, _size)),
    ("listxattr", ctypes.CFUNCTYPE(None, _req, _ino, _size)),
    *((name, None) for name in ("removexattr", "access", "create", "getlk", "setlk", "bmap", "ioctl", "poll",
                                "write_buf", "retrieve_reply")),
    ("forget_multi", ctypes.CFUNCTYPE(None, _req, _size, ctypes.POINTER(ForgetData))),
    ("flock", None), ("fallocate", None),
    ("readdirplus", ctypes.CFUNCTYPE(None, _req, _ino, _size, _off, _fi)),
    ("copy_file_range", None), ("lseek", None),
]


class LowLevelOps(ctypes.Structure):
    """``struct fuse_lowlevel_ops``: the members not bound here stay NULL (libfuse then answers ENOSYS)."""
    _fields_ = [(name, prototype or ctypes.c_void_p) for name, prototype in _OPS]


def _library() -> ctypes.CDLL:
    """libfuse 3 (the library mfusepy loaded), with the prototypes of the functions used here."""
    name = find(3)
    if name is None:
        raise LibfuseError("libfuse 3 is not installed (apt-get install fuse3)")
    lib = ctypes.CDLL(name)
    c_int, c_void_p, c_char_p = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p
    prototypes: dict[str, tuple[Any, list]] = {
        "fuse_session_new": (c_void_p, [ctypes.POINTER(Args), ctypes.POINTER(LowLevelOps), _size, c_void_p]),
        "fuse_session_mount": (c_int, [c_void_p, c_char_p]),
        "fuse_session_unmount": (None, [c_void_p]),
        "fuse_session_destroy": (None, [c_void_p]),
        "fuse_session_exit": (None, [c_void_p]),
        "fuse_session_loop": (c_int, [c_void_p]),
        "fuse_set_signal_handlers": (c_int, [c_void_p]),
        "fuse_remove_signal_handlers": (None, [c_void_p]),
        "fuse_reply_err": (c_int, [_req, c_int]),
        "fuse_reply_none": (None, [_req]),
        "fuse_reply_entry": (c_int, [_req, ctypes.POINTER(EntryParam)]),
        "fuse_reply_attr": (c_int, [_req, ctypes.POINTER(mfusepy.c_stat), ctypes.c_double]),
        "fuse_reply_open": (c_int, [_req, _fi]),
        "fuse_reply_buf": (c_int, [_req, c_void_p, _size]),
        "fuse_reply_data": (c_int, [_req, c_void_p, c_int]),
        "fuse_reply_xattr": (c_int, [_req, _size]),
        "fuse_reply_statfs": (c_int, [_req, ctypes.POINTER(mfusepy.c_statvfs)]),
        "fuse_add_direntry": (_size, [_req, c_void_p, _size, c_char_p, ctypes.POINTER(mfusepy.c_stat), _off]),
        "fuse_add_direntry_plus": (_size, [_req, c_void_p, _size, c_char_p, ctypes.POINTER(EntryParam), _off]),
        "fuse_lowlevel_notify_inval_inode": (c_int, [c_void_p, _ino, _off, _off]),
        "fuse_lowlevel_notify_inval_entry": (c_int, [c_void_p, _ino, c_char_p, _size]),
        "fuse_loop_cfg_create": (c_void_p, []),        # 3.12+
        "fuse_loop_cfg_destroy": (None, [c_void_p]),
        "fuse_session_loop_mt_312": (c_int, [c_void_p, c_void_p]),
        "fuse_session_loop_mt_32": (c_int, [c_void_p, ctypes.POINTER(LoopConfig32)]),  # 3.2+
    }
    for function, (restype, argtypes) in prototypes.items():
        if hasattr(lib, function):
            getattr(lib, function).restype = restype
            getattr(lib, function).argtypes = argtypes
    return lib


_lib = _library()


def _new_session(ops: LowLevelOps, options: Sequence[str], debug: bool = False) -> int | None:
    """``fuse_session_new`` with these mount options (None if libfuse refuses them: it says why on stderr)."""
    argv = [b"djfs"] + ([b"-d"] if debug else [])
    if options:
        argv += [b"-o", ",".join(options).encode()]
    arguments = Args(len(argv), (ctypes.c_char_p * len(argv))(*argv), 0)
    return _lib.fuse_session_new(ctypes.byref(arguments), ctypes.byref(ops), ctypes.sizeof(ops), None)


def refused_options(options: Sequence[str]) -> list[str]:
    """The options (``name`` or ``name=value``) libfuse's low-level session does not take, each tried alone:
    libfuse 3 takes mount options (``allow_other``, ``max_read=`` ...) and its own (``max_background=`` ...),
    not the high-level API's (``entry_timeout=``, ``use_ino``, ``kernel_cache`` ...).  Nothing is mounted."""
    refused = []
    saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(quiet, 2)  # libfuse prints "unknown option(s)" for each: the caller says it better
        for option in options:
            session = _new_session(LowLevelOps(), [option])
            if session:
                _lib.fuse_session_destroy(session)
            else:
                refused.append(option)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)
    return refused


def join(path: str, name: str) -> str:
    return f"/{name}" if path == "/" else f"{path}/{name}"


#: node ids are a hash of (parent's node id, name) in [2, 2 + SPAN): below 2**60, a Python int of two digits
SPAN = (1 << 60) - 2
#: the node ids of the (astronomically rare) entries whose hash is another held entry's node id start here
OVERFLOW = 1 << 60


def _home(parent: int, name: str) -> int:
    """The node id an entry gets unless another entry holds it (a hash collision)."""
    return hash((parent, name)) % SPAN + 2


class Inodes:
    """Node id <-> (parent's node id, name), with the kernel's lookup count of each node id.

    Why not a path per node id: the kernel holds one node id per entry it was handed (130,000 after ``ls -lR`` of
    10,000 rows and ``ls`` of 100,000), and a path string each was a quarter of the table's memory; a node keeps
    its parent's number and its name (the listing's own string), and its path is built when a request needs it.
    A node id is the hash of (parent, name) (``_home``), so no map from entries back to numbers is kept either:
    an entry whose hash another held entry has takes the next number of ``OVERFLOW`` instead, kept in
    ``_overflow``.  So an entry forgotten and looked up again gets the same number: the kernel held no inode of
    it meanwhile (its FORGET came), so the generation can stay 0.

    A node id is handed to the kernel only with a count taken first (``hold``), so a FORGET that races with the
    reply can't drop the entry in between; a reply that fails gives its counts back (``forget``).  Most node ids
    are held once (one readdirplus entry each): only counts above one are stored.  The kernel forgets a
    directory only after the entries under it (each of its dentries holds its parent's), so a held node's
    parents are held."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[int, str]] = {}  # node id -> (its parent's node id, its name); not ROOT
        self._overflow: dict[tuple[int, str], int] = {}  # (parent, name) -> node id, where not ``_home``
        self._counts: dict[int, int] = {}  # node id -> its count, where above 1 (a known node id: 1 if absent)
        self._next = itertools.count(OVERFLOW)
        self._lock = threading.Lock()

    def path(self, ino: int) -> str:
        """The path of a node id the kernel holds (ESTALE if it was forgotten: the kernel's mistake)."""
        names = []
        entries = self._entries
        node = ino
        try:
            while node != ROOT:
                node, name = entries[node]
                names.append(name)
        except KeyError:
            raise OSError(errno.ESTALE, f"node {ino} was forgotten") from None
        names.reverse()
        return "/" + "/".join(names)

    def child(self, parent: int, name: str) -> int | None:
        """The node id the kernel knows entry ``name`` of directory ``parent`` by, None if it holds none."""
        return self._child(parent, name, _home(parent, name))

    def _child(self, parent: int, name: str, home: int) -> int | None:
        known = self._entries.get(home)
        if known is not None and known[0] == parent and known[1] == name:
            return home
        return self._overflow.get((parent, name)) if self._overflow else None

    def find(self, path: str) -> int | None:
        """The node id the kernel knows ``path`` by, None if it holds none."""
        ino: int | None = ROOT
        for name in path.split("/"):
            if name and ino is not None:
                ino = self.child(ino, name)
        return ino

    def hold(self, parent: int, name: str) -> int:
        """The node id of entry ``name`` of directory ``parent`` (a new one if it has none), its lookup count
        raised by one."""
        home = _home(parent, name)
        with self._lock:
            ino = self._child(parent, name, home)
            if ino is not None:
                self._counts[ino] = self._counts.get(ino, 1) + 1
                return ino
            ino = home
            if ino in self._entries:  # another entry's: a collision
                ino = self._overflow[(parent, name)] = next(self._next)
            self._entries[ino] = (parent, name)
            return ino

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped ``count`` lookups of ``ino``: at zero, the entry is forgotten (never the root)."""
        with self._lock:
            left = self._counts.pop(ino, 1 if ino in self._entries or ino == ROOT else 0) - count
            if left > 1:
                self._counts[ino] = left
            if left > 0 or ino == ROOT:
                return
            entry = self._entries.pop(ino, None)
            if entry is not None and ino >= OVERFLOW and self._overflow.get(entry) == ino:
                del self._overflow[entry]

    def __len__(self) -> int:
        return len(self._entries) + 1


class Operations:
    """The path-based file system a ``Session`` carries, in the shape of djfs's own ``Operations``: mfusepy's
    signatures (``fi`` is mfusepy's ``fuse_file_info``, times in nanoseconds as with ``use_ns``) and djfs's
    listing pair ``directory``/``entry_attributes``, so that one class can serve the high-level API through
    mfusepy and this one.  Every method may raise ``OSError`` (its errno is the answer); the defaults answer what
    a read-only file system without the method should."""

    def init(self, conn: Any) -> None:
        """The kernel has connected (called on libfuse's thread): start threads and connections here.  ``conn``
        is libfuse's ``fuse_conn_info`` (mfusepy's type): flags such as splicing are asked for in ``conn.want``."""

    def destroy(self) -> None:
        """The session ends."""

    def getattr(self, path: str, fh: Any = None) -> Attributes:
        raise OSError(errno.ENOSYS, "getattr")

    def directory(self, path: str, offset: int = 0, keep: bool = True) -> Sequence[tuple[str, Any]]:
        """A directory's entries as (name, value), the same list for every ``offset`` the kernel reads it from
        (``.`` and ``..`` as the file system wants them)."""
        raise OSError(errno.ENOSYS, "directory")

    def entry_attributes(self, path: str, name: str, value: Any) -> Attributes:
        """The attributes of entry ``name`` of directory ``path``: its value, if ``directory`` gave attributes,
        else ``getattr``'s."""
        return value if isinstance(value, dict) else self.getattr(join(path, name))

    def fill_entry(self, entry: Any, path: str, name: str, value: Any) -> None:
        """Write ``entry_attributes`` into ``entry``, a ``struct stat`` (how the high-level API's readdirplus,
        ``operations.FileSystem``, asks for them; djfs's ``Operations`` does it from templates)."""
        ctypes.memset(ctypes.byref(entry), 0, ctypes.sizeof(entry))
        fill_stat(entry, self.entry_attributes(path, name, value))

    def open(self, path: str, fi: Any) -> int:
        """Set ``fi.fh`` for ``read``/``release`` and ``fi.keep_cache`` (the kernel may keep the pages it cached
        before)."""
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        """The bytes at ``offset``, unless the file system has ``read_buf(path, bufpp, size, offset, fi)``, as
        mfusepy calls it: store a ``fuse_bufvec`` made by ``callbacks.fd_bufvec`` or ``memory_bufvec`` in
        ``*bufpp`` and return 0 (or -errno); its segments are sent with ``fuse_reply_data``, then freed."""
        raise OSError(errno.ENOSYS, "read")

    def release(self, path: str, fi: Any) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {}

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        """An attribute's value; EOPNOTSUPP (the default) tells programs such as ``ls`` not to ask again."""
        raise OSError(errno.EOPNOTSUPP, name)

    def listxattr(self, path: str) -> list[str]:
        return []

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        raise OSError(errno.EROFS, name)

    def count_call(self, name: str) -> None:
        """One request reached Python (``lookup``, ``readdirplus`` ...): for counters, if wanted."""


class Session:
    """One mount of ``operations`` through libfuse's low-level API.

    ``keep_listings``: answer opendir ENOSYS, so the kernel keeps listings until told otherwise (see the module
    docstring); else opendir succeeds with no flags, as libfuse's high-level API does.  ``options`` are mount
    options (``ro``, ``fsname=...``, ``default_permissions`` ...); ``entry_timeout``/``attr_timeout`` how long
    the kernel keeps names and attributes; ``negative_timeout`` how long it keeps a name that is missing (a
    negative entry; 0: it asks again each time)."""

    def __init__(self, operations: Operations, mountpoint: str, options: Sequence[str] = (), *,
                 entry_timeout: float = 1.0, attr_timeout: float = 1.0, negative_timeout: float = 0.0,
                 keep_listings: bool = True, threads: bool = True, debug: bool = False,
                 encoding: str = "utf-8") -> None:
        self.operations = operations
        self.mountpoint = mountpoint
        self.options = list(options)
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.negative_timeout = negative_timeout
        self.keep_listings = keep_listings
        self.threads = threads
        self.debug = debug
        self.encoding = encoding
        self.inodes = Inodes()
        self._session: int | None = None  # libfuse's ``struct fuse_session *`` while it exists
        self._session_lock = threading.Lock()
        self._ops = LowLevelOps()
        read_buf = getattr(operations, "read_buf", None)  # djfs marks it libfuse_ignore when turned off
        self._read_buf = read_buf if callable(read_buf) and not getattr(read_buf, "libfuse_ignore", False) else None
        self._callbacks: list[Any] = []  # the ctypes callbacks, alive as long as libfuse may call them
        for name, prototype in _OPS:
            handler = getattr(self, f"_{name}", None)
            if prototype is not None and handler is not None:
                callback = prototype(self._guarded(name, handler))
                self._callbacks.append(callback)
                setattr(self._ops, name, callback)

    # -- life cycle ------------------------------------------------------------------------------------------

    def run(self, signals: bool = True) -> int:
        """Mount, serve until unmounted (or, with ``signals``, SIGINT/SIGTERM/SIGHUP), unmount: the loop's
        result (0, a signal number or -errno)."""
        session = _new_session(self._ops, self.options, self.debug)
        if not session:
            raise LibfuseError(f"fuse_session_new refused the options {self.options}")
        handlers = False
        python_sigint = None
        try:
            if signals:
                if threading.current_thread() is threading.main_thread():
                    # libfuse takes over only signals left at their default: Python's SIGINT handler would never
                    # run while this thread is in libfuse's loop (mfusepy does the same)
                    python_sigint = signal.signal(signal.SIGINT, signal.SIG_DFL)
                if _lib.fuse_set_signal_handlers(session) != 0:
                    raise LibfuseError("fuse_set_signal_handlers failed")
                handlers = True
            if _lib.fuse_session_mount(session, os.fsencode(self.mountpoint)) != 0:
                raise LibfuseError(f"can't mount {self.mountpoint}")
            with self._session_lock:
                self._session = session
            try:
                return self._loop(session)
            finally:
                with self._session_lock:
                    self._session = None
                _lib.fuse_session_unmount(session)
        finally:
            if handlers:
                _lib.fuse_remove_signal_handlers(session)
            if python_sigint is not None:
                signal.signal(signal.SIGINT, python_sigint)
            _lib.fuse_session_destroy(session)

    def _loop(self, session: int) -> int:
        if not self.threads:
            return _lib.fuse_session_loop(session)
        if hasattr(_lib, "fuse_session_loop_mt_312"):
            config = _lib.fuse_loop_cfg_create()
            try:
                return _lib.fuse_session_loop_mt_312(session, config)
            finally:
                _lib.fuse_loop_cfg_destroy(config)
        return _lib.fuse_session_loop_mt_32(session, ctypes.byref(LoopConfig32(0, 10)))

    def exit(self) -> None:
        """Ask the loop to stop (it returns after the next request, or at unmount)."""
        with self._session_lock:
            if self._session:
                _lib.fuse_session_exit(self._session)

    # -- telling the kernel to forget (never from inside a request about the same inode) ---------------------

    def invalidate_inode(self, path: str) -> int:
        """Make the kernel drop a path's attributes and cached data (a directory's: its kept listing): 0, or
        -ENOENT when the kernel holds no inode of it."""
        ino = self.inodes.find(path)
        if ino is None:
            return -errno.ENOENT
        with self._session_lock:
            if not self._session:
                return -errno.ESHUTDOWN
            return _lib.fuse_lowlevel_notify_inval_inode(self._session, ino, 0, 0)

    def invalidate_entry(self, parent: str, name: str) -> int:
        """Make the kernel drop the name ``name`` in directory ``parent`` (and the parent's attributes): 0, or
        -ENOENT when it holds no such name."""
        ino = self.inodes.find(parent)
        if ino is None:
            return -errno.ENOENT
        encoded = name.encode(self.encoding)
        with self._session_lock:
            if not self._session:
                return -errno.ESHUTDOWN
            return _lib.fuse_lowlevel_notify_inval_entry(self._session, ino, encoded, len(encoded))

    # -- requests ----------------------------------------------------------------------------------------------

    def _guarded(self, name: str, handler: Callable) -> Callable:
        """A request handler that answers exactly once: an ``OSError`` becomes its errno, anything else EIO."""
        count = self.operations.count_call
        answers = name not in ("init", "destroy", "forget", "forget_multi")

        def guarded(*args: Any) -> None:
            pin_thread_state()
            count(name)
            try:
                handler(*args)
            except OSError as error:
                if answers:
                    _lib.fuse_reply_err(args[0], error.errno or errno.EIO)
            except Exception:
                log.exception("%s failed", name)
                if answers:
                    _lib.fuse_reply_err(args[0], errno.EIO)
        return guarded

    def _init(self, userdata: Any, conn: Any) -> None:
        info = ctypes.cast(conn, ctypes.POINTER(mfusepy.fuse_conn_info)).contents
        info.want &= ~FUSE_CAP_READDIRPLUS_AUTO
        self.operations.init(info)

    def _destroy(self, userdata: Any) -> None:
        self.operations.destroy()

    def _entry(self, parent: int, name: str, attributes: Attributes | None, entry: EntryParam) -> None:
        """Fill a zeroed entry for entry ``name`` of directory ``parent``, its lookup count taken (give it back
        if the reply fails); ``attributes`` None: ``entry.attr`` was already filled (readdirplus, through
        ``fill_entry``)."""
        if attributes is not None:
            fill_stat(entry.attr, attributes)
        entry.ino = self.inodes.hold(parent, name)
        if not entry.attr.st_ino:
            entry.attr.st_ino = entry.ino
        entry.attr_timeout = self.attr_timeout
        entry.entry_timeout = self.entry_timeout

    def _lookup(self, req: int, parent: int, name: bytes) -> None:
        decoded = name.decode(self.encoding)
        path = join(self.inodes.path(parent), decoded)
        entry = EntryParam()
        try:
            attributes = self.operations.getattr(path)
        except OSError as error:
            if error.errno != errno.ENOENT or not self.negative_timeout:
                raise
            entry.entry_timeout = self.negative_timeout  # node id 0: the kernel keeps the name as missing
            _lib.fuse_reply_entry(req, ctypes.byref(entry))
            return
        self._entry(parent, decoded, attributes, entry)
        if _lib.fuse_reply_entry(req, ctypes.byref(entry)) != 0:
            self.inodes.forget(entry.ino, 1)

    def _forget(self, req: int, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)
        _lib.fuse_reply_none(req)

    def _forget_multi(self, req: int, count: int, forgets: Any) -> None:
        for index in range(count):
            self.inodes.forget(forgets[index].ino, forgets[index].nlookup)
        _lib.fuse_reply_none(req)

    def _getattr(self, req: int, ino: int, fi: Any) -> None:
        attributes = mfusepy.c_stat()
        fill_stat(attributes, self.operations.getattr(self.inodes.path(ino)))
        if not attributes.st_ino:
            attributes.st_ino = ino
        _lib.fuse_reply_attr(req, ctypes.byref(attributes), self.attr_timeout)

    def _open(self, req: int, ino: int, fi: Any) -> None:
        path = self.inodes.path(ino)
        self.operations.open(path, fi.contents)
        if _lib.fuse_reply_open(req, fi) != 0:  # interrupted: no release will come
            self.operations.release(path, fi.contents)

    def _read(self, req: int, ino: int, size: int, offset: int, fi: Any) -> None:
        path = self.inodes.path(ino)
        if self._read_buf is None:
            data = self.operations.read(path, size, offset, fi.contents)
            _lib.fuse_reply_buf(req, data, len(data))
            return
        vector = ctypes.c_void_p()
        result = self._read_buf(path, ctypes.pointer(vector), size, offset, fi.contents)
        if result < 0 or not vector.value:
            free_bufvec(vector.value or 0)
            raise OSError(-result if result < 0 else errno.EIO, path)
        try:
            _lib.fuse_reply_data(req, vector.value, FUSE_BUF_SPLICE_MOVE)
        finally:
            free_bufvec(vector.value)

    def _release(self, req: int, ino: int, fi: Any) -> None:
        self.operations.release(self.inodes.path(ino), fi.contents)
        _lib.fuse_reply_err(req, 0)

    def _opendir(self, req: int, ino: int, fi: Any) -> None:
        if self.keep_listings:
            _lib.fuse_reply_err(req, errno.ENOSYS)  # from now on: no opendir/releasedir, listings kept
        else:
            _lib.fuse_reply_open(req, fi)

    def _releasedir(self, req: int, ino: int, fi: Any) -> None:
        _lib.fuse_reply_err(req, 0)

    def _readdirplus(self, req: int, ino: int, size: int, offset: int, fi: Any) -> None:
        self._listing(req, ino, size, offset, plus=True)

    def _readdir(self, req: int, ino: int, size: int, offset: int, fi: Any) -> None:
        self._listing(req, ino, size, offset, plus=False)

    def _listing(self, req: int, ino: int, size: int, offset: int, plus: bool) -> None:
        """One buffer of a directory's listing from ``offset`` on (an entry's offset: its index + 1); with
        ``plus``, every entry but ``.`` and ``..`` with its attributes and a lookup count."""
        path = self.inodes.path(ino)
        operations = self.operations
        entries = operations.directory(path, offset)
        buffer = ctypes.create_string_buffer(size)
        start = ctypes.addressof(buffer)
        used = 0
        held: list[int] = []
        entry = EntryParam()
        for index in range(offset, len(entries)):
            name, value = entries[index]
            ctypes.memset(ctypes.byref(entry), 0, ctypes.sizeof(entry))
            if name in (".", ".."):  # no node id: the kernel keeps neither
                entry.attr.st_mode, entry.attr.st_ino = stat.S_IFDIR, ino
            elif plus:  # the same fill as the high-level readdirplus (djfs's: from templates)
                operations.fill_entry(entry.attr, path, name, value)
                self._entry(ino, name, None, entry)
            else:
                attributes = operations.entry_attributes(path, name, value)
                entry.attr.st_mode = attributes["st_mode"]
                entry.attr.st_ino = attributes.get("st_ino") or self.inodes.child(ino, name) or ino
            encoded = name.encode(self.encoding)
            if plus:
                needed = _lib.fuse_add_direntry_plus(req, start + used, size - used, encoded, ctypes.byref(entry),
                                                     index + 1)
            else:
                needed = _lib.fuse_add_direntry(req, start + used, size - used, encoded,
                                                ctypes.byref(entry.attr), index + 1)
            if needed > size - used:  # full: this entry goes in the next buffer
                if entry.ino:
                    self.inodes.forget(entry.ino, 1)
                break
            used += needed
            if entry.ino:
                held.append(entry.ino)
        if _lib.fuse_reply_buf(req, start, used) != 0:
            for number in held:
                self.inodes.forget(number, 1)

    def _statfs(self, req: int, ino: int) -> None:
        result = mfusepy.c_statvfs()
        for key, value in self.operations.statfs(self.inodes.path(ino) if ino else "/").items():
            setattr(result, key, value)
        _lib.fuse_reply_statfs(req, ctypes.byref(result))

    def _reply_sized(self, req: int, data: bytes, size: int) -> None:
        """getxattr/listxattr: the size asked for (``size`` 0), the bytes, or ERANGE."""
        if size == 0:
            _lib.fuse_reply_xattr(req, len(data))
        elif len(data) > size:
            _lib.fuse_reply_err(req, errno.ERANGE)
        else:
            _lib.fuse_reply_buf(req, data, len(data))

    def _getxattr(self, req: int, ino: int, name: bytes, size: int) -> None:
        value = self.operations.getxattr(self.inodes.path(ino), name.decode(self.encoding))
        self._reply_sized(req, value, size)

    def _listxattr(self, req: int, ino: int, size: int) -> None:
        names = self.operations.listxattr(self.inodes.path(ino))
        self._reply_sized(req, b"".join(name.encode(self.encoding) + b"\0" for name in names), size)

    def _setxattr(self, req: int, ino: int, name: bytes, value: int, size: int, flags: int) -> None:
        data = ctypes.string_at(value, size) if size else b""
        self.operations.setxattr(self.inodes.path(ino), name.decode(self.encoding), data, flags)
        _lib.fuse_reply_err(req, 0)
