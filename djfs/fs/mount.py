"""Mount options, the daemon, mounting in the background, and unmounting (including stale mounts).

``djfs mount MOUNTPOINT [-f] [-o opt[,opt...]] [--schema NAME]...`` accepts, in ``-o``, the options below plus
libfuse's mount options (``allow_other``, ``allow_root``, ``max_read=``, ``debug`` …), which are passed through
(with the low-level API, only options libfuse's session takes: anything else is refused, naming it).

With libfuse 3, the mount is served through libfuse's low-level API (``djfs.fs.carrier``): the kernel keeps
directory listings, and the watcher tells it to forget those whose rows changed.  With libfuse 2, or
``fuse_api=high``, through mfusepy's high-level API (``operations.FileSystem``), where every listing reaches the
daemon.

=====================  ==========  ==============================================================================
option                 default     meaning
=====================  ==========  ==============================================================================
schemas=a:b            all         only these schemas (``:``-separated; also ``--schema``)
cache=DIR              config      the disk cache (``cache-location``; else ``$XDG_CACHE_HOME/djfs``)
cache_size=SIZE        config      its bound (``cache-size``), e.g. ``50GiB``
uid=, gid=             the user    owner shown for every file and directory
file_mode=, dir_mode=  0444, 0555  permission bits shown (octal)
entry_timeout=         60, or 1    seconds the kernel trusts a name (libfuse option): 60 with libfuse 3, whose
                                   kernel entries djfs invalidates when their table changes; 1 with libfuse 2
attr_timeout=          60, or 1    seconds the kernel trusts attributes (libfuse option), as entry_timeout
negative_timeout=      0           seconds the kernel remembers a missing name (libfuse option)
listing_timeout=       1           seconds between two checks that a table is unchanged (listings and rows are
                                   reused while it is); new, changed and deleted rows show up or vanish within
                                   1.5 x listing_timeout (libfuse 3: the kernel is told to forget what changed),
                                   listing_timeout + entry_timeout with libfuse 2
heading_timeout=       30          seconds a table's heading is reused
catalog_timeout=       10          seconds a path lookup may reuse the lists of schemas and tables (listing them
                                   refreshes them); new tables show up in listings within listing_timeout
block_size=            256KiB      unit of reads from the store and of partial caching (a multiple of 256KiB)
part_size=             8MiB        one ranged GET of a sequential reader's read-ahead
whole_max=             64MiB       objects up to this size are cached whole (verified) on first open
readahead=             8           parts a sequential reader's read-ahead may have in flight ahead of it
prefetch_threads=      8           ranged GETs of read-ahead in flight at once (all readers together)
block_memory=          256MiB      blocks kept in memory (also those waiting for their disk-cache write)
store_timeout=         config      seconds per store request (``store-timeout``)
store_retries=         config      retries per store request (``store-retries``)
failure_ttl=           1           seconds a failed block read fails fast before the store is asked again
db_timeout=            10          seconds per SQL query
sql_threads=           4           database connections of the mount
page_size=             10000       rows per listing query (with every column their files need)
read_buf=              1           let libfuse read cache files itself (0: copy through Python)
splice=                0           splice cache-file data into /dev/fuse (libfuse 3; needs pipes over 1 MiB:
                                   fs.pipe-max-size or CAP_SYS_RESOURCE, else a warning and copies)
read_ahead_kb=         1024        kernel read-ahead of the mount (root only; 0 keeps the kernel's 128)
libfuse=               3, else 2   the libfuse to use, 2 or 3; without it ``$FUSE_LIBRARY_PATH`` /
                                   ``$FUSE_LIBRARY_NAME`` are honoured if set (see ``djfs.fs.libfuse``)
fuse_api=              low, or     libfuse's API: ``low`` (libfuse 3 only; listings kept by the kernel) or
                       high        ``high`` (mfusepy; the only one with libfuse 2)
=====================  ==========  ==============================================================================

Credentials come only from djfs's configuration (``DJ_HOST``/``DJ_USER``/``DJ_PASS``, ``dj_local_conf.json`` or
``$DJ_CONFIG``), never from the command line: argv is visible to every user of the host.

In the background (the default), ``djfs mount`` checks the mount point, the database and FUSE, starts the daemon
as ``python -m djfs.cli mount -f ...`` in its own session, and returns once the file system is mounted (or
prints why it is not).  Spawning a fresh interpreter rather than letting libfuse fork this one keeps Python's
runtime sane; in the daemon, libfuse's ``init`` is still what starts every thread and connection.
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DjfsError
from ..hashing import CHECK_BLOCK
from ..settings import parse_size
from .libfuse import (NAME_VARIABLE, PATH_VARIABLE, LibfuseError, can_invalidate, describe, load_mfusepy,
                      parse_version, resolve)

log = logging.getLogger(__name__)

KiB = 1 << 10
MiB = 1 << 20
START_TIMEOUT = 30.0
#: the kernel's timeouts for names and attributes when djfs invalidates them as their table changes (libfuse 3):
#: long enough that a second ``ls -lR``, ``find`` or ``du`` of a big table a while later costs no lookup per
#: entry, short enough that a table stops being probed a minute after its last use (``djfs.fs.watch``)
KERNEL_TIMEOUT = 60.0
#: ... and without invalidation (libfuse 2): what the kernel holds is as stale as this
SHORT_TIMEOUT = 1.0


class MountError(DjfsError):
    """Mounting or unmounting failed; the message says why and what to do."""


def _octal(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o777:
        raise ValueError("a mode is three octal digits")
    return value


def _flag(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 0 or 1")


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(parse_size(text)) if kind is int else kind(text)
        if value <= 0:
            raise ValueError("must be positive")
        return value
    return parse


FUSE_APIS = ("low", "high")


def _fuse_api(text: str) -> str:
    if text not in FUSE_APIS:
        raise ValueError("fuse_api is low or high")
    return text


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("can't be negative")
    return value


@dataclass
class MountOptions:
    """Everything the daemon needs besides djfs's configuration (see the module docstring)."""

    schemas: list[str] | None = None
    cache: str | None = None
    cache_size: int | None = None
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    file_mode: int = 0o444
    dir_mode: int = 0o555
    entry_timeout: float | None = None   # None: KERNEL_TIMEOUT if the kernel can be told to forget, else SHORT_TIMEOUT
    attr_timeout: float | None = None
    negative_timeout: float = 0.0
    listing_timeout: float = 1.0
    heading_timeout: float = 30.0
    catalog_timeout: float = 10.0
    block_size: int = 256 * KiB
    part_size: int = 8 * MiB
    whole_max: int = 64 * MiB
    readahead: int = 8
    prefetch_threads: int = 8
    block_memory: int = 256 * MiB
    store_timeout: float | None = None
    store_retries: int | None = None
    failure_ttl: float = 1.0
    db_timeout: float = 10.0
    sql_threads: int = 4
    page_size: int = 10_000
    read_buf: bool = True
    splice: bool = False
    read_ahead_kb: int = 1024
    libfuse: int | None = None   # major version; None: the environment's choice, else 3, else 2
    fuse_api: str | None = None  # "low" or "high"; None: low with libfuse 3, high with libfuse 2
    fuse: dict[str, Any] = field(default_factory=dict)   # passed through to libfuse

    _PARSERS = {
        "schemas": lambda text: [name for name in text.split(":") if name],
        "cache": lambda text: os.path.abspath(os.path.expanduser(text)),
        "cache_size": parse_size, "uid": int, "gid": int, "file_mode": _octal, "dir_mode": _octal,
        "entry_timeout": _non_negative_float, "attr_timeout": _non_negative_float,
        "negative_timeout": _non_negative_float, "listing_timeout": _non_negative_float,
        "heading_timeout": _non_negative_float, "catalog_timeout": _non_negative_float,
        "block_size": _positive(int), "part_size": _positive(int), "whole_max": parse_size,
        "readahead": _positive(int), "prefetch_threads": _positive(int), "block_memory": parse_size,
        "store_timeout": _positive(float), "store_retries": int,
        "failure_ttl": _non_negative_float, "db_timeout": _positive(float), "sql_threads": _positive(int),
        "page_size": _positive(int), "read_buf": _flag, "splice": _flag, "read_ahead_kb": int,
        "libfuse": parse_version, "fuse_api": _fuse_api,
    }
    #: libfuse options djfs sets itself or that contradict a read-only view
    _REFUSED = {"rw": "the mount is read-only", "fsname": "set by djfs", "subtype": "set by djfs",
                "use_ino": "set by djfs", "ro": "always set"}

    @classmethod
    def parse(cls, option_strings: list[str], schemas: list[str] | None = None) -> "MountOptions":
        """Options from ``-o`` strings (``a=1,b``); raises MountError naming a bad option."""
        options = cls()
        for text in option_strings:
            for item in filter(None, (part.strip() for part in text.split(","))):
                name, has_value, value = item.partition("=")
                if name.lower() in ("password", "passwd", "pass", "dj_pass", "secret", "token", "user_password"):
                    raise MountError("credentials never go on the command line (every user can read it): set "
                                     "DJ_USER/DJ_PASS in the environment or use dj_local_conf.json / $DJ_CONFIG")
                if name in cls._REFUSED:
                    if name == "ro":
                        continue
                    raise MountError(f"mount option {name!r} is not accepted: {cls._REFUSED[name]}")
                parser = cls._PARSERS.get(name)
                if parser is None:
                    options.fuse[name] = value if has_value else True
                    continue
                if not has_value and name not in ("read_buf", "splice"):
                    raise MountError(f"mount option {name!r} needs a value ({name}=...)")
                try:
                    setattr(options, name, parser(value if has_value else "1"))
                except (TypeError, ValueError) as error:
                    raise MountError(f"bad value {value!r} for mount option {name!r}: {error}") from None
        if schemas:
            options.schemas = (options.schemas or []) + list(schemas)
        if options.block_size > 256 * MiB or options.block_size % CHECK_BLOCK:
            raise MountError(f"block_size must be a multiple of {CHECK_BLOCK >> 10}KiB, at most 256MiB")
        return options

    def describe(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def api(self, libfuse_major: int) -> str:
        """The libfuse API serving the mount with this libfuse (see the module docstring)."""
        if libfuse_major < 3:
            if self.fuse_api == "low":
                raise MountError("fuse_api=low needs libfuse 3 (libfuse 2's low-level API is not supported)")
            return "high"
        return self.fuse_api or "low"

    def low_level_options(self) -> list[str]:
        """The user's libfuse options (``fuse``) as ``name`` or ``name=value``, for a low-level session."""
        return [name if value is True else f"{name}={value}" for name, value in self.fuse.items()]


# -- where things go ----------------------------------------------------------------------------------------


def default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "djfs")


