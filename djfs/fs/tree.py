"""Paths of the mount <-> (schema, table, primary key, file), and all the SQL of the view.

* Schemas are databases (system ones hidden, or only those given with ``schemas=``); tables are shown by their
  DataJoint class names (``Scan``, ``Scan.Roi``); hidden tables (``~external``, any ``~`` table) never are.
* One directory level per primary-key attribute.  A level is listed with one query per page, paging by key
  (``WHERE k > last ORDER BY k LIMIT n``), never by offset, so listing a huge table costs a bounded number of
  queries per page and no store access.
* A row's files come from its row's columns: plain attributes, ``LENGTH()`` and the first bytes of in-MySQL
  blobs, and each external attribute's ``~external`` entry (view, sizes, header) through a LEFT JOIN; the
  listing of the rows' level fetches them page by page, a lone row is fetched with one query.
* Every value travels as a bound parameter; identifiers come only from the server's own catalog.  A name that
  does not re-encode to itself (``paths``) is not found, so quotes, SQL metacharacters or 4,000-character
  names can only ever give ENOENT.

Caching: a listing and the rows it brought are kept, and reused for as long as their table is unchanged.  Whether
it is is asked with one aggregate query per table (``probe_sql``: row count and CRC32 aggregates of what the mount
shows of the rows), at most once per ``listing_timeout`` seconds, longer for a table whose probe is slow (probing
takes at most 1/``PROBE_SHARE`` of one connection's time).  Rows inserted, deleted or changed elsewhere show up or
vanish within ``listing_timeout``: with libfuse 3 the kernel keeps what it was handed for long and is told to
forget what changed (``holdings``, ``djfs.fs.watch``), with libfuse 2 its own short timeouts add to that; nothing
unchanged is read twice.  Resolving a path may use the lists of schemas and tables up to ``catalog_timeout`` old,
listing them refreshes them.  Each result is also kept in a bounded "last known" cache that ``lookup`` (stat,
open) falls back to while the database is unreachable, so files already known stay
readable; ``list`` never falls back (a listing from a dead database would be a lie, it fails with EIO).

Listing the last key level brings, with each page, every column the row directories' files need (the same
columns as the one-row query), so ``ls -lR`` of a table costs one query per page, not one per row.

Why a thread pool for SQL: mfusepy calls us on libfuse's own threads, and Python forgets thread-local state
between two callbacks of such a thread, so per-thread sessions would reconnect on every call.  Our few SQL
threads keep their sessions, bound the connections a mount opens, and let every query have a deadline.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, NamedTuple, Sequence

from cachetools import LRUCache

from .. import hashing
from ..singleflight import SingleFlight
from ..connection import Connection
from ..errors import ConnectionLostError, DjfsError, QueryError
from ..objects.external import EXTERNAL_TABLE
from ..relational.heading import Heading
from ..relational.user_tables import class_name
from . import datajoint_files, paths, views

log = logging.getLogger(__name__)

SYSTEM_SCHEMAS = {"information_schema", "mysql", "performance_schema", "sys"}
#: table names DataJoint makes (tier prefix, snake_case, parts joined by '__'); anything else is not shown
TABLE_NAME = re.compile(r"^(#|_|__)?[a-z][a-z0-9]*(_[a-z0-9]+)*(__[a-z][a-z0-9]*(_[a-z0-9]+)*)*$")
_MISSING_CODES = {1049, 1146}  # unknown database, unknown table: raced with a drop


class NotFound(Exception):
    """No such path (ENOENT)."""


class Unavailable(Exception):
    """The database can't answer now (EIO); cached knowledge may still serve ``lookup``."""


class DatabaseError(Exception):
    """A query failed for another reason (EIO)."""


DOWN_HOLD = 2.0  # seconds calls fail fast after the database failed to answer


