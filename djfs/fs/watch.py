"""Long kernel timeouts, kept honest: what the kernel may hold of each table, and telling it to forget what changed.

The kernel keeps names (``entry_timeout``) and attributes (``attr_timeout``) for long (60 s with libfuse 3), so a
second ``ls -lR`` costs no lookup per entry.  What it holds of a table is only as fresh as the table: the daemon
records what it hands the kernel (``Holdings``: per table, the listings and lone rows it served, at which change
token), and a watcher thread (``Watcher``) runs each held table's change probe (``Tree.version``, at most once per
``listing_timeout``) and, when the token moved, tells the kernel to forget the paths whose entries vanished or
changed (``fuse_invalidate_path``: the node's attributes and page cache, with them a directory's cached listing),
found by comparing the listings served with the table's current ones: one query per held listing, no work for
rows that did not change.  A path whose entry vanished is a ``Gone`` (a ``str``), so that a low-level mount can
also have the kernel drop its name at once (``djfs.fs.carrier``).  Where the kernel keeps listings themselves
(the low-level mount), a listing with a row added, changed or gone is forgotten too, and so are the listings of
the root and of schemas (``Holdings.directory``) whose schemas or tables changed, checked every
``max(listing_timeout, DIRECTORIES)``.  A table the kernel can no longer hold entries of (nothing served for
longer than its timeouts) is not watched any more, and its directory's name is dropped (``Gone``) with every
listing the kernel keeps under it: such listings outlive the timeouts.  A dropped table or schema, or a table
whose heading changed, is forgotten whole.  Where the kernel keeps missing names (``negative_timeout``) and the
invalidation can drop them (the low-level mount), each name a lookup did not find is recorded with its table's
change token (``Holdings.absent``) and dropped once the token moves (or the schema or table appears), so a row
inserted after a ``stat`` that failed shows within the usual delay, not after ``negative_timeout``.

libfuse 2's high-level API has no such call: there the mount keeps the kernel's timeouts short instead
(``djfs.fs.mount``).  Invalidation runs on the watcher's own thread only, never inside a FUSE callback (libfuse:
a notification sent from a callback about the inode it serves can deadlock).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable

from .tree import NO_FILES, DatabaseError, NotFound, Row, Table, Tree, Unavailable

log = logging.getLogger(__name__)

_MISSING = object()
#: missing names kept for the watcher at most (``Holdings.missing``): past it the oldest is forgotten by the kernel
#: at the next round rather than kept
MISSING_MAX = 50_000
#: seconds between two checks of the kept listings of the root and of schemas (or twice the watcher's interval,
#: i.e. listing_timeout, if longer): one query per held schema each time
DIRECTORIES = 1.0


class Gone(str):
    """A path whose name the kernel must drop too, not only its inode: its entry is gone (a vanished row, file,
    table or schema), or the kernel may keep listings under it that nothing watches any more."""


@dataclass
class Held:
    """What the kernel may hold of one table, served since the watcher last synchronised it."""

    table: Table
    base: str                      # the table's path, /schema/ClassName
    seen: float                    # when something of it was last handed to the kernel (monotonic)
    version: Hashable = None       # the change token the kernel's view was last synchronised at
    # key prefix values -> (the directory's path, the listings served of it since then)
    listings: dict[tuple, tuple[str, list[dict]]] = field(default_factory=dict)
    # a row's key names -> (its values, the rows served of it since then), for rows served without a held listing
    rows: dict[tuple, tuple[tuple, list[Row]]] = field(default_factory=dict)


class Holdings:
    """Records, from the FUSE threads, what is handed to the kernel (``Tree`` calls these); read by ``Watcher``."""

    def __init__(self, negative_timeout: float = 0.0) -> None:
        self._lock = threading.Lock()
        self.tables: dict[tuple[str, str], Held] = {}
        self.retired: list[Held] = []         # tables whose heading changed since: forgotten whole
        self.schemas: dict[str, float] = {}   # schema -> when its directory was last handed out
        # the root's or a schema's directory -> (when its listing was last handed out, the names in it); only
        # where the kernel keeps listings (djfs.fs.carrier records them)
        self.directories: dict[str, tuple[float, frozenset[str]]] = {}
        self.transient: set[str] = set()      # listings with a file whose error may pass: to be asked again
        # where the kernel keeps names that are missing (negative entries) and the invalidation can drop them:
        # path -> (until when the kernel may keep it, the table below which it was missing or None for a schema
        # or table, the table's change token it was missing at); the oldest beyond MISSING_MAX go to ``evicted``
        self.negative_timeout = negative_timeout
        self.missing: dict[str, tuple[float, Table | None, Hashable]] = {}
        self.evicted: list[str] = []

    def passing(self, path: str) -> None:
        """A listing with a file whose error may pass (a store not answering) was handed out: where the kernel
        keeps listings, it is told to forget it at the next round, so that the next listing asks again."""
        with self._lock:
            self.transient.add(path)

    def directory(self, path: str, names: Iterable[str]) -> None:
        """The listing of the root or of a schema (its schemas or tables) was handed out."""
        with self._lock:
            self.directories[path] = (time.monotonic(), frozenset(names))

    def absent(self, path: str, table: Table | None = None, version: Hashable = None) -> None:
        """A lookup found no ``path`` (below ``table``, at its change token ``version``; or a schema or table):
        where the kernel keeps it as missing (``negative_timeout``), the watcher has it forget the name once it
        may exist, i.e. the table's token moved (or the schema or table appeared)."""
        if self.negative_timeout <= 0:
            return
        with self._lock:
            self.missing.pop(path, None)  # re-inserted last: the oldest stay first
            self.missing[path] = (time.monotonic() + self.negative_timeout, table, version)
            while len(self.missing) > MISSING_MAX:
                self.evicted.append(next(iter(self.missing)))
                del self.missing[self.evicted[-1]]

    def schema(self, name: str) -> None:
        self.schemas[name] = time.monotonic()

    def table(self, table: Table, base: str) -> Held:
        key = (table.schema, table.name)
        with self._lock:
            held = self.tables.get(key)
            if held is None or held.table is not table:
                if held is not None:   # its heading changed: the watcher forgets the old one whole
                    self.retired.append(held)
                held = self.tables[key] = Held(table, base, time.monotonic())
            else:
                held.seen = time.monotonic()
            return held

    def listing(self, table: Table, base: str, version: Hashable, values: tuple, path: str,
                listing: dict) -> None:
        """A key level's listing (names -> row columns at the rows' level) was handed out at ``version``."""
        held = self.table(table, base)
        with self._lock:
            if held.version is None:
                held.version = version
            known = held.listings.get(values)
            if known is None:
                held.listings[values] = (path, [listing])
            elif version != held.version and not any(served is listing for served in known[1]):
                known[1].append(listing)   # served at a newer token than the kernel's last synchronisation

    def row(self, table: Table, base: str, version: Hashable, names: tuple, values: tuple, row: Row) -> None:
        """A row's files were handed out at ``version``; kept unless a held listing of its parent covers it."""
        held = self.table(table, base)
        with self._lock:
            if held.version is None:
                held.version = version
            if version == held.version and values[:-1] in held.listings:
                return
            known = held.rows.get(names)
            if known is None:
                held.rows[names] = (values, [row])
            elif not any(served is row for served in known[1]):
                known[1].append(row)