def default_log(mountpoint: str) -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    name = mountpoint.strip("/").replace("/", "_") or "root"
    return os.path.join(base, "djfs", f"mount-{name}.log")


def _apply_config(config: Any, options: MountOptions) -> None:
    """The daemon's view of djfs.config: the mount's cache and store limits win over the file's."""
    if options.cache:
        config["cache-location"] = options.cache
    elif not config["cache-location"]:
        config["cache-location"] = default_cache()
    config["cache-location"] = os.path.abspath(os.path.expanduser(config["cache-location"]))
    if options.cache_size is not None:
        config["cache-size"] = options.cache_size
    if options.store_timeout is not None:
        config["store-timeout"] = options.store_timeout
    if options.store_retries is not None:
        config["store-retries"] = options.store_retries


# -- mount tables -------------------------------------------------------------------------------------------


def _unescape(field_text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field_text):
        code = field_text[i + 1:i + 4]
        if field_text[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def mount_entry(mountpoint: str) -> tuple[str, str] | None:
    """(file system type, source) of what is mounted at ``mountpoint``, from /proc/self/mountinfo; None if nothing.

    Works for a dead FUSE endpoint too, where ``os.path.ismount`` says False because stat fails.
    """
    target = os.path.abspath(mountpoint)
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            for line in table:
                left, _, right = line.partition(" - ")
                fields = left.split(" ")
                if len(fields) >= 5 and _unescape(fields[4]) == target:
                    kind = right.split(" ")
                    found = (kind[0], _unescape(kind[1]) if len(kind) > 1 else "")  # the last one is on top
    except OSError:
        return None
    return found


def is_mounted(mountpoint: str) -> bool:
    return mount_entry(mountpoint) is not None


def _stat_with_timeout(path: str, timeout: float = 3.0) -> OSError | None | str:
    """Ask a mount's daemon (statvfs is never answered from the kernel's caches) without hanging on an
    unresponsive one: the error, None (it answered) or 'timeout'."""
    result: list[Any] = []

    def probe() -> None:
        try:
            os.statvfs(path)
            result.append(None)
        except OSError as error:
            result.append(error)
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else "timeout"


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


# -- unmounting ---------------------------------------------------------------------------------------------


def unmount(mountpoint: str, lazy: bool = False) -> str:
    """Unmount a djfs (FUSE) mount; clears a stale mount whose daemon died.  Returns what was done."""
    target = os.path.abspath(mountpoint)
    entry = mount_entry(target)
    if entry is None:
        raise MountError(f"{target} is not mounted")
    if not entry[0].startswith("fuse"):
        raise MountError(f"{target} is a {entry[0]} mount, not a FUSE one: djfs leaves it alone")
    probe = _stat_with_timeout(target)
    dead = probe == "timeout" or (isinstance(probe, OSError) and probe.errno in (107, 5))  # ENOTCONN, EIO
    fusermount = _fusermount()
    attempts: list[list[str]] = []
    if not lazy and not dead:
        attempts.append([fusermount, "-u", target] if fusermount else ["umount", target])
    else:
        if fusermount:
            attempts.append([fusermount, "-u", "-z", target])
        attempts.append(["umount", "-l", target])
    errors = []
    for command in attempts:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as error:
            errors.append(f"{command[0]}: {error}")
            continue
        if result.returncode == 0 and not is_mounted(target):
            return "lazily unmounted a stale mount" if dead else ("lazily unmounted" if lazy else "unmounted")
        errors.append((result.stderr or result.stdout).strip() or f"{command[0]} exited {result.returncode}")
    hint = "" if lazy or dead else " (busy? close the files open under it, or use --lazy)"
    raise MountError(f"can't unmount {target}: {'; '.join(errors)}{hint}")


# -- mounting -----------------------------------------------------------------------------------------------


def preflight(mountpoint: str, config: Any) -> None:
    """Fail early, at the terminal, for what would otherwise only show in the daemon's log."""
    if is_mounted(mountpoint):
        probe = _stat_with_timeout(mountpoint)
        if probe is not None:
            raise MountError(f"{mountpoint} is a stale mount (its daemon died): run `djfs umount {mountpoint}`")
        raise MountError(f"{mountpoint} is already mounted")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not an existing directory")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse) or, in a container, "
                         "pass the device (--device /dev/fuse)")
    if os.geteuid() != 0 and _fusermount() is None:
        raise MountError("fusermount3 not found: install fuse3 (apt-get install fuse3)")
    cache = config["cache-location"]
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as error:
        raise MountError(f"can't create the cache directory {cache}: {error.strerror or error}") from None
    if not os.access(cache, os.W_OK | os.X_OK):
        raise MountError(f"the cache directory {cache} is not writable")
    from ..connection import Connection
    connection = Connection.from_config(config)
    try:
        connection.query("SELECT 1")
    except DjfsError as error:
        raise MountError(f"can't reach the database: {error}") from None
    finally:
        connection.close()


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters
HEAP_KEEP = 64 * MiB  # free memory glibc may keep at the top of a heap for the next buffers
ARENAS = 2            # glibc heaps shared by the daemon's threads (default: 8 per core)


