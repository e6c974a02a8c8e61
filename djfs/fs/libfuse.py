"""Which libfuse the mount uses: libfuse 3, else libfuse 2, unless chosen (``-o libfuse=2|3`` or the environment).

mfusepy loads its library once, when it is first imported: ``$FUSE_LIBRARY_PATH``, else
``find_library($FUSE_LIBRARY_NAME)``, else ``find_library('fuse')`` (libfuse **2**) and only then ``'fuse3'``.
Left alone, it would switch to libfuse 2 as soon as a package pulls in libfuse2 (AppImage support does, on many
desktops).  So djfs never imports mfusepy directly: ``load_mfusepy`` imports it after choosing, in this order:

1. ``-o libfuse=2`` or ``-o libfuse=3`` (``version``): that major version, or an error if it isn't installed;
2. ``$FUSE_LIBRARY_PATH`` / ``$FUSE_LIBRARY_NAME`` if the user set them (mfusepy's own variables, honoured as is);
3. libfuse 3 (``libfuse3.so.3``), else libfuse 2 (``libfuse.so.2``).

The variables are set only for the import and restored afterwards, so nothing the daemon starts inherits the
choice.  Nothing in djfs imports mfusepy but through here (``operations`` and ``mount.run`` both do).

Also here, what the loaded libfuse can do on this host: tell the kernel to forget a path (``can_invalidate``),
and splice replies (``pipe_holds``: libfuse 3 splices a reply only through a pipe that holds all of it).
"""

from __future__ import annotations

import ctypes.util
import fcntl
import importlib
import os
import sys
from types import ModuleType

from ..errors import DjfsError

PATH_VARIABLE = "FUSE_LIBRARY_PATH"
NAME_VARIABLE = "FUSE_LIBRARY_NAME"
#: major version -> (name for ctypes.util.find_library, the Debian/Ubuntu package that provides it)
LIBRARIES = {3: ("fuse3", "libfuse3-3 (or fuse3)"), 2: ("fuse", "libfuse2")}
VERSIONS = tuple(LIBRARIES)  # preference order
#: the pipe libfuse 3 needs to splice a read's reply: the reply (up to a 1 MiB read and its header) and a page for
#: each of its buffers; libfuse copies the reply instead when its pipe can't be grown to that
SPLICE_PIPE = (1 << 20) + (64 << 10)
PIPE_MAX_SIZE = "/proc/sys/fs/pipe-max-size"


class LibfuseError(DjfsError):
    """The libfuse asked for is not installed, or another one is already loaded."""


def parse_version(text: str | int) -> int:
    """``2`` or ``3`` (the ``libfuse=`` mount option)."""
    version = int(text)
    if version not in LIBRARIES:
        raise ValueError("libfuse is 2 or 3")
    return version


def find(version: int) -> str | None:
    """The library to load for a libfuse major version (a soname such as ``libfuse3.so.3``), None if missing."""
    return ctypes.util.find_library(LIBRARIES[version][0])


def resolve(version: int | None = None) -> str | None:
    """What ``load_mfusepy(version)`` will hand mfusepy: a library, or None to leave the user's variables be."""
    if version is not None:
        library = find(version)
        if library is None:
            raise LibfuseError(f"libfuse {version} is not installed (apt-get install {LIBRARIES[version][1]})")
        return library
    if os.environ.get(PATH_VARIABLE) or os.environ.get(NAME_VARIABLE):
        return None
    for candidate in VERSIONS:
        library = find(candidate)
        if library is not None:
            return library
    raise LibfuseError("libfuse is not installed (apt-get install fuse3)")


def load_mfusepy(version: int | None = None) -> ModuleType:
    """mfusepy, with the library chosen as the module docstring says (``version``: 2, 3 or None)."""
    module = sys.modules.get("mfusepy")
    if module is None:
        library = resolve(version)
        saved = {name: os.environ.get(name) for name in (PATH_VARIABLE, NAME_VARIABLE)}
        try:
            if library is not None:
                os.environ[PATH_VARIABLE] = library
                os.environ.pop(NAME_VARIABLE, None)
            module = importlib.import_module("mfusepy")
        except (OSError, AttributeError) as error:  # a library that doesn't load, or of a version mfusepy refuses
            chosen = library or os.environ.get(PATH_VARIABLE) or os.environ.get(NAME_VARIABLE)
            raise LibfuseError(f"can't load libfuse {chosen}: {error}") from None
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    if version is not None and module.fuse_version_major != version:
        raise LibfuseError(f"libfuse {version} was asked for, but this process already uses {describe(module)}")
    return module


def can_invalidate(module: ModuleType) -> bool:
    """Whether the loaded libfuse lets a high-level file system tell the kernel to forget a path
    (``fuse_invalidate_path``, libfuse >= 3.1; libfuse 2 has no such call)."""
    return module.fuse_version_major >= 3 and hasattr(getattr(module, "_libfuse", None), "fuse_invalidate_path")


def describe(module: ModuleType) -> str:
    """``libfuse 3.14 (libfuse3.so.3)``: which library mfusepy loaded."""
    return (f"libfuse {module.fuse_version_major}.{module.fuse_version_minor} "
            f"({getattr(module, '_libfuse_path', '?')})")


def pipe_holds(size: int) -> bool:
    """Whether this process can grow a pipe to ``size`` bytes: Linux caps pipes at ``fs.pipe-max-size`` (1 MiB by
    default) unless the process has ``CAP_SYS_RESOURCE``, so libfuse's splicing of 1 MiB replies (``-o splice``)
    depends on it."""
    reader, writer = os.pipe()
    try:
        fcntl.fcntl(reader, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
        return True
    except OSError:
        return False
    finally:
        os.close(reader)
        os.close(writer)


def pipe_max_size() -> int | None:
    """``fs.pipe-max-size`` (bytes), None where it can't be read."""
    try:
        with open(PIPE_MAX_SIZE) as file:
            return int(file.read())
    except (OSError, ValueError):
        return None