class Watcher:
    """The thread that probes held tables and invalidates what changed (see the module docstring)."""

    def __init__(self, tree: Tree, holdings: Holdings, invalidate: Callable[[str], int], *, interval: float,
                 hold: float, catalog_interval: float) -> None:
        self.tree = tree
        self.holdings = holdings
        self.invalidate = invalidate
        self.interval = interval
        self.hold = hold
        self.catalog_interval = catalog_interval
        self.invalidated = 0        # paths the kernel was told to forget (the mount's stats)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="djfs-watcher", daemon=True)
        self._catalog_checked = self._directories_checked = time.monotonic()

    def start(self) -> "Watcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.round()
            except Exception:  # never let the watcher die: the kernel would keep stale entries
                log.exception("watching for changes failed; trying again")

    def round(self) -> None:
        """One pass over the held tables (and, every ``catalog_interval``, the held schemas)."""
        now = time.monotonic()
        with self.holdings._lock:
            retired, self.holdings.retired = self.holdings.retired, []
            transient, self.holdings.transient = self.holdings.transient, set()
            tables = list(self.holdings.tables.items())
            released = []
            for key, held in tables:
                if now - held.seen > self.hold:   # the kernel asks again before it uses any of its entries ...
                    del self.holdings.tables[key]
                    released.append(Gone(held.base))  # ... and, where it keeps listings, drops those too
        for held in retired:
            self._forget(self._everything(None, held))
        self._forget(sorted(transient))
        self._forget(released)
        for key, held in tables:
            if self._stop.is_set():
                return
            if now - held.seen <= self.hold:
                self._forget(self._changed(key, held))
        if now - self._catalog_checked >= self.catalog_interval:
            self._catalog_checked = now
            self._check_schemas(now)
        catalog = now - self._directories_checked >= max(self.interval * 2, DIRECTORIES)
        if catalog:
            self._directories_checked = now
            if self.holdings.directories:
                self._forget(self._changed_directories(now))
        if self.holdings.missing or self.holdings.evicted:
            self._forget(self._appeared(now, catalog))

    def _appeared(self, now: float, catalog: bool) -> list[str]:
        """The names the kernel keeps as missing (``Holdings.absent``) that may exist now: below a table whose
        change token moved since (or that was dropped or altered), and, with ``catalog``, schemas and tables that
        exist now; they go from the record, and so do those the kernel no longer keeps (past
        ``negative_timeout``).  One change probe per table per round (kept ``listing_timeout``), no query per
        name."""
        with self.holdings._lock:
            evicted, self.holdings.evicted = self.holdings.evicted, []
            missing = list(self.holdings.missing.items())
        appeared: list[str] = [Gone(path) for path in evicted]
        done: list[tuple[str, tuple]] = []
        tokens: dict[tuple[str, str], Any] = {}
        names: dict[str, Any] = {}
        for path, entry in missing:
            until, table, version = entry
            if now >= until:
                done.append((path, entry))
                continue
            if table is None:
                if not catalog:
                    continue
                if not self._in_catalog(path, names):  # or the database can't say now
                    continue
            else:
                key = (table.schema, table.name)
                if key not in tokens:
                    tokens[key] = self._token(table)
                if tokens[key] is None or tokens[key] == (table, version):
                    continue
            appeared.append(Gone(path))
            done.append((path, entry))
        with self.holdings._lock:
            for path, entry in done:
                if self.holdings.missing.get(path) is entry:
                    del self.holdings.missing[path]
        if appeared:
            log.info("names the kernel keeps as missing may exist now: it forgets %d", len(appeared))
        return appeared

    def _token(self, table: Table) -> tuple[Table | None, Hashable] | None:
        """(the table under its current heading, its change token): (None, None) if it was dropped, None if the
        database can't say now."""
        try:
            current = self.tree.table(table.schema, table.name, stale_ok=False)
            return current, self.tree.version(current, stale_ok=False)
        except NotFound:
            return None, None
        except (Unavailable, DatabaseError):
            return None

    def _in_catalog(self, path: str, names: dict[str, Any]) -> bool | None:
        """Whether the schema ``/s`` or the table ``/s/T`` exists (None: the database can't say now); ``names``
        keeps the catalog asked this round."""
        parts = path.strip("/").split("/")
        try:
            if "/" not in names:
                names["/"] = self.tree.schemas(stale_ok=False)
            if parts[0] not in names["/"]:
                return False
            if len(parts) == 1:
                return True
            if parts[0] not in names:
                names[parts[0]] = self.tree.tables(parts[0], stale_ok=False)
            return parts[1] in names[parts[0]]
        except NotFound:
            return False
        except (Unavailable, DatabaseError):
            return None

    def _changed_directories(self, now: float) -> list[str]:
        """The kept listings of the root and of schemas whose schemas or tables changed (and brought up to date);
        listings the kernel can no longer hold are dropped from the record."""
        with self.holdings._lock:
            directories = list(self.holdings.directories.items())
        stale: list[str] = []
        for path, (seen, names) in directories:
            if now - seen > self.hold:  # not watched any more: the kernel drops the listing it keeps
                with self.holdings._lock:
                    if self.holdings.directories.get(path, (None,))[0] == seen:
                        del self.holdings.directories[path]
                stale.append(path)
                continue
            try:
                current = frozenset(self.tree.schemas(stale_ok=False) if path == "/" else
                                    self.tree.tables(path.strip("/"), stale_ok=False))
            except NotFound:
                current = frozenset()
            except (Unavailable, DatabaseError):
                return stale
            if current != names:
                with self.holdings._lock:
                    if self.holdings.directories.get(path, (None,))[0] == seen:
                        self.holdings.directories[path] = (seen, current)
                stale.append(path)
                prefix = "" if path == "/" else path
                stale += [Gone(f"{prefix}/{name}") for name in names - current]
        if stale:
            log.info("the catalog changed: the kernel forgets %s", ", ".join(stale))
        return stale

    def _check_schemas(self, now: float) -> None:
        held = [name for name, seen in list(self.holdings.schemas.items()) if now - seen <= self.hold]
        for name in set(self.holdings.schemas) - set(held):
            self.holdings.schemas.pop(name, None)
        if not held:
            return
        try:
            present = set(self.tree.schemas(stale_ok=False))
        except (Unavailable, DatabaseError):
            return
        self._forget(Gone(f"/{name}") for name in held if name not in present)

    def _forget(self, paths: Iterable[str]) -> None:
        for path in paths:
            if self._stop.is_set():
                return
            self.invalidate(path)
            self.invalidated += 1

    def _changed(self, key: tuple, held: Held) -> list[str]:
        """The paths of ``held`` the kernel must forget (and ``held`` brought up to date)."""
        table = held.table
        token = self._token(table)
        if token is None:  # the database is down: the kernel keeps what it has, as lookups would; asked again
            return []      # next round
        current, version = token
        if current is not table:   # dropped, or another heading: other files, other names
            return self._everything(key, held)
        with self.holdings._lock:
            if held.version is None or version == held.version:
                held.version = version if held.version is None else held.version
                return []
            listings, rows = dict(held.listings), dict(held.rows)
        stale: list[str] = []
        synced_listings: dict[tuple, tuple[str, list[dict]]] = {}
        rows_level = len(table.primary_key) - 1
        for values, (path, served) in listings.items():
            try:
                now = self.tree.listing(table, values)
            except NotFound:
                now = {}
            except (Unavailable, DatabaseError):
                return []
            for listing in served:
                for name, record in listing.items():
                    current = now.get(name, _MISSING)
                    if current != record:
                        stale.append(Gone(f"{path}/{name}") if current is _MISSING else f"{path}/{name}")
                        if len(values) == rows_level and record is not None:
                            stale += self._files(table, f"{path}/{name}", record, current is _MISSING)
                if listing.keys() != now.keys() and path not in stale:  # rows added: a kept listing is stale
                    stale.append(path)
            synced_listings[values] = (path, [now])
        synced_rows: dict[tuple, tuple[tuple, list[Row]]] = {}
        for names, (values, served) in rows.items():
            path = f"{held.base}/{'/'.join(names)}"
            try:
                if len(names) < len(table.primary_key):  # a directory of the key levels
                    if not self.tree.prefix_exists(table, list(names), values):
                        raise NotFound(path)
                    now_row: Row | None = NO_FILES
                else:
                    now_row = self.tree.row(table, list(names), values, stale_ok=False)
            except NotFound:
                now_row = None
            except (Unavailable, DatabaseError):
                return []
            for row in served:
                gone = [name for name, spec in row.files.items()
                        if now_row is None or _signature(now_row.files.get(name)) != _signature(spec)]
                stale += [_path(f"{path}/{name}", now_row is None or name not in now_row.files) for name in gone]
                stale += [f"{path}/{name.split('/')[0]}" for name in gone if "/" in name]
                if now_row is None:
                    stale.append(Gone(path))
                elif gone or now_row.files.keys() != row.files.keys():  # files added: a kept listing is stale
                    stale.append(path)
            if now_row is not None:
                synced_rows[names] = (values, [now_row])
        with self.holdings._lock:
            held.version = version
            held.listings.update(synced_listings)
            held.rows.update(synced_rows)
        if stale:
            stale.append(held.base)
            log.info("%s changed: the kernel forgets %d paths", held.base, len(stale))
        return stale

    def _everything(self, key: tuple | None, held: Held) -> list[str]:
        """Every path of a dropped table (or one whose heading changed) the kernel may hold; it is not held
        any more."""
        with self.holdings._lock:
            if key is not None and self.holdings.tables.get(key) is held:
                del self.holdings.tables[key]
            listings, rows = list(held.listings.items()), list(held.rows.items())
        rows_level = len(held.table.primary_key) - 1
        stale = []
        for values, (path, served) in listings:
            for listing in served:
                for name, record in listing.items():
                    stale.append(Gone(f"{path}/{name}"))
                    if len(values) == rows_level and record is not None:
                        stale += self._files(held.table, f"{path}/{name}", record, True)
        for names, (_, served) in rows:
            path = f"{held.base}/{'/'.join(names)}"
            stale.append(Gone(path))
            for row in served:
                stale += [Gone(f"{path}/{name}") for name in row.files]
        stale.append(held.base)
        log.info("%s was dropped or altered: the kernel forgets %d paths", held.base, len(stale))
        return stale

    def _files(self, table: Table, path: str, record: tuple, gone: bool = False) -> list[str]:
        """The paths of a row's files (and folders) as they were made from ``record`` (``Gone`` with ``gone``)."""
        try:
            files = self.tree.row_files(table, path, record)
        except Exception as error:  # e.g. a store not answering for a blob's view: forget the row directory only
            log.debug("files of %s not known: %s", path, error)
            return []
        folders = {name.split("/")[0] for name in files if "/" in name}
        return [_path(f"{path}/{name}", gone) for name in (*files, *folders)]


def _path(path: str, gone: bool) -> str:
    return Gone(path) if gone else path


def _signature(spec: Any) -> Any:
    """What the kernel holds of a file: its kind, size and inode (its content is the inode's, by hash)."""
    return None if spec is None else (spec.kind, spec.size, spec.ino, spec.mtime)
