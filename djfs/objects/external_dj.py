"""DataJoint 0.12-0.14's own external types: ``blob@store``, ``attach@store``, ``filepath@store``, in-table ``attach``.

Stored exactly as datajoint-python 0.14 stores them, so a lab's existing pipelines work both ways:

* a ``blob@``/``attach@``/``filepath@`` column is ``binary(16)`` (comment ``:blob@<store>:...``) holding the MD5 of
  the object as a UUID, with a foreign key into the schema's ``~external_<store>`` table (``DEFINITION``);
* the objects live in DataJoint's ``stores`` (``djfs.config['stores']``, same keys as ``dj.config['stores']``):
  a blob at ``<database>/<subfolded hex>/<hex>`` (the packed blob, MD5 of those bytes), an attachment at the
  same place plus ``.<attachment name>`` (the file's bytes, MD5 of ``name + NUL + bytes``), a filepath at its
  path relative to the store's ``stage`` (hash: MD5 of that path; ``contents_hash``: MD5 of the bytes);
* an in-table ``attach`` is a ``longblob`` holding ``name + NUL + bytes``.

What differs per kind (how a value becomes bytes, its hash, where its object lives, what a fetch returns) is one
small ``Kind`` each (``KINDS``); the lifecycle is shared with ``external``: objects are uploaded before the insert's
transaction, their ``~external_<store>`` entries and the rows go in one transaction, under the same per-object
upload locks gc respects; so a failure leaves at most an unreferenced object, never a row pointing at nothing.
Every object is checked against its MD5 before it is returned or written where the caller will find it.

Garbage collection is DataJoint's: ``schema.external[store].delete(delete_external_files=True|False)`` removes
the entries no row refers to (``unused()``), and their objects; each entry is removed and its object deleted in
one transaction, so an object that can't be removed keeps its entry and is reported.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import secrets
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import blob
from ..errors import CorruptObjectError, DataError, DjfsError, IntegrityError, MissingObjectError, StoreError
from .external import TRUSTED_SIZE, ExternalTable
from ..hashing import ObjectId
from ..settings import Config, store_spec

if TYPE_CHECKING:
    from ..connection import Connection
    from .gc import GCReport
    from ..relational.table import Table

log = logging.getLogger(__name__)

TABLE_PREFIX = "~external_"
CHUNK = 16 << 20  # bytes per read when streaming an object or a file
OBJECT_NAME = re.compile(r"[0-9a-f]{32}")  # a blob's or attachment's object name starts with its MD5 in hex

DEFINITION = """CREATE TABLE IF NOT EXISTS `{database}`.`~external_{store}` (
`hash` binary(16) NOT NULL COMMENT ":uuid:hash of contents (blob), of filename + contents (attach), or relative filepath (filepath)",
`size` bigint unsigned NOT NULL COMMENT "size of object in bytes",
`attachment_name` varchar(255) DEFAULT NULL COMMENT "the filename of an attachment",
`filepath` varchar(1000) DEFAULT NULL COMMENT "relative filepath or attachment filename",
`contents_hash` binary(16) DEFAULT NULL COMMENT ":uuid:used for the filepath datatype",
`timestamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP COMMENT "automatic timestamp",
PRIMARY KEY (`hash`)
) ENGINE=InnoDB, COMMENT "external storage tracking\""""
COLUMNS = "hash, size, attachment_name, filepath, contents_hash"


# -- hashes and names ---------------------------------------------------------------------------------------------

def md5(chunks: Iterable[bytes | memoryview], prefix: bytes = b"") -> bytes:
    state = hashlib.md5(prefix)
    for chunk in chunks:
        state.update(chunk)
    return state.digest()


def file_chunks(path: str | os.PathLike, size: int | None = None) -> Iterator[bytes]:
    """A file's bytes in bounded pieces; raises if it does not have ``size`` bytes (it changed meanwhile)."""
    done = 0
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            done += len(chunk)
            yield chunk
    if size is not None and done != size:
        raise DataError(f"{os.fspath(path)!r} changed while it was read ({done} bytes, {size} expected)")


def check_attachment_name(name: object) -> str:
    """An attachment's file name from the database: one plain name, never a path."""
    if (not isinstance(name, str) or name in ("", ".", "..") or len(name) > 255
            or re.search(r"[/\\\x00-\x1f\x7f]", name)):
        raise CorruptObjectError(f"refusing attachment name {str(name)[:80]!r}: not a plain file name")
    return name


def check_relative_path(path: object) -> str:
    """A filepath's relative path from the database: '/'-separated names, none '.', '..' or hidden."""
    from ..stores.base import NAME_KEYS
    if not NAME_KEYS.is_valid(path):
        raise CorruptObjectError(f"refusing relative path {str(path)[:100]!r} of a filepath: {NAME_KEYS.rule}")
    return path  # type: ignore[return-value]


def subfold(name: str, folds: tuple[int, ...]) -> list[str]:
    """DataJoint's subfolding: ``subfold('abcdef', (2, 3))`` -> ``['ab', 'cde']``."""
    parts, start = [], 0
    for fold in folds:
        parts.append(name[start:start + fold].lower())
        start += fold
    return parts


@dataclass
class Entry:
    """One row of ``~external_<store>``: what its object is, where it lives and how it is checked."""
    hash: bytes
    size: int
    attachment_name: str | None = None
    filepath: str | None = None
    contents_hash: bytes | None = None

    @classmethod
    def from_row(cls, row: tuple) -> "Entry":
        hash_, size, name, path, contents = row
        entry = cls(bytes(hash_), int(size), name, path, bytes(contents) if contents is not None else None)
        if len(entry.hash) != 16 or (entry.contents_hash is not None and len(entry.contents_hash) != 16):
            raise CorruptObjectError(f"malformed hash {entry.hash.hex()[:40]} in a DataJoint external table")
        if entry.attachment_name is not None:
            check_attachment_name(entry.attachment_name)
        if entry.filepath is not None:
            check_relative_path(entry.filepath)
            if md5([], entry.filepath.encode()) != entry.hash:
                raise CorruptObjectError(f"the entry of filepath {entry.filepath!r} does not match its hash")
        return entry

    @property
    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.hash)

    def key(self, database: str, folds: tuple[int, ...]) -> str:
        """The object's name in its store (DataJoint's ``_make_uuid_path`` / ``_make_external_filepath``)."""
        if self.filepath is not None:
            return self.filepath
        hex_ = self.hash.hex()
        name = "/".join([database, *subfold(hex_, folds), hex_])
        return f"{name}.{self.attachment_name}" if self.attachment_name is not None else name

    @property
    def object_id(self) -> ObjectId | None:
        """What the cache and the readers verify the object with (MD5); None for a filepath DataJoint stored
        without a checksum. Keyed by kind and MD5: a blob and an attachment can't share a cache entry."""
        prefix, expected = self.check
        if expected is None:
            return None
        kind = "a" if self.attachment_name is not None else "f" if self.filepath is not None else "b"
        return ObjectId(f"dj{kind}-{expected.hex()}", expected, hashlib.md5, prefix)

    @property
    def check(self) -> tuple[bytes, bytes | None]:
        """(bytes hashed before the object, the MD5 it must have); None: size-checked only (a filepath whose
        checksum DataJoint skipped)."""
        if self.attachment_name is not None:
            return self.attachment_name.encode() + b"\0", self.hash
        if self.filepath is not None:
            return b"", self.contents_hash
        return b"", self.hash


# -- the kinds ----------------------------------------------------------------------------------------------------

@dataclass
class Upload:
    """An object an insert puts in a store before its transaction, and the entry it then commits."""
    entry: Entry
    store: str
    chunks: Any                  # () -> iterable of bytes: the object, read again if it must be put again
    must_not_differ: bool = False  # a filepath: an entry of the same path must have the same contents
    uploaded: bool = False
    locked: bool = False

    @property
    def hash(self) -> str:
        """The name of its upload lock (shared with ``external``'s objects)."""
        return self.entry.hash.hex()


class Kind:
    """One of DataJoint's kinds: how a value is stored (``encode``) and what a fetch returns (``decode``)."""
    name = ""
    external = True

    def encode(self, value: Any, store: str, spec: dict, where: str) -> tuple[bytes, Upload | None]:
        """(the column's value, the object to upload or None)."""
        raise NotImplementedError

    def decode(self, tracking: "DataJointExternal | None", column: bytes, entry: Entry | None, squeeze: bool,
               download_path: str) -> Any:
        raise NotImplementedError


def datajoint_pack(value: Any) -> bytes:
    """The blob exactly as DataJoint 0.14 packs it (compressed at zlib's default level whenever that is shorter
    than 1000+ bytes), so the same value has the same MD5, and is the same object, whoever stored it."""
    raw = blob.pack(value, compress=False)
    if len(raw) > blob.COMPRESS_MIN:
        compressed = blob.ZLIB_PREFIX + len(raw).to_bytes(8, "little") + zlib.compress(raw)
        if len(compressed) < len(raw):
            return compressed
    return raw


class BlobKind(Kind):
    name = "blob@"

    def encode(self, value, store, spec, where):
        try:
            packed = datajoint_pack(value)
        except Exception as error:
            raise type(error)(f"{where}: {error}") from None
        entry = Entry(md5([packed]), len(packed))
        return entry.hash, Upload(entry, store, lambda: (packed,))

    def decode(self, tracking, column, entry, squeeze, download_path):
        return blob.unpack(tracking.read(entry), squeeze=squeeze)


def _local_path(path: Any, where: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"{where}: expected the path of a file, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{where}: {os.fspath(path)!r} is not a file")
    return path


def attachment_target(download_path: str, name: str, checksum: bytes, prefix: bytes) -> tuple[Path, bool]:
    """Where DataJoint puts an attachment: ``<download_path>/<name>`` or, if a different file is there, the first
    ``<stem>_0000<suffix>``, ``_0001``... that is free or identical; (path, whether an identical file is there)."""
    target = Path(download_path) / name
    if not target.is_file():
        return target, False
    for number in itertools.count():
        candidate = target if number == 0 else target.parent / f"{target.stem}_{number - 1:04x}{target.suffix}"
        if not candidate.is_file():
            return candidate, False
        if md5(file_chunks(candidate), prefix) == checksum:
            return candidate, True
    raise AssertionError("unreachable")


def write_verified(path: Path, chunks: Iterable[bytes], size: int, check: tuple[bytes, bytes | None],
                   what: str) -> None:
    """Write a file next to ``path`` and rename it into place only once its size and MD5 are right."""
    prefix, expected = check
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.djfs"
    state, done = hashlib.md5(prefix), 0
    try:
        with open(temporary, "xb") as file:
            for chunk in chunks:
                file.write(chunk)
                state.update(chunk)
                done += len(chunk)
        if done != size or (expected is not None and state.digest() != expected):
            raise CorruptObjectError(f"{what} does not match its hash (corrupted or tampered): not written to "
                                     f"{os.fspath(path)!r}")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class AttachKind(Kind):
    name = "attach@"

    def encode(self, value, store, spec, where):
        path = _local_path(value, where)
        name, size = path.name, path.stat().st_size
        prefix = name.encode() + b"\0"
        entry = Entry(md5(file_chunks(path, size), prefix), size, attachment_name=name)

        def chunks():  # hashed again while uploaded: a file changed since is refused, not stored
            state = hashlib.md5(prefix)
            for chunk in file_chunks(path, size):
                state.update(chunk)
                yield chunk
            if state.digest() != entry.hash:
                raise DataError(f"{where}: {os.fspath(path)!r} changed while it was stored")
        return entry.hash, Upload(entry, store, chunks)

    def decode(self, tracking, column, entry, squeeze, download_path):
        target, present = attachment_target(download_path, entry.attachment_name, entry.hash, entry.check[0])
        if not present:
            tracking.download(entry, target)
        return str(target)


class InlineAttachKind(Kind):
    """``attach`` without a store: ``name + NUL + bytes`` in the row's own ``longblob``."""
    name = "attach"
    external = False

    def encode(self, value, store, spec, where):
        path = _local_path(value, where)
        return path.name.encode() + b"\0" + path.read_bytes(), None

    def decode(self, tracking, column, entry, squeeze, download_path):
        column = bytes(column)
        raw_name, _, data = column.partition(b"\0")
        name = check_attachment_name(raw_name.decode("utf-8", "replace"))
        checksum = md5([column])
        target, present = attachment_target(download_path, name, checksum, name.encode() + b"\0")
        if not present:
            write_verified(target, (data,), len(data), (name.encode() + b"\0", checksum), f"attachment {name!r}")
        return str(target)


class FilepathKind(Kind):
    name = "filepath@"

    def encode(self, value, store, spec, where):
        path = _local_path(value, where)
        stage = spec.get("stage")
        if not stage:
            raise DataError(f"{where}: store {store!r} has no 'stage', which filepath@{store} needs")
        try:
            relative = path.absolute().relative_to(Path(stage).absolute()).as_posix()
        except ValueError:
            raise DataError(f"{where}: the path {os.fspath(path)!r} is not in stage {stage!r}") from None
        check_relative_path(relative)
        size = path.stat().st_size
        contents = md5(file_chunks(path, size))
        entry = Entry(md5([], relative.encode()), size, filepath=relative, contents_hash=contents)

        def chunks():
            state = hashlib.md5()
            for chunk in file_chunks(path, size):
                state.update(chunk)
                yield chunk
            if state.digest() != contents:
                raise DataError(f"{where}: {os.fspath(path)!r} changed while it was stored")
        return entry.hash, Upload(entry, store, chunks, must_not_differ=True)

    def decode(self, tracking, column, entry, squeeze, download_path):
        stage = tracking.spec.get("stage") or download_path
        target = Path(stage).absolute() / entry.filepath
        prefix, expected = entry.check
        if target.is_file() and target.stat().st_size == entry.size and (
                expected is None or md5(file_chunks(target), prefix) == expected):
            return str(target)
        tracking.download(entry, target)
        return str(target)


KINDS: dict[str, Kind] = {kind.name: kind for kind in (BlobKind(), AttachKind(), InlineAttachKind(), FilepathKind())}


# -- one store's tracking table -------------------------------------------------------------------------------

class DataJointExternal:
    """``~external_<store>`` of one schema (``schema.external[store]``) and the objects it tracks."""

    # the upload-lock protocol and the transfer pool are those of ``external``: gc of either kind respects both
    _lock_uploads = ExternalTable._lock_uploads
    _held_upload_locks = ExternalTable._held_upload_locks
    release = ExternalTable.release
    upload_in_flight = ExternalTable.upload_in_flight
    _parallel = ExternalTable._parallel

    def __init__(self, connection: "Connection", database: str, store: str, config: Config | None = None) -> None:
        self.connection = connection
        self.database = database
        self.name = store
        self._config = config
        self._declared = False
        self.spec  # an unknown or misconfigured store fails here, naming it

    config = ExternalTable.config
    cache = ExternalTable.cache
    _verify = ExternalTable._verify

    @property
    def spec(self) -> dict:
        stores = self.config["stores"] or {}
        if self.name not in stores:
            raise StoreError(f"store {self.name!r} is requested but not configured (djfs.config['stores'])")
        try:
            return store_spec(self.name, stores[self.name])  # again: the mapping may have been edited in place
        except ValueError as error:
            raise StoreError(f"bad configuration key 'stores': {error}") from None

    @property
    def table_name(self) -> str:
        return TABLE_PREFIX + self.name

    @property
    def full_table_name(self) -> str:
        return f"`{self.database}`.`{self.table_name}`"

    def __repr__(self) -> str:
        return f"DataJointExternal({self.full_table_name})"

    def declare(self) -> None:
        if not self._declared:
            self.connection.query(DEFINITION.format(database=self.database, store=self.name))
            self._declared = True

    def store(self):
        from ..stores import open_datajoint_store
        return open_datajoint_store(self.spec, timeout=self.config["store-timeout"],
                                    retries=self.config["store-retries"],
                                    max_concurrency=self.config["transfer-threads"])

    def key(self, entry: Entry) -> str:
        return entry.key(self.database, self.spec["subfolding"])

    # -- entries
    def entries(self, hashes: Iterable[bytes], required: bool = True) -> dict[bytes, Entry]:
        """The entries of some hashes; a missing one raises ``MissingObjectError`` unless not ``required``."""
        hashes = sorted(set(hashes))
        found: dict[bytes, Entry] = {}
        for start in range(0, len(hashes), 1000):
            chunk = hashes[start:start + 1000]
            rows = self.connection.query(
                f"SELECT {COLUMNS} FROM {self.full_table_name} WHERE hash IN ({', '.join(['%s'] * len(chunk))})",
                chunk, context=f"read {self.full_table_name}").fetchall()
            for row in rows:
                entry = Entry.from_row(row)
                found[entry.hash] = entry
        missing = [h for h in hashes if h not in found]
        if missing and required:
            raise MissingObjectError(f"{self.full_table_name} has no entry {uuid.UUID(bytes=missing[0])}")
        return found

    # -- reads
    def read(self, entry: Entry) -> bytearray:
        """A blob's bytes, checked against its MD5 (``verify-reads = size``: its size only), through the cache
        when one is configured: the same path as ``external``'s objects."""
        from ..cache.through import read_object
        store, key = self.store(), self.key(entry)
        if entry.size > TRUSTED_SIZE and store.size(key) != entry.size:  # no huge allocation on a row's word
            raise CorruptObjectError(f"object {key!r} in {store.describe()} does not have the {entry.size} bytes "
                                     f"its entry in {self.full_table_name} says")
        try:
            return read_object(store, key, entry.object_id, entry.size, self.cache(), self._verify())
        except CorruptObjectError as error:
            raise CorruptObjectError(f"{error} (entry {entry.uuid} of {self.full_table_name})") from None

    def download(self, entry: Entry, target: Path) -> None:
        """The object into a local file, in bounded pieces, renamed into place only once verified."""
        store, key = self.store(), self.key(entry)
        stored = store.size(key)
        if stored != entry.size:
            raise CorruptObjectError(f"object {key!r} in {store.describe()} has {stored} bytes, its entry in "
                                     f"{self.full_table_name} says {entry.size}")
        pieces = (store.get_range(key, offset, min(CHUNK, entry.size - offset))
                  for offset in range(0, entry.size, CHUNK))
        write_verified(target, pieces, entry.size, entry.check, f"object {key!r} in {store.describe()}")

    # -- insert
    def upload(self, uploads: list[Upload]) -> None:
        """Put the objects (not those already tracked and stored), each under its upload lock."""
        if not uploads:
            return
        self.declare()
        self._lock_uploads(uploads)
        known = self.entries([u.entry.hash for u in uploads], required=False)
        store = self.store()

        def upload_one(upload: Upload) -> None:
            entry, key = upload.entry, self.key(upload.entry)
            old = known.get(entry.hash)
            if upload.must_not_differ and old is not None and old.contents_hash != entry.contents_hash:
                raise DataError(f"A different version of {entry.filepath!r} has already been placed in store "
                                f"{self.name!r}")
            if old is not None and _stored_size(store, key) == entry.size:
                return
            store.put(key, upload.chunks(), size=entry.size)
            upload.uploaded = True
        self._parallel(upload_one, uploads)

    def commit(self, uploads: list[Upload]) -> None:
        """Insert the entries (inside the insert's transaction); put back an object gc removed meanwhile."""
        for start in range(0, len(uploads), 500):
            batch = uploads[start:start + 500]
            self.connection.query(
                f"INSERT INTO {self.full_table_name} ({COLUMNS}) VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s)"] * len(batch))
                + " ON DUPLICATE KEY UPDATE timestamp = CURRENT_TIMESTAMP",
                [v for u in batch for v in (u.entry.hash, u.entry.size, u.entry.attachment_name, u.entry.filepath,
                                            u.entry.contents_hash)], context=f"insert into {self.full_table_name}")
        store = self.store()
        held = self._held_upload_locks(uploads)

        def ensure_present(upload: Upload) -> None:
            key = self.key(upload.entry)
            if not store.exists(key):
                log.info("object %s vanished before commit (gc); uploading it again", key)
                store.put(key, upload.chunks(), size=upload.entry.size)
        self._parallel(ensure_present, [u for u in uploads if not (u.uploaded and u.hash in held)])

    # -- garbage collection (DataJoint's API)
    def references(self) -> list[tuple[str, str, str]]:
        rows = self.connection.query(
            "SELECT table_schema, table_name, column_name FROM information_schema.key_column_usage "
            "WHERE referenced_table_schema = %s AND referenced_table_name = %s",
            (self.database, self.table_name)).fetchall()
        return [tuple(row) for row in rows]

    def _unused_condition(self) -> str:
        return " AND ".join(f"NOT EXISTS (SELECT 1 FROM `{schema}`.`{table}` AS r WHERE r.`{column}` = e.hash)"
                            for schema, table, column in self.references()) or "TRUE"

    def _hashes(self, condition: str, limit: int | None = None) -> list[bytes]:
        if not self.exists():
            return []
        sql = f"SELECT e.hash FROM {self.full_table_name} AS e WHERE {condition} ORDER BY e.hash"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [bytes(row[0]) for row in self.connection.query(sql).fetchall()]

    def exists(self) -> bool:
        return self.connection.query("SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND "
                                     "table_name = %s", (self.database, self.table_name)).fetchone() is not None

    def unused(self) -> list[uuid.UUID]:
        """The hashes of entries no row refers to (DataJoint's ``unused()``, as a list)."""
        return [uuid.UUID(bytes=h) for h in self._hashes(self._unused_condition())]

    def used(self) -> list[uuid.UUID]:
        return [uuid.UUID(bytes=h) for h in self._hashes(f"NOT ({self._unused_condition()})")]

    def __len__(self) -> int:
        return len(self._hashes("TRUE"))

    def delete(self, *, delete_external_files: bool | None = None, limit: int | None = None,
               display_progress: bool = False, errors_as_string: bool = True) -> list:
        """DataJoint's clean-up: remove unused entries, and with ``delete_external_files=True`` their objects.

        Returns the failures as ``(uuid, object name, error)``, as DataJoint does; an object that could not be
        removed keeps its entry (both happen in one transaction), so a later run tries again.
        """
        if delete_external_files not in (True, False):
            raise DjfsError("The delete_external_files argument must be set to either True or False in delete()")
        _, failures = self._collect(False, 0.0, limit, delete_external_files)
        return [(uuid.UUID(bytes=h), key, str(error) if errors_as_string else error) for h, key, error in failures]

    def gc(self, dry_run: bool = False, grace: float = 0.0) -> "GCReport":
        """Remove unused entries older than ``grace`` seconds and their objects, then the orphan blobs and
        attachments (objects under the schema's folder without an entry, left by a failed insert) older than
        ``grace`` (``djfs gc``). Filepaths live anywhere in a store: only their entries are collected."""
        report = self._collect(dry_run, grace, None, True)[0]
        self._sweep_orphans(report, dry_run, grace)
        return report

    def _sweep_orphans(self, report: "GCReport", dry_run: bool, grace: float) -> None:
        from .gc import remove_orphans
        from ..stores import validate_prefix
        folds = self.spec["subfolding"]
        cutoff = time.time() - grace
        candidates = {}
        try:
            store = self.store()
            prefix = validate_prefix(self.database + "/")
            # a filepath may lie under the same folder (a stage with a folder of the schema's name): never an orphan
            tracked = {row[0] for row in self.connection.query(
                f"SELECT filepath FROM {self.full_table_name} WHERE filepath LIKE %s",
                (prefix.replace("_", "\\_") + "%",)).fetchall()} if self.exists() else set()
            for info in store.list(prefix):
                if info.key in tracked:
                    continue
                name = info.key.rsplit("/", 1)[-1]
                hex_, dot, attachment = name.partition(".")
                if (OBJECT_NAME.fullmatch(hex_) and info.mtime < cutoff and info.key == Entry(
                        bytes.fromhex(hex_), 0, attachment_name=attachment if dot else None).key(self.database, folds)):
                    candidates[hex_] = (bytes.fromhex(hex_), info)
        except (DjfsError, OSError, ValueError) as error:
            report.failed.append((f"{self.name}:{self.database}/", f"listing failed: {error}"))
            return
        remove_orphans(self, store, candidates, report, dry_run)

    def _collect(self, dry_run: bool, grace: float, limit: int | None, delete_objects: bool):
        from .gc import GCReport
        report, failures = GCReport(dry_run=dry_run), []
        candidates = self._hashes(f"e.timestamp <= NOW() - INTERVAL {float(grace)} SECOND AND "
                                  f"{self._unused_condition()}", limit)
        for hash_ in candidates:
            name = f"{self.name}:{uuid.UUID(bytes=hash_)}"
            try:
                entry = self._remove(hash_, dry_run, delete_objects)
            except (DjfsError, OSError) as error:
                report.failed.append((name, str(error)))
                failures.append((hash_, self._key_or_none(hash_), error))
                continue
            if entry is not None:
                report.entries.append(name)
                report.freed += entry.size if delete_objects else 0
        return report, failures

    def _key_or_none(self, hash_: bytes) -> str | None:
        try:
            return self.key(self.entries([hash_])[hash_])
        except DjfsError:
            return None

    def _remove(self, hash_: bytes, dry_run: bool, delete_objects: bool) -> Entry | None:
        """One entry and its object in one transaction; None if it is in use, revived or being inserted."""
        if self.upload_in_flight(hash_.hex()):
            return None
        try:
            with self.connection.transaction():
                row = self.connection.query(
                    f"SELECT {COLUMNS} FROM {self.full_table_name} AS e WHERE e.hash = %s AND "
                    f"{self._unused_condition()} FOR UPDATE", (hash_,)).fetchone()
                if row is None:
                    return None
                entry = Entry.from_row(row) if delete_objects else Entry(bytes(row[0]), int(row[1]))
                if dry_run:
                    return entry
                # refused by the foreign keys (ON DELETE RESTRICT) if a row refers to it now
                self.connection.query(f"DELETE FROM {self.full_table_name} WHERE hash = %s", (hash_,))
                if delete_objects:
                    self.store().remove(self.key(entry))
        except IntegrityError:
            return None
        return entry


def _stored_size(store, key: str) -> int | None:
    try:
        return store.size(key)
    except MissingObjectError:
        return None


class DataJointStores(Mapping):
    """``schema.external[store]``: the ``~external_<store>`` tables of one schema, made when first asked for."""

    def __init__(self, connection: "Connection", database: str) -> None:
        self.connection = connection
        self.database = database
        self._tables: dict[str, DataJointExternal] = {}

    def __getitem__(self, store: str) -> DataJointExternal:
        if store not in self._tables:
            self._tables[store] = DataJointExternal(self.connection, self.database, store)
        return self._tables[store]

    def declared(self) -> list[str]:
        """The stores this schema has a ``~external_<store>`` table for."""
        rows = self.connection.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_name LIKE %s",
            (self.database, TABLE_PREFIX.replace("_", "\\_") + "%")).fetchall()
        return sorted(row[0][len(TABLE_PREFIX):] for row in rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self.declared())

    def __len__(self) -> int:
        return len(self.declared())


# -- the hooks of insert and fetch ---------------------------------------------------------------------------

@dataclass
class Pending:
    """The DataJoint-kind values of one insert: column values now, objects uploaded before its transaction."""
    stores: DataJointStores
    values: dict[tuple[int, str], bytes] = field(default_factory=dict)
    uploads: dict[str, dict[bytes, Upload]] = field(default_factory=dict)   # store -> hash -> object
    inner: Any = None  # the pending objects of ``external`` attributes, handled alongside

    def hash_of(self, index: int, name: str) -> Any:
        if (index, name) in self.values:
            return self.values[(index, name)]
        return self.inner.hash_of(index, name)

    def upload(self) -> None:
        if self.inner is not None:
            self.inner.upload()
        for store, uploads in self.uploads.items():
            self.stores[store].upload(list(uploads.values()))

    def commit(self) -> None:
        if self.inner is not None:
            self.inner.commit()
        for store, uploads in self.uploads.items():
            self.stores[store].commit(list(uploads.values()))

    def release(self) -> None:
        if self.inner is not None:
            self.inner.release()
        for store, uploads in self.uploads.items():
            self.stores[store].release(list(uploads.values()))


def prepare(table: "Table", rows: list[dict], names: list[str]) -> Pending:
    """Encode every value of the attributes that hold objects (``external`` and DataJoint's kinds)."""
    heading = table.heading
    externals = [n for n in names if heading[n].is_external]
    stores: DataJointStores = table.external.datajoint
    pending = Pending(stores, inner=table.external.prepare(table, rows, externals) if externals else None)
    for name in names:
        attribute = heading[name]
        kind = KINDS.get(attribute.datajoint_kind or "")
        if kind is None:
            continue
        tracking = stores[attribute.store] if kind.external else None
        spec = tracking.spec if tracking is not None else {}
        for index, row in enumerate(rows):
            value = row.get(name)
            if value is None:
                continue
            column, upload = kind.encode(value, attribute.store, spec, f"{table.full_table_name}.{name}")
            pending.values[(index, name)] = column
            if upload is not None:
                pending.uploads.setdefault(attribute.store, {}).setdefault(upload.entry.hash, upload)
    return pending


def decode(table: "Table", rows: list[dict], names: list[str], squeeze: bool, download_path: str) -> None:
    """Replace each DataJoint-kind column of ``rows`` by its value (blobs) or local path (attachments,
    filepaths); objects are read in parallel, each verified."""
    if not names:
        return
    heading = table.heading
    jobs = []
    for name in names:
        attribute = heading[name]
        kind = KINDS[attribute.datajoint_kind]
        # the schema the attribute comes from (a query may join tables of several schemas)
        tracking = table.external_of(attribute.database).datajoint[attribute.store] if kind.external else None
        present = [row for row in rows if row[name] is not None]
        entries = tracking.entries(bytes(row[name]) for row in present) if tracking and present else {}
        for row in present:
            jobs.append((row, name, kind, tracking, entries.get(bytes(row[name])) if tracking else None))
    if not jobs:
        return

    def run(job) -> None:
        row, name, kind, tracking, entry = job
        row[name] = kind.decode(tracking, row[name], entry, squeeze, download_path)
    # file stores and local files: serially (threads only add overhead there, see ``external``); two rows
    # may also name the same attachment file, written one after the other
    remote = all(kind.name == "blob@" for _, _, kind, _, _ in jobs) and any(
        tracking.spec["protocol"] == "s3" for _, _, _, tracking, _ in jobs)
    if remote:
        jobs[0][3]._parallel(run, jobs)
    else:
        for job in jobs:
            run(job)
