"""The mount's files of DataJoint 0.12-0.14's kinds (``djfs.objects.external_dj``).

* ``blob@store``: ``<attr>.npy`` / ``.bin`` / ``.blob``, the same views as ``external`` (``views``);
* ``attach@store`` and in-table ``attach``: the attachment under its own name, ``<attr>/<attachment name>``;
* ``filepath@store``: the file under its own name, ``<attr>/<last component of its relative path>``.

DataJoint keeps no view metadata: a blob's view (kind, exact size, ``.npy`` header, where its data starts) is
learned once per host from the object's head (a ranged read of its first KiB, inflating just the start of a
compressed blob) and kept in the host's head index (``HeadIndex``, a small SQLite file in the cache folder); a
table's heads are learned in parallel when the table is listed, so ``ls -l`` of its rows costs at most one ranged read per object the first
time and none after. Attachments and filepaths need none: their size is in ``~external_<store>``.

Reading: an object is a ``StoredObject`` whose ``ObjectId`` is its MD5 (``Entry.object_id``), so the mount's
``Reader`` serves it exactly as ``external``'s objects: a small one verified whole into the cache, a large one
by blocks with read-ahead, as byte ranges (``<attr>.npy`` of an uncompressed blob is the npy header + a range of
the object); a compressed blob is inflated once per host into its rendered file. "An attachment's bytes as a
range-readable file" is ``Reader.open_stored`` of its ``StoredObject`` (see ``open``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from cachetools import LRUCache, TTLCache

from ..errors import CorruptObjectError, DjfsError, MissingObjectError, StoreError
from ..objects.external import View
from ..objects.external_dj import TABLE_PREFIX, Entry, check_attachment_name
from ..settings import store_spec
from . import views

log = logging.getLogger(__name__)

INDEX_NAME = "datajoint-heads.sqlite"  # in the cache folder: the views learned on this host, per object
ENTRY_COLUMNS = ("size", "attachment_name", "filepath", "contents_hash")
NAME_BYTES = 257         # an in-table attachment's name (at most 255 bytes) and its NUL
HEAD_READS = (1024, 64 << 10)  # ranged reads tried for a blob's head before reading it whole
DOWNLOAD_STEP = 16 << 20  # pieces of a whole download
PREFETCH_MAX = 100_000   # objects of one table whose heads a listing learns ahead
DOWN_TTL = 5.0           # seconds head reads of a store fail at once after one failed (not a missing object)


def width(attribute) -> int:
    """Columns one attribute takes in a row query."""
    return 1 + len(ENTRY_COLUMNS) if attribute.datajoint_kind != "attach" else 2


def columns(schema: str, attribute, alias: str) -> tuple[list[str], list[str]]:
    """(select expressions, joins) of one attribute in the row query."""
    name = attribute.name
    if attribute.datajoint_kind == "attach":
        return [f"LENGTH(t.`{name}`)", f"SUBSTRING(t.`{name}`, 1, {NAME_BYTES})"], []
    return ([f"t.`{name}`"] + [f"{alias}.`{c}`" for c in ENTRY_COLUMNS],
            [f"LEFT JOIN `{schema}`.`{TABLE_PREFIX}{attribute.store}` AS {alias} ON {alias}.`hash` = t.`{name}`"])


class HeadIndex:
    """The views of blob@ objects learned on this host, by MD5: immutable facts, so never stale.

    A small SQLite file beside the cache's objects, shared by every process of the host (WAL, so readers never
    wait for a writer); if it can't be used, views are only kept in memory."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(path, timeout=10, isolation_level=None,
                                                                  check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS heads (hash BLOB PRIMARY KEY, kind TEXT NOT NULL, "
                             "size INTEGER NOT NULL, header BLOB NOT NULL, data_offset INTEGER)")
        except sqlite3.Error as error:
            log.warning("head index %s unusable (%s): views are learned again by each mount", path, error)
            self._db = None

    def get(self, hashes: list[bytes]) -> dict[bytes, View]:
        found: dict[bytes, View] = {}
        if self._db is None or not hashes:
            return found
        try:
            with self._lock:
                for start in range(0, len(hashes), 500):
                    chunk = hashes[start:start + 500]
                    for hash_, kind, size, header, offset in self._db.execute(
                            "SELECT hash, kind, size, header, data_offset FROM heads WHERE hash IN "
                            f"({', '.join('?' * len(chunk))})", chunk):
                        found[bytes(hash_)] = View(kind, int(size), bytes(header), offset)
        except sqlite3.Error as error:
            log.warning("head index not read: %s", error)
        return found

    def put(self, views_: dict[bytes, View]) -> None:
        if self._db is None or not views_:
            return
        try:
            with self._lock:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO heads VALUES (?, ?, ?, ?, ?)",
                                     [(h, v.kind, v.size, v.header, v.data_offset) for h, v in views_.items()])
                self._db.execute("COMMIT")
        except sqlite3.Error as error:
            log.warning("head index not written: %s", error)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