def _tune_malloc(block_size: int) -> None:
    """Serve the daemon's big, short-lived buffers (blocks, read replies) from glibc's heap, and reuse them.

    Allocations above glibc's mmap threshold get fresh mappings, and every fresh page costs a fault and a zeroing
    (dearer still in a VM): on a cold 1 GiB read from S3, page faults and munmap were half the daemon's CPU
    (perf), and keeping these buffers in the heap halved the daemon's CPU time (scripts/bench_mount.py).  A
    heap keeps at most ``HEAP_KEEP`` of free memory at its top; the block map's budget bounds the rest.  With
    glibc's default of one heap per thread up to 8 per core, freed buffers sat in many heaps: under the load test
    the RSS peaked at 590-680 MiB, and at 415 MiB with ``ARENAS`` heaps, at the same speed.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 2 * max(block_size, MiB) + 64 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, HEAP_KEEP)
        libc.mallopt(M_ARENA_MAX, ARENAS)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _raise_open_files_limit() -> None:
    """Let the daemon hold as many descriptors as the hard limit allows: open handles keep the cache files they
    serve by descriptor open (up to ``reader.FD_SEGMENTS`` each), and many distributions start processes with a
    soft limit of 1024.  Running out is not an error (the read is then copied), only slower."""
    import resource
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    except (ValueError, OSError) as error:
        log.info("open files limit left as it is: %s", error)


def uses_s3(config: Any) -> bool:
    """Whether any store of the configuration is on S3 (djfs's ``external-location[-<store>]``, DataJoint's
    ``stores``)."""
    locations = [config[key] for key in config if key.startswith("external-location")]
    return any(isinstance(location, str) and location.startswith("s3") for location in locations) or \
        any(spec.get("protocol") == "s3" for spec in (config["stores"] or {}).values())


def _preload_s3(config: Any) -> None:
    """Load boto3 and botocore's S3 model before the mount appears (0.1–0.5 s on a loaded machine), when a store is
    on S3: else a fresh mount's first reads wait for it (measured: the first 8 random reads of a fresh mount
    waited 0.2–0.45 s for their client).  No store's client is made, no connection opened, no thread started."""
    if not uses_s3(config):
        return
    started = time.monotonic()
    try:
        from ..stores import s3
        s3.preload()
    except Exception as error:  # only an optimisation: the first client loads it then
        log.info("S3 preload skipped: %s", error)
        return
    log.info("boto3 and botocore's S3 model loaded in %.2f s", time.monotonic() - started)