class Database:
    """Runs the view's SQL on a few threads of its own, each with a persistent session, with a deadline."""

    def __init__(self, config, threads: int = 4, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.connection = Connection(config["database.host"], config["database.port"], config["database.user"],
                                     config["database.password"], config["connection.init_function"],
                                     connect_timeout=min(timeout, 10.0), io_timeout=timeout)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="djfs-sql")
        self._lock = threading.Lock()
        self.queries = 0
        self._down_until = 0.0   # until then, calls fail fast; 0: the server answered last time

    def call(self, function: Callable[[Connection], Any]) -> Any:
        """Run ``function(connection)`` on an SQL thread; server trouble becomes Unavailable or DatabaseError.

        Once the server has failed to answer, calls fail at once for ``DOWN_HOLD`` seconds (callers fall back
        to what they knew); then one call probes whether it is back while the others still fail fast: a frozen
        server must not make every operation of the file system wait out its own timeout."""
        with self._lock:
            now = time.monotonic()
            if now < self._down_until:
                raise Unavailable("the database is not answering")
            if self._down_until:
                # this call probes whether the server is back; the others keep failing fast meanwhile
                self._down_until = now + self.timeout * 2 + DOWN_HOLD
        try:
            future = self._pool.submit(self._run, function)
            try:
                result = future.result(timeout=self.timeout + 5.0)
            except FutureTimeout:
                raise Unavailable("the database did not answer in time") from None
        except Unavailable:
            with self._lock:
                self._down_until = time.monotonic() + DOWN_HOLD
            raise
        with self._lock:
            self._down_until = 0.0
        return result

    def _run(self, function: Callable[[Connection], Any]) -> Any:
        try:
            return function(self.connection)
        except ConnectionLostError as error:
            raise Unavailable(str(error)) from None
        except QueryError as error:
            if error.code in _MISSING_CODES:
                raise NotFound(str(error)) from None
            raise DatabaseError(str(error)) from None
        except (OSError, DjfsError) as error:
            raise Unavailable(str(error)) from None

    def rows(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        def run(connection: Connection) -> list[tuple]:
            with self._lock:
                self.queries += 1
            return list(connection.query(sql, args).fetchall())
        return self.call(run)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self._pool.submit(self.connection.close)
        except RuntimeError:
            pass


class Memo:
    """A cache with single-flight loads, plus a bounded cache of last known values for outages.

    A value is fresh for ``ttl`` seconds (a number, or a function of the value), or, with ``ttl=None``, for as
    long as the caller asks for the ``version`` it was loaded at (a table's change token).  ``size`` weighs a
    value against ``maxsize`` (default 1 per value)."""

    def __init__(self, ttl: float | Callable[[Any], float] | None, maxsize: int = 4096, stale_size: int = 100_000,
                 size: Callable[[Any], int] | None = None) -> None:
        # key -> (version, value, until: monotonic seconds, or None with ttl None); expiry checked here, as
        # cachetools' timed caches cost a timer context and an expiry sweep per get (several per row listed)
        self._fresh: LRUCache = LRUCache(maxsize=maxsize, getsizeof=None if size is None else (
            lambda entry: size(entry[1])))
        self._ttl = ttl
        # key -> (value, when loaded)
        self._stale: LRUCache = LRUCache(maxsize=stale_size,
                                         getsizeof=None if size is None else (lambda known: size(known[0])))
        self._loads: SingleFlight[tuple, Any] = SingleFlight()
        self._lock = threading.Lock()

    def fresh(self, key: Hashable, version: Hashable = None) -> Any:
        with self._lock:
            entry = self._fresh.get(key)
        return entry[1] if entry is not None and self._current(entry, version) else None

    @staticmethod
    def _current(entry: tuple, version: Hashable) -> bool:
        """A fresh entry at ``version``: loaded at it, and within its ttl."""
        return entry[0] == version and (entry[2] is None or time.monotonic() < entry[2])

    def stale(self, key: Hashable) -> Any:
        with self._lock:
            known = self._stale.get(key)
        return None if known is None else known[0]

    def get(self, key: Hashable, load: Callable[[], Any], stale_ok: bool, max_age: float = 0.0,
            version: Hashable = None) -> Any:
        """The value: fresh (at ``version``), else no older than ``max_age`` seconds, else loaded (once, whoever
        else asks); with ``stale_ok``, the last known value when the database is unreachable."""
        with self._lock:
            entry = self._fresh.get(key)
            if entry is not None and self._current(entry, version):
                return entry[1]
            known = self._stale.get(key)
            if known is not None and max_age and time.monotonic() - known[1] <= max_age:
                return known[0]

        def load_and_keep() -> Any:
            value = load()
            if not getattr(value, "transient", False):  # e.g. a row whose store is not answering
                with self._lock:
                    self._store(key, version, value)
            return value

        try:  # one load per (key, version), however many threads ask meanwhile
            return self._loads.do((key, version), load_and_keep)
        except Unavailable:
            return self._fallback(key, stale_ok)

    def _store(self, key: Hashable, version: Hashable, value: Any) -> None:
        now = time.monotonic()
        ttl = self._ttl
        until = None if ttl is None else now + (ttl(value) if callable(ttl) else ttl)
        try:
            self._fresh[key] = (version, value, until)
            self._stale[key] = (value, now)
        except ValueError:  # heavier than the whole cache: served once, not kept
            self._fresh.pop(key, None)
            self._stale.pop(key, None)

    def _fallback(self, key: Hashable, stale_ok: bool) -> Any:
        if stale_ok:
            value = self.stale(key)
            if value is not None:
                return value
        raise Unavailable("the database is unreachable")

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._fresh.pop(key, None)
            self._stale.pop(key, None)


@dataclass(frozen=True)
class Table:
    schema: str
    name: str            # MySQL name
    heading: Heading

    @property
    def sql_name(self) -> str:
        return f"`{self.schema}`.`{self.name}`"

    @property
    def primary_key(self) -> list[str]:
        return self.heading.primary_key

    @functools.cached_property
    def row_select(self) -> tuple[list[str], list[str], list[tuple[str, str, int]]]:
        """(columns, joins, layout) of the query bringing what a row's files need; layout: (attribute, how,
        index of its first column) with how = plain | blob | external | datajoint."""
        columns: list[str] = []
        joins: list[str] = []
        layout: list[tuple[str, str, int]] = []
        for index, attribute in enumerate(self.heading):
            name = attribute.name
            if attribute.datajoint_kind:  # DataJoint's kinds: their ~external_<store> entry, by datajoint_files
                layout.append((name, "datajoint", len(columns)))
                more, join = datajoint_files.columns(self.schema, attribute, f"d{index}")
                columns += more
                joins += join
                continue
            layout.append((name, "external" if attribute.is_external else "blob" if attribute.is_blob
                           else "plain", len(columns)))
            if attribute.is_external:
                alias = f"e{index}"
                columns += [f"t.`{name}`"] + [f"{alias}.`{c}`" for c in _ENTRY_COLUMNS] + \
                    [f"UNIX_TIMESTAMP({alias}.`timestamp`)"]
                joins.append(f"LEFT JOIN `{self.schema}`.`{EXTERNAL_TABLE}` AS {alias} "
                             f"ON {alias}.`hash` = t.`{name}`")
            elif attribute.is_blob:
                columns += [f"LENGTH(t.`{name}`)", f"SUBSTRING(t.`{name}`, 1, {views.PREFIX_BYTES})"]
            else:
                columns.append(f"t.`{name}`")
        return columns, joins, layout

    @functools.cached_property
    def probe_query(self) -> str:
        """The table's change probe (``probe_sql``)."""
        return probe_sql(self)

    @functools.cached_property
    def key_positions(self) -> tuple[int, ...]:
        """Where each primary-key value lies in a record of ``row_select``'s columns."""
        first_column = {name: first for name, _, first in self.row_select[2]}
        return tuple(first_column[name] for name in self.primary_key)


@dataclass
class Node:
    """What a path names."""

    kind: str                                  # root | schema | table | keys | row | folder | file
    path: str
    schema: str | None = None
    table: Table | None = None
    values: tuple = ()                         # bound values of the primary-key prefix
    file: views.FileSpec | None = None
    mtime: float = 0.0

    @property
    def is_dir(self) -> bool:
        return self.kind != "file"


@dataclass(frozen=True)
class Row:
    files: dict[str, views.FileSpec] = field(default_factory=dict)

    @property
    def transient(self) -> bool:
        """A file's error may pass (its store is not answering): the row is made again when asked again."""
        return any(spec.transient for spec in self.files.values())


NO_FILES = Row()  # what a directory of the key levels holds of a row's files


class _RowListing(NamedTuple):
    """A row directory's listing, valid at ``version`` of ``table`` until ``until`` (monotonic)."""

    table: "Table"
    version: Hashable
    names: tuple
    values: tuple
    row: Row
    entries: list
    until: float


class _RowsLevel(NamedTuple):
    """A listed directory whose entries are rows (the last key level), until ``until`` (monotonic): what the
    rows' own directories are listed from without resolving their paths."""

    table: "Table"
    base: str          # the table's path
    values: tuple      # the key prefix of the directory
    names: tuple       # ... as its path spells it
    until: float


class Tree:
    """Resolves and lists paths with SQL; safe to call from many threads."""

    def __init__(self, database: Database, *, schemas: list[str] | None = None, listing_timeout: float = 1.0,
                 heading_timeout: float = 30.0, catalog_timeout: float = 10.0, page_size: int = 10_000,
                 relist_max: int = 50_000, listed_entries: int = 400_000,
                 datajoint: "datajoint_files.DataJointFiles | None" = None, holdings: Any = None) -> None:
        self.db = database
        self.holdings = holdings  # what the kernel is handed (``watch.Holdings``), or None: nothing recorded
        self.datajoint = datajoint  # files of DataJoint's own kinds (blob@, attach@, filepath@, attach)
        self.only = list(schemas) if schemas else None
        self.page_size = page_size
        self.relist_max = relist_max
        self.listing_timeout = listing_timeout
        self.catalog_timeout = max(catalog_timeout, listing_timeout)
        self.started = time.time()
        self._schemas = Memo(listing_timeout, maxsize=4)
        self._tables = Memo(listing_timeout, maxsize=1024)
        self._headings = Memo(heading_timeout, maxsize=4096)
        self._versions = Memo(lambda probe: probe[1], maxsize=4096)
        # listings weigh what they hold: at most ``listed_entries`` entries (rows with their columns) are kept
        self._listings = Memo(None, maxsize=listed_entries, stale_size=listed_entries, size=lambda e: len(e) + 1)
        self._exists = Memo(None, maxsize=200_000)
        self._rows = Memo(None, maxsize=50_000)
        self._nodes: LRUCache = LRUCache(maxsize=100_000)  # path -> (table version, Node, Row or None)
        self._row_listings: LRUCache = LRUCache(maxsize=100_000)  # row directory's path -> _RowListing
        self._rows_levels: LRUCache = LRUCache(maxsize=100_000)  # rows' level directory's path -> _RowsLevel
        self._lock = threading.Lock()
        self.rows_from_listings = 0  # row directories listed from their parent's listing (the mount's stats)

    # -- catalog ---------------------------------------------------------------------------------------------

    def schemas(self, stale_ok: bool) -> tuple[str, ...]:
        def load() -> tuple[str, ...]:
            rows = self.db.rows("SELECT schema_name FROM information_schema.schemata ORDER BY schema_name")
            names = [row[0] for row in rows if row[0] not in SYSTEM_SCHEMAS]
            if self.only is not None:
                names = [name for name in names if name in self.only]
            return tuple(names)
        # a lookup (stale_ok) may use a catalog up to catalog_timeout old; a listing refreshes it
        return self._schemas.get("schemas", load, stale_ok, self.catalog_timeout if stale_ok else 0.0)

    def tables(self, schema: str, stale_ok: bool) -> dict[str, str]:
        """DataJoint class name -> MySQL table name, of the tables a user would see."""
        def load() -> dict[str, str]:
            rows = self.db.rows("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                                "AND table_type = 'BASE TABLE' ORDER BY table_name", (schema,))
            found: dict[str, str] = {}
            for (name,) in rows:
                if name == EXTERNAL_TABLE or name.startswith("~") or not TABLE_NAME.match(name):
                    continue
                found.setdefault(class_name(name), name)
            return found
        return self._tables.get(schema, load, stale_ok, self.catalog_timeout if stale_ok else 0.0)

    def table(self, schema: str, table_name: str, stale_ok: bool) -> Table:
        def load() -> Table:
            heading = self.db.call(lambda connection: Heading.load(connection, schema, table_name))
            if not heading.attributes:
                raise NotFound(f"{schema}.{table_name}")
            table = Table(schema, table_name, heading)
            known = self._headings.stale((schema, table_name))
            # the same heading reloaded is the same table: what was resolved and handed out under it stays valid
            return known if known == table else table
        return self._headings.get((schema, table_name), load, stale_ok)

    # -- change tokens ---------------------------------------------------------------------------------------

    def version(self, table: Table, stale_ok: bool) -> Hashable:
        """A token that changes whenever rows of ``table`` are inserted, deleted or changed (see ``probe``);
        asked of the server at most once per ``listing_timeout``; with ``stale_ok``, the last known one while
        the database is unreachable.  Kept per heading (its probe): a table altered since is probed afresh, so
        what was listed under the old heading, in the old columns, is never current for the new one."""
        return self._versions.get((table.schema, table.name, table.probe_query), lambda: self.probe(table),
                                  stale_ok)[0]

    def probe(self, table: Table) -> tuple[Hashable, float]:
        """(token, seconds it may be reused) from one aggregate query over the table (see ``probe_sql``)."""
        start = time.monotonic()
        rows = self.db.rows(table.probe_query)
        took = time.monotonic() - start
        return tuple(rows[0]) if rows else (), max(self.listing_timeout, PROBE_SHARE * took)

    def _versioned(self, memo: Memo, key: Hashable, table: Table, load: Callable[[Hashable], Any],
                   stale_ok: bool) -> Any:
        """``memo``'s value for ``key`` at the table's current version, ``load(version)`` if the table changed
        since."""
        return self._versioned_at(memo, key, table, load, stale_ok)[1]

    def _versioned_at(self, memo: Memo, key: Hashable, table: Table, load: Callable[[Hashable], Any],
                      stale_ok: bool) -> tuple[Hashable, Any]:
        """(version, value) of ``_versioned``; version None when the database is down and the value is the last
        known one."""
        try:
            version = self.version(table, stale_ok)
        except Unavailable:
            known = memo.stale(key) if stale_ok else None
            if known is None:
                raise
            return None, known
        return version, memo.get(key, lambda: load(version), stale_ok, version=version)

    # -- resolving paths -------------------------------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        """The node a path names; NotFound, or Unavailable when the database is down and nothing is known."""
        parts = [part for part in path.split("/") if part]
        for part in parts:
            try:
                paths.check_name(part)
            except paths.BadName:
                raise NotFound(path) from None
        if not parts:
            return Node("root", "/", mtime=self.started)
        schema = parts[0]
        holdings = self.holdings
        if schema not in self.schemas(stale_ok=True):
            if holdings is not None:
                holdings.absent("/" + schema)
            raise NotFound(path)
        if len(parts) == 1:
            if holdings is not None:
                holdings.schema(schema)
            return Node("schema", path, schema, mtime=self.started)
        table_name = self.tables(schema, stale_ok=True).get(parts[1])
        if table_name is None:
            if holdings is not None:
                holdings.absent(f"/{schema}/{parts[1]}")
            raise NotFound(path)
        table = self.table(schema, table_name, stale_ok=True)
        key = table.primary_key
        if not key:
            raise NotFound(path)
        if len(parts) == 2:
            if holdings is not None:
                holdings.table(table, path)
            return Node("table", path, schema, table, mtime=self.started)
        # below a table: what was resolved is reused while the table is unchanged (``ls -lR`` asks each path
        # two or three times)
        try:
            version = self.version(table, stale_ok=True)
        except Unavailable:
            version = None
        try:
            node, row = self._resolved_below(table, path, parts, version)
        except NotFound:
            if holdings is not None:  # the kernel may keep it as missing: forgotten once the table changes
                holdings.absent(path, table, version)
            raise
        if holdings is not None and version is not None:
            names = tuple(parts[2:2 + len(node.values)])
            holdings.row(table, f"/{schema}/{parts[1]}", version, names, node.values, row)
        return node

    def _resolved_below(self, table: Table, path: str, parts: list[str],
                        version: Hashable) -> tuple[Node, Row]:
        """``_node_below``, reused while the table is at ``version`` (None: unknown, the database is down)."""
        if version is None:
            return self._node_below(table, path, parts)
        with self._lock:
            known = self._nodes.get(path)
        if known is not None and known[0] == version and known[1].table is table:
            return known[1], known[2]
        node, row = self._node_below(table, path, parts, version)
        if node.file is None or not node.file.transient:
            with self._lock:
                self._nodes[path] = (version, node, row)
        return node, row

    def _node_below(self, table: Table, path: str, parts: list[str],
                    version: Hashable = None) -> tuple[Node, Row]:
        """The node, and the row it belongs to (an empty one for a directory of the key levels); ``version``:
        the table's current token, if known."""
        schema, key = table.schema, table.primary_key
        depth = min(len(parts) - 2, len(key))
        try:
            values = tuple(paths.split_component(parts[2 + i], table.heading[key[i]]) for i in range(depth))
        except paths.BadName:
            raise NotFound(path) from None
        if len(parts) - 2 <= len(key):
            if not self._prefix_exists(table, parts[2:2 + depth], values):
                raise NotFound(path)
            return Node("row" if depth == len(key) else "keys", path, schema, table, values,
                        mtime=self.started), NO_FILES
        if len(parts) not in (2 + len(key) + 1, 2 + len(key) + 2):
            raise NotFound(path)
        row = self._listed_row(table, version, "/" + "/".join(parts[:2 + len(key)]))
        if row is None:
            row = self.row(table, parts[2:2 + len(key)], values, stale_ok=True)
        spec = row.files.get("/".join(parts[2 + len(key):]))
        if spec is None:
            if len(parts) == 2 + len(key) + 1 and any(n.startswith(parts[-1] + "/") for n in row.files):
                return Node("folder", path, schema, table, values, mtime=self.started), row
            raise NotFound(path)
        return Node("file", path, schema, table, values, spec, mtime=spec.mtime), row

    def _listed_row(self, table: Table, version: Hashable, path: str) -> Row | None:
        """The row of the row directory ``path`` as ``list`` made it, if it did at ``version`` (a stat of each
        file after a listing, as with libfuse 2, then makes no row again); else None."""
        if version is None:
            return None
        with self._lock:
            known = self._row_listings.get(path)
        if known is None or known.version != version or known.table is not table or \
                time.monotonic() >= known.until:
            return None
        return known.row

    def prefix_exists(self, table: Table, names: list[str], values: tuple) -> bool:
        """Whether a directory of the key levels (or a row) exists, at the table's current version."""
        return self._prefix_exists(table, names, values)

    def _prefix_exists(self, table: Table, names: list[str], values: tuple) -> bool:
        """Whether rows exist under a key prefix: from the parent's listing when there is one, else one query."""
        listing = self._parent_listing(table, values[:-1])
        if listing is not None:
            return names[-1] in listing

        def load(_: Hashable) -> bool:
            key = table.primary_key[:len(values)]
            where = " AND ".join(f"t.`{name}` = %s" for name in key)
            rows = self.db.rows(f"SELECT {', '.join(f't.`{name}`' for name in key)} FROM {table.sql_name} AS t "
                                f"WHERE {where} LIMIT 1", values)
            return bool(rows) and self._canonical(table, rows[0], names)
        return self._versioned(self._exists, ("exists", table.schema, table.name, tuple(names)), table, load,
                               stale_ok=True)

    def _parent_listing(self, table: Table, values: tuple) -> dict[str, tuple | None] | None:
        """The listing under a key prefix if it is at hand: current, or listed before and small enough to list
        again (``ls -l`` stats every entry: one listing's pages instead of a query per entry); else None."""
        key = ("keys", table.schema, table.name, values)
        known = self._listings.stale(key)
        if known is None:
            return None
        try:
            version = self.version(table, stale_ok=True)
        except Unavailable:
            return known  # the database is down: what we knew last
        listing = self._listings.fresh(key, version)
        if listing is not None or len(known) > self.relist_max:
            return listing
        try:
            return self._list_keys(table, values, stale_ok=False)
        except Unavailable:
            return known

    @staticmethod
    def _canonical(table: Table, row: tuple, names: list[str]) -> bool:
        """The row the database matched is spelled exactly as asked (no aliases, no collation look-alikes)."""
        key = table.primary_key
        return all(paths.component(table.heading[key[i]], row[i]) == names[i] for i in range(len(names)))

    # -- listing ---------------------------------------------------------------------------------------------

    def list(self, path: str) -> list[tuple[str, views.FileSpec | None]]:
        """A directory's entries, (name, the file's spec or None for a directory); fails with Unavailable when
        the database is down."""
        with self._lock:
            known = self._row_listings.get(path)
        if known is not None and time.monotonic() < known.until and self._heading_current(known.table):
            # a row directory listed before: reused while its table is unchanged (its catalog, as for lookups, up
            # to catalog_timeout): a second ``ls -lR`` resolves no path again
            try:
                current = self.version(known.table, stale_ok=False)
            except (Unavailable, NotFound, DatabaseError):
                current = None  # the full way below says what is wrong
            if current == known.version:
                if self.holdings is not None:
                    self.holdings.row(known.table, self._base(path), current, known.names, known.values, known.row)
                return known.entries
        entries = self._list_row_from_parent(path)
        if entries is not None:
            return entries
        node = self.lookup(path)
        if node.kind == "root":
            names: Any = self.schemas(stale_ok=False)
        elif node.kind == "schema":
            assert node.schema is not None
            names = sorted(self.tables(node.schema, stale_ok=False))
        elif node.kind in ("table", "keys"):
            assert node.table is not None
            version, names = self._list_keys_at(node.table, node.values, stale_ok=False)
            if self.holdings is not None:
                self.holdings.listing(node.table, self._base(path), version, node.values, path.rstrip("/"), names)
            if len(node.values) + 1 == len(node.table.primary_key):  # its rows' directories: from this listing
                with self._lock:
                    self._rows_levels[path.rstrip("/")] = _RowsLevel(
                        node.table, self._base(path), node.values, tuple(self._row_names(path)),
                        time.monotonic() + self.catalog_timeout)
            if self.datajoint is not None and not node.values:  # learn the table's blob heads in parallel
                self.datajoint.prefetch_table(self.db, node.table)
        elif node.kind in ("row", "folder"):
            assert node.table is not None
            names = self._row_names(path)[:len(node.table.primary_key)]
            version, row = self._row_at(node.table, names, node.values, stale_ok=False)
            if self.holdings is not None:
                self.holdings.row(node.table, self._base(path), version, tuple(names), node.values, row)
            if node.kind == "folder":  # the files of one attribute of DataJoint's kinds, under their own names
                inside = path.rstrip("/").rsplit("/", 1)[-1] + "/"
                return [(name[len(inside):], spec) for name, spec in row.files.items() if name.startswith(inside)]
            return self._row_entries(path, node.table, version, tuple(names), node.values, row)
        else:
            raise NotFound(path)
        return [(name, None) for name in names]

    def _row_entries(self, path: str, table: Table, version: Hashable, names: tuple, values: tuple,
                     row: Row) -> list[tuple[str, views.FileSpec | None]]:
        """A row directory's entries (its files, then its folders), kept for listing it again while its table is
        unchanged."""
        files = row.files
        entries: list[tuple[str, views.FileSpec | None]] = [(name, spec) for name, spec in files.items()
                                                            if "/" not in name]
        if len(entries) < len(files):
            entries += [(name, None) for name in sorted({name.split("/")[0] for name in files if "/" in name})]
        if version is not None and not row.transient:
            with self._lock:
                self._row_listings[path] = _RowListing(table, version, names, values, row, entries,
                                                       time.monotonic() + self.catalog_timeout)
        return entries

    def _list_row_from_parent(self, path: str) -> list[tuple[str, views.FileSpec | None]] | None:
        """A row directory's entries made straight from its parent's current listing, whose page brought the
        row's columns: no path to resolve, no query, no row cache (``ls -lR`` lists each row right after its
        parent).  None when that listing is not at hand at the table's current version: the full way then says
        what the path is."""
        parent, _, name = path.rstrip("/").rpartition("/")
        with self._lock:
            level = self._rows_levels.get(parent)
        if level is None or time.monotonic() >= level.until or not self._heading_current(level.table):
            return None
        table = level.table
        try:
            version = self.version(table, stale_ok=False)
        except (Unavailable, NotFound, DatabaseError):
            return None
        listing = self._listings.fresh(("keys", table.schema, table.name, level.values), version)
        record = None if listing is None else listing.get(name)
        if record is None:
            return None
        names = (*level.names, name)
        _, _, layout = table.row_select
        row = self._make_row(table, names, layout, record)
        values = (*level.values, record[table.key_positions[-1]])
        if self.holdings is not None:
            self.holdings.row(table, level.base, version, names, values, row)
        with self._lock:
            self.rows_from_listings += 1
        return self._row_entries(path, table, version, names, values, row)

    def _heading_current(self, table: Table) -> bool:
        """``table``'s heading is the one known, and known for less than ``heading_timeout`` (else the full way
        loads it again: an altered table has other columns, other files)."""
        return self._headings.fresh((table.schema, table.name)) is table

    @staticmethod
    def _row_names(path: str) -> list[str]:
        return [part for part in path.split("/") if part][2:]

    @staticmethod
    def _base(path: str) -> str:
        """The table's path, ``/schema/Class``, of a path below it."""
        return "/" + "/".join([part for part in path.split("/") if part][:2])

    def listing(self, table: Table, values: tuple) -> dict[str, tuple | None]:
        """The current listing of a key level (see ``_list_keys``)."""
        return self._list_keys(table, values, stale_ok=False)

    def _list_keys(self, table: Table, values: tuple, stale_ok: bool) -> dict[str, tuple | None]:
        return self._list_keys_at(table, values, stale_ok)[1]

    def _list_keys_at(self, table: Table, values: tuple, stale_ok: bool) -> tuple[Hashable, dict[str, tuple | None]]:
        """(version, the directory names of the next key level under a prefix), paging by key; at the rows' level
        each name maps to its row's columns (``Table.row_select``), else to None."""
        def load(_: Hashable) -> dict[str, tuple | None]:
            key = table.primary_key
            level = len(values)
            column = key[level]
            attribute = table.heading[column]
            rows_level = level + 1 == len(key)
            if rows_level:
                columns, joins, _ = table.row_select
                position = table.key_positions[level]
            else:
                columns, joins, position = [f"t.`{column}`"], [], 0
            prefix = " AND ".join(f"t.`{k}` = %s" for k in key[:level])
            distinct = "" if rows_level else "DISTINCT "
            entries: dict[str, tuple | None] = {}
            last: Any = None
            while True:
                conditions = [prefix] if prefix else []
                args = list(values)
                if last is not None:
                    conditions.append(f"t.`{column}` > %s")
                    args.append(last)
                where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
                # one row more than a page tells whether another page follows, without an empty last query
                rows = self.db.rows(f"SELECT {distinct}{', '.join(columns)} FROM {table.sql_name} AS t "
                                    f"{' '.join(joins)}{where} ORDER BY t.`{column}` LIMIT %s",
                                    args + [self.page_size + 1])
                page = rows[:self.page_size]
                for record in page:
                    entry = paths.component(attribute, record[position])
                    if len(entry.encode("utf-8", "surrogateescape")) > paths.MAX_NAME:
                        # no path can name it (the kernel's limit on a component): leave it out, say so
                        log.warning("%s: a key value of %s escapes to a name longer than %d bytes; not shown",
                                    table.sql_name, attribute, paths.MAX_NAME)
                        continue
                    entries[entry] = tuple(record) if rows_level else None
                if len(rows) <= self.page_size:
                    return entries
                last = page[-1][position]
        return self._versioned_at(self._listings, ("keys", table.schema, table.name, values), table, load,
                                  stale_ok)

    # -- rows ------------------------------------------------------------------------------------------------

    def row(self, table: Table, names: list[str], values: tuple, stale_ok: bool) -> Row:
        """The files of one row: from its listing's page when the parent was listed, else from one query."""
        return self._row_at(table, names, values, stale_ok)[1]

    def row_files(self, table: Table, path: str, record: tuple) -> dict[str, views.FileSpec]:
        """The files of the row at ``path`` made from its columns ``record`` (as a listing's page holds them)."""
        return self._make_row(table, self._row_names(path), table.row_select[2], record).files

    def _row_at(self, table: Table, names: list[str], values: tuple, stale_ok: bool) -> tuple[Hashable, Row]:
        def load(version: Hashable) -> Row:
            columns, joins, layout = table.row_select
            # a row directory stat-ed before (lookup) has had its parent listed again if it changed
            listing = self._listings.fresh(("keys", table.schema, table.name, values[:-1]), version)
            if listing is not None:
                if names[-1] not in listing:
                    raise NotFound("/".join(names))
                record = listing[names[-1]]
                assert record is not None
                return self._make_row(table, names, layout, record)
            where = " AND ".join(f"t.`{name}` = %s" for name in table.primary_key)
            rows = self.db.rows(f"SELECT {', '.join(columns)} FROM {table.sql_name} AS t {' '.join(joins)} "
                                f"WHERE {where} LIMIT 2", values)
            if len(rows) != 1:
                raise NotFound("/".join(names))
            record = rows[0]
            key_values = tuple(record[first] for first in table.key_positions)
            if not self._canonical(table, key_values, names):
                raise NotFound("/".join(names))
            return self._make_row(table, names, layout, record)
        return self._versioned_at(self._rows, ("row", table.schema, table.name, tuple(names)), table, load,
                                  stale_ok)

    def _make_row(self, table: Table, names: Sequence[str], layout: list[tuple[str, str, int]],
                  record: tuple) -> Row:
        heading = table.heading
        where = "/".join([table.schema, table.name, *names])
        files: dict[str, views.FileSpec] = {}
        plain: dict[str, Any] = {}
        for name, how, first in layout:
            if how == "plain":
                plain[name] = record[first]
                continue
            if record[first] is None:
                continue  # NULL: no file
            if how == "datajoint":
                if self.datajoint is not None:
                    for spec in self.datajoint.files(table.schema, where, heading[name],
                                                     record[first:first + datajoint_files.width(heading[name])],
                                                     self.started):
                        files[spec.name] = spec
                continue
            if how == "external":
                spec = self._external_file(where, name, record[first:first + 2 + len(_ENTRY_COLUMNS)])
            else:
                spec = self._inline_file(table, names, where, name, int(record[first]), record[first + 1])
            files[spec.name] = spec
            extra = views.tiff_file(spec)  # an npy@ movie in C order: also <attr>.tif
            if extra is not None:
                files[extra.name] = extra
        content = views.row_json(heading, plain)
        files[views.ROW_FILE] = views.FileSpec(views.ROW_FILE, "json", len(content), self.started,
                                               views.inode_of(where, views.ROW_FILE), "json", content=content)
        return Row(files)

    def _external_file(self, where: str, name: str, columns: tuple) -> views.FileSpec:
        hash_ = columns[0]
        entry = dict(zip(_ENTRY_COLUMNS, columns[1:-1]))
        timestamp = float(columns[-1] or self.started)
        if not hashing.is_valid(hash_):
            log.warning("%s.%s holds a malformed hash; serving EIO", where, name)
            return views.FileSpec(name + ".blob", "blob", 0, self.started, views.inode_of(where, name), "external",
                                  name, error="malformed hash")
        if entry["view"] is None:
            return views.FileSpec(name + ".blob", "blob", 0, self.started, views.inode_of(hash_), "external",
                                  name, identity=hash_, error="no ~external entry")
        entry["hash"] = hash_
        kind = entry["view"]
        return views.FileSpec(views.file_name(name, kind), kind, int(entry["view_size"]), timestamp,
                              views.inode_of(hash_), "external", name, identity=hash_, entry=entry,
                              header=bytes(entry["view_header"] or b""),
                              data_offset=None if entry["data_offset"] is None else int(entry["data_offset"]))

    def _inline_file(self, table: Table, names: Sequence[str], where: str, name: str, length: int,
                     prefix: bytes) -> views.FileSpec:
        view = views.describe_inline(bytes(prefix), length)
        if view is None:  # a compressed blob whose header did not fit in the prefix: read it whole once
            data = self.inline_blob(table, tuple(self._values_of(table, names)), name)
            view = views.describe_inline(data, length)
            assert view is not None
        return views.FileSpec(views.file_name(name, view.kind), view.kind, view.size, self.started,
                              views.inode_of(where, name), "inline", name, header=view.header,
                              data_offset=view.data_offset)

    def _values_of(self, table: Table, names: Sequence[str]) -> list[Any]:
        key = table.primary_key
        return [paths.split_component(names[i], table.heading[key[i]]) for i in range(len(key))]

    def inline_blob(self, table: Table, values: tuple, attribute: str) -> bytes:
        """The stored bytes of a blob kept in MySQL (one query)."""
        where = " AND ".join(f"t.`{name}` = %s" for name in table.primary_key)
        rows = self.db.rows(f"SELECT t.`{attribute}` FROM {table.sql_name} AS t WHERE {where} LIMIT 1", values)
        if not rows or rows[0][0] is None:
            raise NotFound(attribute)
        return bytes(rows[0][0])


_ENTRY_COLUMNS = ("size", "store", "folder", "origin", "compressed", "view", "view_size", "view_header",
                  "data_offset")

#: a table's probe may take at most this share's inverse of the time between two probes of it
PROBE_SHARE = 20
_BLOB_TYPES = ("tinyblob", "blob", "mediumblob", "longblob")


def probe_sql(table: Table) -> str:
    """The change probe of a table: ``COUNT(*)``, ``BIT_XOR`` and ``SUM`` of a CRC32 of what the mount shows of
    each row: its keys, plain attributes and external hashes, and of each blob kept in the table its length
    and first bytes (a blob's view: kind, size, header).  Bytes of such a blob beyond those are read afresh at
    every open, so they need no check.

    One consistent read of the table (committed rows only, like the listing that follows it): 4 ms for 10,000
    rows of plain columns, 40 ms for 100,000 (``scripts/bench_listing.py``); blobs kept in the table are read
    whole by ``LENGTH()``, as the listing reads them anyway."""
    fields: list[str] = []
    for attribute in table.heading:
        field = f"t.`{attribute.name}`"
        if attribute.is_blob or attribute.base_sql_type in _BLOB_TYPES:
            fields += [f"LENGTH({field})", f"SUBSTRING({field}, 1, {views.PREFIX_BYTES})"]
        else:
            fields.append(field)
    nulls = f"CONCAT({', '.join(f'ISNULL({field})' for field in fields)})"  # CONCAT_WS skips NULLs
    text = f"CRC32(CONCAT_WS(0x1f, {', '.join(fields)}, {nulls}))"
    return f"SELECT COUNT(*), BIT_XOR({text}), SUM({text}) FROM {table.sql_name} AS t"