class DataJointFiles:
    """Shared by the mount: head records, verified object files, and the parallel head reads of listings."""

    def __init__(self, config, cache, stats=None, threads: int = 16) -> None:
        self.config = config
        self.cache = cache    # the mount's ObjectCache: verified objects, as derived files
        self.index = HeadIndex(os.path.join(cache.location, INDEX_NAME))
        self.stats = stats
        self._heads: LRUCache = LRUCache(maxsize=200_000)
        self._down: TTLCache = TTLCache(maxsize=64, ttl=DOWN_TTL)   # store name -> its last failure
        self._loading: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="djfs-heads")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.index.close()

    def _count(self, name: str, amount: int = 1) -> None:
        if self.stats is not None:
            self.stats.add(name, amount)

    # -- where objects are
    def locate(self, schema: str, store_name: str, entry: Entry) -> tuple[Any, str]:
        """(store, key) of an object, from the mount's own ``stores`` configuration."""
        from ..stores import open_datajoint_store
        stores = self.config["stores"] or {}
        if store_name not in stores:
            raise DjfsError(f"store {store_name!r} is not configured (stores in the mount's configuration)")
        spec = store_spec(store_name, stores[store_name])
        store = open_datajoint_store(spec, timeout=self.config["store-timeout"], retries=self.config["store-retries"])
        return store, entry.key(schema, spec["subfolding"])

    # -- files of a row
    def files(self, schema: str, where: str, attribute, values: tuple, mtime: float) -> list[views.FileSpec]:
        """The file (none for NULL) of one attribute of a row, from its columns of the row query."""
        name, kind = attribute.name, attribute.datajoint_kind
        if values[0] is None:
            return []
        if kind == "attach":
            length, prefix = int(values[0]), bytes(values[1])
            raw_name, found, _ = prefix.partition(b"\0")
            try:
                file_name = check_attachment_name(raw_name.decode("utf-8")) if found else None
            except (CorruptObjectError, UnicodeDecodeError):
                file_name = None
            if file_name is None:
                return [self._broken(where, name, "not an attachment (no file name)")]
            size = length - len(raw_name) - 1
            return [views.FileSpec(f"{name}/{file_name}", "raw", size, mtime, views.inode_of(where, name),
                                   "datajoint", name, entry={"kind": kind, "skip": len(raw_name) + 1})]
        hash_ = bytes(values[0])
        row = dict(zip(ENTRY_COLUMNS, values[1:]))
        if row["size"] is None:
            return [self._broken(where, name, f"no entry in {TABLE_PREFIX}{attribute.store}")]
        try:
            entry = Entry.from_row((hash_, row["size"], row["attachment_name"], row["filepath"],
                                    row["contents_hash"]))
        except DjfsError as error:
            return [self._broken(where, name, str(error))]
        record = {"kind": kind, "store": attribute.store, "entry": entry, "schema": schema}
        if kind == "blob@":
            try:
                view = self.head(schema, attribute.store, entry)
            except (DjfsError, OSError) as error:
                log.warning("%s.%s: can't learn the view of its blob: %s", where, name, error)
                return [self._broken(where, name, f"view unknown: {error}", transient=True)]
            return [views.FileSpec(views.file_name(name, view.kind), view.kind, view.size, mtime,
                                   views.inode_of("dj", hash_.hex()), "datajoint", name, identity=hash_.hex(),
                                   entry=record, header=view.header, data_offset=view.data_offset)]
        file_name = entry.attachment_name if kind == "attach@" else entry.filepath.rsplit("/", 1)[-1]
        return [views.FileSpec(f"{name}/{file_name}", "raw", entry.size, mtime,
                               views.inode_of("dj", hash_.hex(), file_name), "datajoint", name,
                               identity=hash_.hex(), entry=record)]

    @staticmethod
    def _broken(where: str, name: str, error: str, transient: bool = False) -> views.FileSpec:
        return views.FileSpec(name + ".blob", "blob", 0, 0.0, views.inode_of(where, name), "datajoint", name,
                              error=error, transient=transient)

    # -- heads of blobs
    def head(self, schema: str, store: str, entry: Entry, keep: bool = True) -> View:
        """A blob's view: from memory, the host's head index, or the object's head (one read per host);
        ``keep=False`` leaves writing it to the index to the caller (a batch, see ``prefetch``)."""
        key = entry.hash
        with self._lock:
            view = self._heads.get(key)
            if view is not None:
                return view
            future = self._loading.get(key)
            owner = future is None
            if owner:
                future = self._loading[key] = Future()
        if not owner:
            return future.result()
        try:
            view = self.index.get([key]).get(key)
            if view is None:
                view = self._learn_head(schema, store, entry)
                if keep:
                    self.index.put({key: view})
        except BaseException as error:
            with self._lock:
                del self._loading[key]
            future.set_exception(error)
            raise
        with self._lock:
            self._heads[key] = view
            del self._loading[key]
        future.set_result(view)
        return view

    def _learn_head(self, schema: str, store_name: str, entry: Entry) -> View:
        with self._lock:
            down = self._down.get(store_name)
        if down is not None:  # fail fast: a listing must not wait out the store's timeout once per object
            raise StoreError(f"store {store_name!r} is not answering: {down}")
        store, key = self.locate(schema, store_name, entry)
        view = None
        try:
            for length in HEAD_READS:
                self._count("datajoint_head_reads")
                self._count("store_requests")
                prefix = store.get_range(key, 0, min(length, entry.size))
                view = views.describe_inline(prefix, entry.size)
                if view is not None or length >= entry.size:
                    break
            if view is None:
                self._count("store_requests")
                view = views.describe_inline(store.get(key), entry.size)
        except (MissingObjectError, CorruptObjectError):
            raise
        except (StoreError, OSError) as error:
            with self._lock:
                self._down[store_name] = str(error)
            raise
        assert view is not None
        return view

    def prefetch(self, rows: list[tuple[str, str, bytes, int]]) -> None:
        """Learn the views of many blobs, (schema, store, hash, size) each: those the host's index lacks by
        parallel ranged reads, kept in the index in one transaction; waits for them."""
        with self._lock:
            todo = [r for r in rows if r[2] not in self._heads]
        known = self.index.get([r[2] for r in todo])
        with self._lock:
            self._heads.update(known)
        todo = [r for r in todo if r[2] not in known][:PREFETCH_MAX]
        learned = {}
        for row, view in zip(todo, self._pool.map(lambda r: self._prefetch_one(*r), todo)):
            if view is not None:
                learned[row[2]] = view
        self.index.put(learned)

    def _prefetch_one(self, schema: str, store: str, hash_: bytes, size: int) -> View | None:
        try:
            return self.head(schema, store, Entry(hash_, int(size)), keep=False)
        except (DjfsError, OSError) as error:  # the row's own lookup reports it
            log.debug("head of %s not learned: %s", hash_.hex(), error)
            return None

    def prefetch_table(self, db, table) -> None:
        """Learn the heads of a table's blob@ values (one query per attribute, then parallel ranged reads)."""
        rows = []
        for attribute in table.heading:
            if attribute.datajoint_kind == "blob@":
                found = db.rows(f"SELECT DISTINCT e.`hash`, e.`size` FROM {table.sql_name} AS t JOIN "
                                f"`{table.schema}`.`{TABLE_PREFIX}{attribute.store}` AS e ON e.`hash` = "
                                f"t.`{attribute.name}` LIMIT {PREFETCH_MAX}")
                rows += [(table.schema, attribute.store, bytes(h), int(s)) for h, s in found]
        self.prefetch(rows)

    # -- opening
    def open(self, reader, tree, node, spec: views.FileSpec):
        """(handle, identity) of one of these files: an object is read like ``external``'s (``Reader``: the whole
        object verified into the cache, or blocks of a large one), checked against its MD5."""
        from .reader import MemoryHandle, StoredObject
        record = spec.entry
        assert record is not None
        if record["kind"] == "attach":
            data = tree.inline_blob(node.table, node.values, spec.attribute)
            return MemoryHandle(data[record["skip"]:]), views.digest_of(data)
        entry: Entry = record["entry"]
        store, key = self.locate(record["schema"], record["store"], entry)
        oid = entry.object_id
        if oid is None:  # a filepath DataJoint stored without a checksum: size-checked only, as DataJoint does
            name = hashlib.md5(f"{record['store']}\0{record['schema']}\0{entry.filepath}\0{entry.size}".encode()
                               ).hexdigest()

            def download(file: BinaryIO) -> None:
                for offset in range(0, entry.size, DOWNLOAD_STEP):
                    self._count("store_requests")
                    file.write(store.get_range(key, offset, min(DOWNLOAD_STEP, entry.size - offset)))
            return reader.open_decoded(name, "unchecked", entry.size, download), name
        stored = StoredObject(oid, entry.size, store, key)
        if record["kind"] == "blob@" and spec.data_offset is None:  # compressed: inflated once per host
            def render(file: BinaryIO) -> None:
                views.render(spec.kind, spec.header, reader.whole(stored), spec.size, file)
            return reader.open_decoded(oid.key, spec.kind, spec.size, render), oid.key
        return reader.open_stored(stored, spec.header, spec.data_offset or 0, spec.size), oid.key
