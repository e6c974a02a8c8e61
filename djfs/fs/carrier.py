"""djfs's ``Operations`` carried through libfuse 3's low-level API (``lowlevel.Session``): the libfuse 3 mount.

Why: through the low-level API the kernel keeps directory listings in its page cache (opendir answered ENOSYS,
see ``djfs.fs.lowlevel``), so a second ``ls -lR`` of a table reaches the daemon not at all, where mfusepy's
high-level API costs a call per directory.  The same ``Operations`` serve both APIs (mfusepy's signatures); this
adapter only renames the few calls that differ, and hands the watcher (``djfs.fs.watch``) the session's
invalidation: a changed path's inode (its attributes, data and kept listing) and, for an entry that is gone
(``watch.Gone``), its name too, so that it answers ENOENT at once.  Listings of the root and of schemas are
recorded for the watcher (``Holdings.directory``): a new table or schema shows up although the kernel keeps the
listing.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from . import lowlevel
from .operations import STATS_XATTR, Operations
from .watch import Gone

#: what ``user.djfs.stats`` says of the API serving the mount (the high-level ``FileSystem`` says nothing)
API = "low"


class Carrier(lowlevel.Operations):
    """``lowlevel.Operations`` made of djfs's ``Operations``; ``session`` is set once the session exists."""

    def __init__(self, operations: Operations) -> None:
        self.operations = operations
        self.session: lowlevel.Session | None = None
        # the same methods: mfusepy's signatures (``read_buf`` may be the ``libfuse_ignore`` stand-in of read_buf=0)
        self.getattr = operations.getattr  # type: ignore[method-assign]
        self.entry_attributes = operations.entry_attributes  # type: ignore[method-assign]
        self.fill_entry = operations.fill_entry  # type: ignore[method-assign]
        self.open = operations.open  # type: ignore[method-assign]
        self.read = operations.read  # type: ignore[method-assign]
        self.read_buf = operations.read_buf
        self.release = operations.release  # type: ignore[method-assign]
        self.statfs = operations.statfs  # type: ignore[method-assign]
        self.listxattr = operations.listxattr  # type: ignore[method-assign]
        self.setxattr = operations.setxattr  # type: ignore[method-assign]
        self.count_call = operations.count_call  # type: ignore[method-assign]

    def init(self, conn: Any) -> None:
        """Before anything starts: the watcher gets the session's invalidation; then djfs's init (threads,
        connections, splice flags in ``conn.want``, read-ahead, warm-up)."""
        self.operations.kernel_invalidation(self.invalidate, names=True)
        self.operations.init_with_config(conn, None)

    def destroy(self) -> None:
        self.operations.destroy("/")

    def directory(self, path: str, offset: int = 0, keep: bool = True) -> Sequence[tuple[str, Any]]:
        entries = self.operations.directory(path, offset, keep)
        holdings = self.operations.tree.holdings
        if offset == 0 and holdings is not None:
            if path.count("/") == 1:  # the root or a schema: its schemas or tables, for the watcher
                holdings.directory(path, (name for name, _ in entries if name not in (".", "..")))
            elif any(getattr(spec, "transient", False) for _, spec in entries):
                holdings.passing(path)  # e.g. a view unknown while its store is down: listed again later
        return entries

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self.operations.getxattr(path, name, position)
        if path == "/" and name == STATS_XATTR:
            value = json.dumps({**json.loads(value), "fuse_api": API}, sort_keys=True).encode()
        return value

    def invalidate(self, path: str) -> int:
        """The watcher's call (its own thread): the kernel forgets ``path``'s inode, and its name if it is gone."""
        assert self.session is not None
        result = self.session.invalidate_inode(path)
        if isinstance(path, Gone) and path != "/":
            parent, name = os.path.split(path)
            dropped = self.session.invalidate_entry(parent, name)
            result = result if dropped else 0
        return result


def session(operations: Operations, mountpoint: str, options: Sequence[str], *, entry_timeout: float,
            attr_timeout: float, negative_timeout: float, debug: bool = False) -> lowlevel.Session:
    """The session serving ``operations`` at ``mountpoint`` with these mount options."""
    carrier = Carrier(operations)
    carrier.session = lowlevel.Session(carrier, mountpoint, options, entry_timeout=entry_timeout,
                                       attr_timeout=attr_timeout, negative_timeout=negative_timeout, debug=debug)
    return carrier.session