def run(mountpoint: str, options: MountOptions, *, debug: bool = False) -> int:
    """The daemon, in the foreground: returns when the file system is unmounted."""
    from .. import config

    mfusepy = load_mfusepy(options.libfuse)  # before operations imports it: see djfs.fs.libfuse
    from .operations import FileSystem, Operations

    api = options.api(mfusepy.fuse_version_major)
    _apply_config(config, options)
    _tune_malloc(options.block_size)
    _raise_open_files_limit()
    default_timeout = KERNEL_TIMEOUT if api == "low" or can_invalidate(mfusepy) else SHORT_TIMEOUT
    options = dataclasses.replace(options, entry_timeout=_or(options.entry_timeout, default_timeout),
                                  attr_timeout=_or(options.attr_timeout, default_timeout))
    operations = Operations(options, config, mountpoint)
    if not options.read_buf:
        operations.read_buf = _ignored  # type: ignore[method-assign]
    # fsname is what `mount` shows as the source; a bare word could be taken for a path by fusermount
    fsname = "djfs:" + (":".join(options.schemas) if options.schemas else "all")
    _preload_s3(config)
    if api == "low":
        from . import carrier
        log.info("mounting %s with %s, low-level API (cache %s; kernel timeouts %g s, listings kept by the "
                 "kernel, invalidated on change)", mountpoint, describe(mfusepy), config["cache-location"],
                 options.entry_timeout)
        session = carrier.session(operations, mountpoint,
                                  ["ro", f"fsname={fsname}", "subtype=djfs", "default_permissions",
                                   *options.low_level_options()],
                                  entry_timeout=options.entry_timeout, attr_timeout=options.attr_timeout,
                                  negative_timeout=options.negative_timeout, debug=debug)
        result = session.run()
        log.info("unmounted %s (%s)", mountpoint, result)
        return 0
    fuse_options: dict[str, Any] = dict(
        foreground=True, ro=True, fsname=fsname, subtype="djfs", default_permissions=True, use_ino=True,
        entry_timeout=options.entry_timeout, attr_timeout=options.attr_timeout,
        negative_timeout=options.negative_timeout)
    if mfusepy.fuse_version_major == 2:
        fuse_options["nonempty"] = True  # as libfuse 3 does: mount over a directory that holds files
    fuse_options.update(options.fuse)
    if debug:
        fuse_options["debug"] = True
    log.info("mounting %s with %s (cache %s; kernel timeouts %g s%s)", mountpoint, describe(mfusepy),
             config["cache-location"], options.entry_timeout,
             ", invalidated on change" if can_invalidate(mfusepy) else "")
    try:
        FileSystem(operations, mountpoint, raw_fi=True, **fuse_options)
    except RuntimeError as error:
        if error.args != (LOOP_ENDED,) or mfusepy.fuse_version_major < 3:
            raise
        # unmounted: as the low-level daemon, which exits 0 whatever its loop's result (a signal's number)
        log.info("unmounted %s (libfuse's loop ended by a signal)", mountpoint)
        return 0
    log.info("unmounted %s", mountpoint)
    return 0


