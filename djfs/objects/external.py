"""External objects: the schema's ``~external`` table, uploads, downloads and garbage collection.

An ``external`` attribute holds the 43-character hash of its value; the value itself, serialized exactly as
a blob, lives in a store (``djfs.stores``) at ``<folder>/<h[0:2]>/<h[2:4]>/<hash>``. ``~external`` has one
entry per object::

    hash       char(43)   base64url SHA-256 of: object || 0x00 || origin         (primary key)
    store      ''  or the named store (``external-<name>``)
    folder     the schema's folder (file) or bucket (S3) when the object was stored
    size       bytes of the stored object
    origin     UTF-8 text: full table name, newline, primary key as canonical JSON
    status     stored | deleted
    timestamp  when stored, or when marked deleted
    compressed whether the stored blob is ZL123-compressed
    view       how a file system shows it: npy | bytes | blob
    view_size  exact size of that file
    view_header the .npy header (npy view), prepended to the data
    data_offset where the file's data starts inside the stored object, when it is a plain byte range

``npy@`` / ``npy@<store>`` attributes use the same entries, lifecycle and hash rule; only the serialization
differs: the object is a ``.npy`` file of the array in its own memory order (``djfs.npy``), shown by the mount
byte for byte (view ``npy``, ``view_header`` = its header, ``data_offset`` = the header's length).  The bytes say
which serialization an object is (``deserialize``).

Writing: values over ``STAGE_THRESHOLD`` are written to a hidden file of a file store *while* they are hashed
(``Store.stage``) and renamed to their hash at upload, so a large insert reads its data once; elsewhere (S3) they
are hashed first and streamed to the store at upload.

Lifecycle: objects are uploaded before the transaction that inserts their entries and rows, so a failure
leaves an unreferenced object (swept by ``gc``), never a row pointing at nothing. While its objects are in
flight (uploaded, entries not yet committed) an insert holds a named lock per object on its database session
(``GET_LOCK('djfs:<hash>')``); gc leaves an object alone while its lock is held, so no grace period is needed to
protect inserts, and a crashed inserter's locks vanish with its session. Deleting rows marks their
entries ``deleted`` in the deleting transaction; inserting the same value for the same key again revives it.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import json
import logging
import os
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from .. import blob, hashing, npy
from ..errors import CorruptObjectError, DjfsError, MissingObjectError, StoreError
from ..settings import Config

if TYPE_CHECKING:
    from ..relational.condition import Where
    from ..connection import Connection
    from ..relational.expression import QueryExpression as Table
    from .gc import GCReport
    from ..stores.base import Staged

log = logging.getLogger(__name__)

UPLOAD_LOCK = "djfs:{}"          # named lock (MariaDB/MySQL GET_LOCK, <= 64 chars) an inserter holds per object
PROGRESS_THRESHOLD = 64 << 20   # transfers larger than this show a progress bar on a terminal
TRUSTED_SIZE = 64 << 20         # larger sizes from ~external are checked with the store before allocating
STAGE_THRESHOLD = 64 << 20      # larger objects are written while hashed where the store can (file stores)
EXTERNAL_TABLE = "~external"

DEFINITION = f"""
CREATE TABLE IF NOT EXISTS `{{database}}`.`{EXTERNAL_TABLE}` (
  `hash` char(43) CHARACTER SET ascii COLLATE ascii_bin NOT NULL COMMENT "base64url sha-256 of object, origin",
  `store` varchar(32) CHARACTER SET ascii NOT NULL DEFAULT "" COMMENT "store name, empty for the default",
  `folder` varchar(255) NOT NULL COMMENT "folder or bucket of the schema when stored",
  `size` bigint unsigned NOT NULL COMMENT "bytes of the stored object",
  `origin` varbinary(3072) NOT NULL COMMENT "hashed after the object: table name and primary key",
  `status` enum("stored","deleted") NOT NULL DEFAULT "stored",
  `timestamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
  `compressed` tinyint NOT NULL DEFAULT 0,
  `view` enum("npy","bytes","blob") NOT NULL DEFAULT "blob" COMMENT "how the mount shows the value",
  `view_size` bigint unsigned NOT NULL COMMENT "exact size of the mount's file",
  `view_header` varbinary(4096) NOT NULL DEFAULT "" COMMENT "bytes before the data (npy header)",
  `data_offset` bigint unsigned NULL COMMENT "start of the file's data in the object, if a plain range",
  PRIMARY KEY (`hash`),
  KEY (`status`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin COMMENT "external storage tracking"
"""
COLUMNS = ("hash", "store", "folder", "size", "origin", "status", "compressed", "view", "view_size",
           "view_header", "data_offset")


def _canonical(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta, decimal.Decimal)):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def origin_of(full_table_name: str, key: dict, store: str = "") -> bytes:
    """The bytes hashed after an object: ``<full table name>\\n<key as canonical JSON>[\\n<store>]``."""
    text = full_table_name + "\n" + json.dumps({k: _canonical(v) for k, v in sorted(key.items())},
                                              sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if store:
        text += "\n" + store
    return text.encode("utf-8")


@dataclass
class View:
    """How the mount shows one value as a file, decided when it is stored."""
    kind: str                 # npy | bytes | blob
    size: int
    header: bytes = b""
    data_offset: int | None = None


def view_of(value: Any, packed: "blob.Packed") -> View:
    """The file view of a value: a real ``.npy`` for numeric arrays, raw for bytes, else the blob."""
    if packed.array is not None:
        array = packed.array
        return View("npy", len(array.npy_header) + packed.size - array.data_offset, array.npy_header,
                    array.data_offset)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.ndim >= 1 and not value.dtype.names:
        header = blob.npy_header(value.dtype.newbyteorder("<") if value.dtype.byteorder == ">" else value.dtype,
                                 value.shape)
        return View("npy", len(header) + value.nbytes, header, None)
    if isinstance(value, (bytes, bytearray)):
        offset = None if packed.compressed else packed.size - len(value)
        return View("bytes", len(value), b"", offset)
    if packed.compressed:
        return View("blob", len(blob.pack(value, compress=False)), b"", None)
    return View("blob", packed.size, b"", 0)


def serialize(value: Any, serialization: str = "blob") -> tuple["blob.Packed | npy.NpyPacked", View]:
    """An external value's stored bytes (streamed) and its file view: DataJoint's blob (``external``) or a
    ``.npy`` served byte for byte (``npy@``, see ``djfs.npy``)."""
    if serialization == "npy":
        packed = npy.serialize(value)
        return packed, View("npy", packed.size, packed.header, len(packed.header))
    packed = blob.serialize(value)
    return packed, view_of(value, packed)


def deserialize(data: bytearray | bytes, squeeze: bool = False) -> Any:
    """The value of an object's verified bytes; they say which serialization they are (``djfs.npy``)."""
    return npy.decode(data, squeeze) if npy.is_npy(data) else blob.unpack(data, squeeze=squeeze)


@dataclass
class PendingObject:
    hash: str
    store: str
    packed: "blob.Packed | npy.NpyPacked"
    origin: bytes
    view: View
    sums: list[int] | None = None   # block checksums (XXH3) of the packed bytes: checks later range reads
    uploaded: bool = False   # put by this insert
    locked: bool = False     # this session holds its upload lock (gc leaves the object alone)
    staged: "Staged | None" = None  # written while hashed (file stores), renamed to its key by upload


@dataclass
class Pending:
    """The external values of one insert: hashed, then uploaded, then committed with the rows."""
    external: "ExternalTable"
    objects: dict[tuple[int, str], PendingObject] = field(default_factory=dict)

    def hash_of(self, index: int, name: str) -> str:
        return self.objects[(index, name)].hash

    def unique(self) -> list[PendingObject]:
        return list({obj.hash: obj for obj in self.objects.values()}.values())

    def upload(self) -> None:
        self.external.upload(self.unique())

    def commit(self) -> None:
        self.external.commit(self.unique())

    def release(self) -> None:
        """Give up the upload locks (after the insert's transaction ended, committed or not), and remove what was
        staged but not published (the insert failed before its upload)."""
        self.external.release(self.unique())
        for obj in self.objects.values():
            if obj.staged is not None:
                obj.staged.discard()


class ExternalTable:
    """The ``~external`` table of one schema and the objects it tracks."""

    def __init__(self, connection: "Connection", database: str, config: Config | None = None) -> None:
        self.connection = connection
        self.database = database
        self._config = config
        self._folder: str | None = None
        self._declared = False
        self._lock = threading.Lock()

    @property
    def config(self) -> Config:
        if self._config is not None:
            return self._config
        from .. import config
        return config

    @property
    def full_table_name(self) -> str:
        return f"`{self.database}`.`{EXTERNAL_TABLE}`"

    def __repr__(self) -> str:
        return f"ExternalTable({self.full_table_name})"

    @functools.cached_property
    def datajoint(self):
        """DataJoint 0.12-0.14's ``~external_<store>`` tables of this schema (``djfs.objects.external_dj``)."""
        from .external_dj import DataJointStores
        return DataJointStores(self.connection, self.database)

    def __getitem__(self, store: str):
        """``schema.external[store]``, as in DataJoint: the tracking table of one of DataJoint's stores."""
        return self.datajoint[store]

    # -- declaration and configuration
    def declare(self) -> None:
        """Create the table if it is missing: DDL, so never inside a transaction (the connection refuses)."""
        if not self._declared:
            if not self.exists():
                self.connection.query(DEFINITION.format(database=self.database))
            self._declared = True

    def exists(self) -> bool:
        return self.connection.query("SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND "
                                     "table_name = %s", (self.database, EXTERNAL_TABLE)).fetchone() is not None

    def set_folder(self, folder: str) -> None:
        from ..stores import validate_folder
        self._folder = validate_folder(folder)
        self.declare()

    @property
    def folder(self) -> str:
        if self._folder is None:
            raise StoreError(f"schema {self.database!r} has no external storage folder: call "
                             f"schema.set_external_storage('<folder or bucket>') first")
        return self._folder

    def store(self, name: str = "", folder: str | None = None):
        """The store object of the default ('') or a named store, for this schema's folder."""
        from ..stores import configured_store, store_settings
        store_settings(self.config, name, self.database)  # a missing setting is named before a missing folder
        return configured_store(self.config, name, folder or self.folder, self.database)

    def cache(self):
        from ..cache import open_cache
        location = self.config["cache-location"]
        return open_cache(location, self.config["cache-size"]) if location else None

    # -- insert
    def prepare(self, table: "Table", rows: list[dict], names: list[str]) -> Pending:
        """Serialize and hash every external value of an insert (no transfer yet)."""
        self.declare()
        pending = Pending(self)
        key_names = table.primary_key
        jobs = []
        for index, row in enumerate(rows):
            for name in names:
                value = row.get(name)
                if value is None:
                    continue
                missing = [k for k in key_names if k not in row]
                if missing:
                    raise DjfsError(f"{table.full_table_name}: the primary key ({missing[0]!r}) is needed to "
                                    "store external values")
                store = table.heading[name].store or ""
                origin = origin_of(table.full_table_name, {k: row[k] for k in key_names}, store)
                jobs.append((index, name, value, store, origin, table.heading[name].serialization))
        self.store(jobs[0][3]) if jobs else None  # fail early, naming the missing setting

        def prepare_one(job):
            index, name, value, store, origin, serialization = job
            try:
                packed, view = serialize(value, serialization)
            except Exception as error:
                raise type(error)(f"{table.full_table_name}.{name}: {error}") from None
            state, sums = hashing.hasher(), hashing.BlockSums()

            def observe(chunk) -> None:
                state.update(chunk)
                sums.update(chunk)
            staged = None
            if packed.size >= STAGE_THRESHOLD:  # write while hashing, where the store can name it afterwards
                staged = self.store(store).stage(packed.chunks(), packed.size, observe)
            if staged is None:
                for chunk in packed.chunks():
                    observe(chunk)
            return (index, name), PendingObject(hashing.finish(state, origin), store, packed, origin, view,
                                                sums=sums.finish(), staged=staged)

        for key, obj in self._parallel(prepare_one, jobs):
            pending.objects[key] = obj
        return pending

    def _parallel(self, function, items: list, parallel: bool = True) -> list:
        """``map`` over a shared thread pool: transfers to a remote store overlap their latencies."""
        if len(items) <= 1 or not parallel:
            return [function(item) for item in items]
        return list(_executor(self.config["transfer-threads"]).map(function, items))

    def _progress(self, total: int, description: str):
        from tqdm.auto import tqdm
        enabled = self.config["progress"] and total >= PROGRESS_THRESHOLD and sys.stderr.isatty()
        return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description,
                    disable=not enabled, leave=False)

    def upload(self, objects: list[PendingObject]) -> None:
        """Put every object in its store (skipping those already there with the right size).

        Each object's upload lock is taken first and held until ``release``: from before the object exists
        until its entry is committed, gc can see that it is in flight.
        """
        if not objects:
            return
        self._lock_uploads(objects)
        known = self._entries([obj.hash for obj in objects])
        total = sum(obj.packed.size for obj in objects)
        with self._progress(total, "upload") as bar:
            def upload_one(obj: PendingObject) -> None:
                store = self.store(obj.store)
                key = hashing.object_path(obj.hash)
                entry = known.get(obj.hash)
                staged, obj.staged = obj.staged, None
                if entry is not None and entry["folder"] == self.folder \
                        and _stored_size(store, key) == obj.packed.size:
                    if staged is not None:
                        staged.discard()
                    bar.update(obj.packed.size)
                    return
                if staged is not None:
                    staged.publish(key)
                    bar.update(obj.packed.size)
                else:
                    store.put(key, _counting(obj.packed.chunks(), bar), size=obj.packed.size)
                obj.uploaded = True
            self._parallel(upload_one, objects)
        self._record_sums(objects)

    def _record_sums(self, objects: list[PendingObject]) -> None:
        """Keep the block checksums of what this host wrote: the mount checks byte-range reads with them."""
        cache = self.cache()
        if cache is None:
            return
        from ..cache import CacheError
        from ..cache.objects import RECORD_SUMS_OVER
        for obj in objects:
            if obj.sums is not None and obj.packed.size > RECORD_SUMS_OVER:
                try:
                    cache.put_sums(hashing.object_id(obj.hash, obj.origin), obj.packed.size, obj.sums)
                except CacheError as error:
                    log.warning("block sums of %s not recorded: %s", obj.hash, error)

    def commit(self, objects: list[PendingObject]) -> None:
        """Insert or revive the entries; runs inside the insert's transaction."""
        if not objects:
            return
        row = "(%s, %s, %s, %s, %s, 'stored', %s, %s, %s, %s, %s)"
        for start in range(0, len(objects), 500):
            batch = objects[start:start + 500]
            values = [v for obj in batch for v in (
                obj.hash, obj.store, self.folder, obj.packed.size, obj.origin, int(obj.packed.compressed),
                obj.view.kind, obj.view.size, obj.view.header, obj.view.data_offset)]
            self.connection.query(
                f"INSERT INTO {self.full_table_name} (hash, store, folder, size, origin, status, compressed, view, "
                "view_size, view_header, data_offset) VALUES " + ", ".join([row] * len(batch)) +
                " ON DUPLICATE KEY UPDATE status = 'stored', timestamp = CURRENT_TIMESTAMP", values,
                context=f"insert into {self.full_table_name}")

        def ensure_present(obj: PendingObject) -> None:
            # We hold the entry's lock now, so gc can no longer remove the object. One this insert did not
            # upload (its entry existed), or uploaded without holding its upload lock all along (another
            # session had it, or the connection was lost), may have been removed by gc: put it back.
            store = self.store(obj.store)
            key = hashing.object_path(obj.hash)
            if not store.exists(key):
                log.info("object %s vanished before commit (gc); uploading it again", obj.hash)
                store.put(key, obj.packed.chunks(), size=obj.packed.size)
        held = self._held_upload_locks(objects)
        self._parallel(ensure_present, [obj for obj in objects if not (obj.uploaded and obj.hash in held)])

    # -- upload locks ---------------------------------------------------------------------------------------

    def _lock_uploads(self, objects: list[PendingObject]) -> None:
        """Take the upload lock of each object, without waiting: one held elsewhere is checked at commit."""
        for start in range(0, len(objects), 500):
            batch = objects[start:start + 500]
            names = [UPLOAD_LOCK.format(obj.hash) for obj in batch]
            got = self.connection.query("SELECT " + ", ".join(["GET_LOCK(%s, 0)"] * len(names)), names,
                                        context="upload locks").fetchone()
            for obj, ok in zip(batch, got):
                obj.locked = ok == 1

    def _held_upload_locks(self, objects: list[PendingObject]) -> set[str]:
        """The hashes whose upload lock this session still holds (a reconnect loses them all)."""
        held: set[str] = set()
        mine = [obj for obj in objects if obj.locked]
        for start in range(0, len(mine), 500):
            batch = mine[start:start + 500]
            owners = self.connection.query(
                "SELECT CONNECTION_ID(), " + ", ".join(["IS_USED_LOCK(%s)"] * len(batch)),
                [UPLOAD_LOCK.format(obj.hash) for obj in batch], context="upload locks").fetchone()
            held.update(obj.hash for obj, owner in zip(batch, owners[1:]) if owner == owners[0])
        return held

    def release(self, objects: list[PendingObject]) -> None:
        """Release this session's upload locks (a lost session has released them already)."""
        mine = [obj for obj in objects if obj.locked]
        for start in range(0, len(mine), 500):
            batch = mine[start:start + 500]
            try:
                self.connection.query("SELECT " + ", ".join(["RELEASE_LOCK(%s)"] * len(batch)),
                                      [UPLOAD_LOCK.format(obj.hash) for obj in batch], context="upload locks")
            except DjfsError as error:  # the session is gone, and its locks with it
                log.debug("upload locks not released: %s", error)
            for obj in batch:
                obj.locked = False

    def upload_in_flight(self, hash_: str) -> bool:
        """Whether some session holds the object's upload lock (an insert between upload and commit)."""
        (owner,) = self.connection.query("SELECT IS_USED_LOCK(%s)", (UPLOAD_LOCK.format(hash_),),
                                         context="upload locks").fetchone()
        return owner is not None

    def mark_deleted(self, full_table_name: str, where: "Where", names: list[str]) -> None:
        """Mark the entries of the rows of ``full_table_name`` matching ``where`` deleted (the one path for
        deletes and replaces; the timestamp says since when, which gc's grace period counts from)."""
        for name in names:
            self.connection.query(
                f"UPDATE {self.full_table_name} SET status = 'deleted', timestamp = CURRENT_TIMESTAMP WHERE hash IN "
                f"(SELECT `{name}` FROM {full_table_name} WHERE {where.sql})", where.args)

    # -- fetch
    def _entries(self, hashes: Iterable[str]) -> dict[str, dict]:
        hashes = [hashing.validate(h) for h in hashes]
        found: dict[str, dict] = {}
        for start in range(0, len(hashes), 1000):
            chunk = hashes[start:start + 1000]
            rows = self.connection.query(
                f"SELECT {', '.join(COLUMNS)} FROM {self.full_table_name} WHERE hash IN "
                f"({', '.join(['%s'] * len(chunk))})", chunk, as_dict=True).fetchall()
            for row in rows:
                found[row["hash"]] = row
        return found

    def entry(self, hash_: str) -> dict:
        found = self._entries([hash_])
        if hash_ not in found:
            raise MissingObjectError(f"{self.full_table_name} has no entry {hash_}")
        return found[hash_]

    def get_many(self, hashes: list[str], squeeze: bool = False) -> dict[str, Any]:
        """Values of many objects, fetched in parallel; each verified against its hash."""
        entries = self._entries(hashes)
        missing = [h for h in hashes if h not in entries]
        if missing:
            raise MissingObjectError(f"{self.full_table_name} has no entry {missing[0]}")
        total = sum(entries[h]["size"] for h in hashes)
        with self._progress(total, "download") as bar:
            def load(hash_: str) -> tuple[str, Any]:
                data = self.read_object(entries[hash_], bar)
                return hash_, deserialize(data, squeeze)
            # Remote reads overlap their latencies in threads; file reads only gain from threads when they are
            # hashed (hashing releases the GIL), else threads only add overhead (measured: 6x slower, 20 x 8 MiB).
            remote = self._verify() or any(not self._is_file_store(entries[h]["store"]) for h in hashes)
            return dict(self._parallel(load, hashes, parallel=remote))

    def get(self, hash_: str, squeeze: bool = False) -> Any:
        return self.get_many([hash_], squeeze)[hash_]

    def read_object(self, entry: dict, bar=None) -> bytearray:
        """The bytes of one object, checked against its hash (``verify-reads = size``: its size only), through
        the cache when one is configured."""
        from ..cache.through import read_object
        hash_ = hashing.validate(entry["hash"])
        size, origin = int(entry["size"]), bytes(entry["origin"])
        store = self.store(entry["store"], entry["folder"])
        key = hashing.object_path(hash_)
        if size > TRUSTED_SIZE:
            # a size read from the database is not worth a huge allocation on its own: ask the store
            stored = store.size(key)
            if stored != size:
                raise CorruptObjectError(f"object {hash_} in {store.describe()} has {stored} bytes, its "
                                         f"entry in {self.full_table_name} says {size}")
        buffer = read_object(store, key, hashing.object_id(hash_, origin), size, self.cache(), self._verify())
        if bar is not None:
            bar.update(size)
        return buffer

    def _is_file_store(self, name: str) -> bool:
        location = self.config.store_spec(name)["location"] or ""
        return location.startswith("file://")

    def _verify(self) -> bool:
        """Whether reads are checked against the content hash (the default) or only for size."""
        return self.config["verify-reads"] != "size"

    # -- garbage collection
    def referencing_columns(self) -> list[tuple[str, str, str]]:
        rows = self.connection.query(
            "SELECT table_schema, table_name, column_name FROM information_schema.key_column_usage "
            "WHERE referenced_table_schema = %s AND referenced_table_name = %s",
            (self.database, EXTERNAL_TABLE)).fetchall()
        return [tuple(row) for row in rows]

    def _unreferenced_condition(self) -> str:
        clauses = [f"NOT EXISTS (SELECT 1 FROM `{schema}`.`{table}` AS r WHERE r.`{column}` = e.hash)"
                   for schema, table, column in self.referencing_columns()]
        return " AND ".join(clauses) or "TRUE"

    def gc(self, dry_run: bool = False, grace: float = 3600.0) -> "GCReport":
        """Remove objects of deleted or never-referenced entries, then the entries; sweep orphan objects.

        ``grace`` (seconds) protects inserts in flight: an object uploaded but not yet committed, or an
        entry committed a moment ago, is younger than the grace period and left alone.
        """
        from .gc import collect
        return collect(self, dry_run=dry_run, grace=grace)


_pool: tuple[int, int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _executor(threads: int) -> ThreadPoolExecutor:
    """One transfer pool per process (made lazily, so never before a FUSE daemon forks)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] != threads:
            _pool = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="djfs-transfer"))
        return _pool[2]


def _stored_size(store, key: str) -> int | None:
    """The size of a stored object, or None if it is missing: one request, no window between an ``exists``
    and a ``size`` in which gc could remove the object."""
    try:
        return store.size(key)
    except MissingObjectError:
        return None


def _counting(chunks: Iterable, bar) -> Iterable:
    for chunk in chunks:
        yield chunk
        bar.update(len(chunk))