#: what libfuse 3's ``fuse_main_real`` returns, and mfusepy raises as ``RuntimeError(8)``, when its loop ended
#: with a result: the number of the signal (SIGINT, SIGTERM, SIGHUP) its handlers caught, or a failed read of
#: ``/dev/fuse``; it has unmounted by then (libfuse 2 returns 0 after a signal)
LOOP_ENDED = 8


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _ignored(*_: Any) -> int:
    return 0


_ignored.libfuse_ignore = True  # type: ignore[attr-defined]


def setup_logging(log_file: str | None, debug: bool) -> None:
    handler: logging.Handler
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s djfs[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def mount(mountpoint: str, option_strings: list[str], schemas: list[str] | None = None, *,
          foreground: bool = False, log_file: str | None = None, debug: bool = False) -> int:
    """``djfs mount``: check, then run the daemon here (-f) or start it in the background and wait for it."""
    from .. import config

    target = os.path.abspath(mountpoint)
    options = MountOptions.parse(option_strings, schemas)
    try:
        resolve(options.libfuse)  # a libfuse that isn't installed is said here, not in the daemon's log
    except LibfuseError as error:
        raise MountError(str(error)) from None
    check_api(options)
    _apply_config(config, options)
    preflight(target, config)
    if foreground:
        setup_logging(log_file, debug)
        return run(target, options, debug=debug)
    log_file = os.path.abspath(log_file or default_log(target))
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    command = [sys.executable, "-m", "djfs.cli", "mount", "-f", target, "--log-file", log_file]
    for text in option_strings:
        command += ["-o", text]
    for name in schemas or []:
        command += ["--schema", name]
    if debug:
        command.append("--debug")
    with open(log_file, "ab") as log_output:
        start = log_output.tell()
        daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_output, stderr=log_output,
                                  start_new_session=True, close_fds=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if is_mounted(target):
            return 0
        if daemon.poll() is not None:
            raise MountError(f"the djfs daemon exited ({daemon.returncode}) before mounting {target}:\n"
                             + _tail(log_file, start))
        time.sleep(0.05)
    daemon.terminate()
    raise MountError(f"{target} was not mounted within {START_TIMEOUT:.0f} s; see {log_file}:\n"
                     + _tail(log_file, start))


def check_api(options: MountOptions) -> None:
    """Say at the terminal, not in the daemon's log, what the API the mount would use can't do: libfuse 2 with
    ``fuse_api=low``, or a ``-o`` option libfuse's low-level session does not take."""
    library = resolve(options.libfuse)
    if library is None:  # the user's variables choose, as they will for the daemon's mfusepy (not loaded here)
        library = os.environ.get(PATH_VARIABLE) or ctypes.util.find_library(os.environ.get(NAME_VARIABLE, "")) or ""
    major = options.libfuse or (3 if "fuse3" in library else 2)
    if options.api(major) != "low":
        return
    from .lowlevel import refused_options
    refused = refused_options(options.low_level_options())
    if refused:
        raise MountError(f"mount option{'s' if len(refused) > 1 else ''} {', '.join(refused)} not accepted: not "
                         "a libfuse mount option (djfs's own are listed in the documentation of djfs.fs.mount; "
                         "libfuse's high-level options need -o fuse_api=high)")


def _tail(path: str, start: int, lines: int = 20) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(start)
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def daemon_pid(mountpoint: str) -> int | None:
    """The pid of the djfs daemon serving ``mountpoint`` (tests, diagnostics), from the process table."""
    target = os.path.abspath(mountpoint)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"djfs.cli" in argv and b"mount" in argv and os.fsencode(target) in argv:
            return int(entry.name)
    return None
