"""Garbage collection of external objects: nothing live is removed, nothing removed is left referenced.

1. Entries marked ``deleted`` and no longer referenced by any row, and entries ``stored`` but referenced by
   no row for longer than the grace period, are found by a plain (non-locking) read.  Each is then removed in
   its own short transaction: the entry is locked (``SELECT ... FOR UPDATE``) and the condition checked again
   on current data, the entry is deleted — the foreign keys (``ON DELETE RESTRICT``) check on current data
   that no row refers to it, including one committed after the candidates were read — and only then its
   object is removed, and the transaction commits.  An insert that revives the entry meanwhile waits for the
   lock and, finding the object gone, uploads it again (see ``ExternalTable.commit``).
2. Objects in the schema's folders with no entry at all (an insert that failed after its upload) are
   removed once they are older than the grace period.  Each is removed under a lock on its key in
   ``~external``, so an insert committing that hash meanwhile waits, and only if no session holds its upload
   lock: an insert holds that from before its upload until its entry is inserted (``ExternalTable.upload``),
   so an object in flight is never taken for an orphan, whatever the grace.

gc locks one entry at a time, each in a short transaction of its own. Locking whole batches (with a locking
read that scanned all of ``~external``) deadlocked with concurrent inserts: the user's insert failed.

An object that can't be removed keeps its entry and is reported; the next run tries again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import hashing
from ..errors import DjfsError, IntegrityError

if TYPE_CHECKING:
    from .external import ExternalTable

log = logging.getLogger(__name__)


@dataclass
class GCReport:
    dry_run: bool
    entries: list[str] = field(default_factory=list)    # entries removed (or that would be)
    orphans: list[str] = field(default_factory=list)    # objects without entry removed (or that would be)
    freed: int = 0                                       # bytes
    failed: list[tuple[str, str]] = field(default_factory=list)  # (hash or key, reason)

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"{verb} {len(self.entries)} objects of deleted entries and {len(self.orphans)} orphan objects "
                 f"({self.freed:,} bytes)"]
        lines += [f"  failed: {name}: {reason}" for name, reason in self.failed]
        return "\n".join(lines)


def collect(external: "ExternalTable", dry_run: bool = False, grace: float = 3600.0) -> GCReport:
    report = GCReport(dry_run=dry_run)
    if not external.exists():
        return report
    connection = external.connection
    table = external.full_table_name
    garbage = "(e.status = 'deleted' OR e.timestamp < NOW() - INTERVAL %s SECOND)"
    rows = connection.query(f"SELECT e.hash, e.store, e.folder, e.size FROM {table} AS e WHERE {garbage} AND "
                            f"{external._unreferenced_condition()} ORDER BY e.hash", (int(grace),),
                            as_dict=True).fetchall()
    for row in rows:
        try:
            hash_ = hashing.validate(row["hash"])
            if not dry_run and not _remove_entry(external, hash_, garbage, grace):
                continue  # revived, referenced or removed since the candidates were read
            report.entries.append(hash_)
            report.freed += int(row["size"])
        except (DjfsError, OSError) as error:
            report.failed.append((str(row["hash"])[:60], str(error)))
    _sweep_orphans(external, report, dry_run, grace)
    log.info("%s", report)
    return report


def _remove_entry(external: "ExternalTable", hash_: str, garbage: str, grace: float) -> bool:
    """Remove one entry and its object in one transaction; False if it is no longer garbage."""
    connection = external.connection
    table = external.full_table_name
    try:
        with connection.transaction():
            row = connection.query(f"SELECT e.store, e.folder FROM {table} AS e WHERE e.hash = %s AND {garbage} "
                                   "FOR UPDATE", (hash_, int(grace)), as_dict=True).fetchone()
            if row is None:
                return False
            # refused by the foreign keys (ON DELETE RESTRICT) if a row refers to it now
            connection.query(f"DELETE FROM {table} WHERE hash = %s", (hash_,))
            external.store(row["store"], row["folder"]).remove(hashing.object_path(hash_))
    except IntegrityError:
        return False
    return True


def _sweep_orphans(external: "ExternalTable", report: GCReport, dry_run: bool, grace: float) -> None:
    connection = external.connection
    table = external.full_table_name
    locations = {(row[0], row[1]) for row in connection.query(
        f"SELECT DISTINCT store, folder FROM {table}").fetchall()}
    if external._folder is not None:
        locations.add(("", external._folder))
    cutoff = time.time() - grace
    for store_name, folder in sorted(locations):
        try:
            store = external.store(store_name, folder)
            candidates = {}
            for info in store.list():
                name = info.key.rsplit("/", 1)[-1]
                if hashing.is_valid(name) and info.key == hashing.object_path(name) and info.mtime < cutoff:
                    candidates[name] = info
        except (DjfsError, OSError) as error:
            report.failed.append((f"{store_name or 'default'}:{folder}", f"listing failed: {error}"))
            continue
        remove_orphans(external, store, {name: (name, info) for name, info in candidates.items()}, report, dry_run)


def remove_orphans(external, store, candidates: dict[str, tuple[Any, Any]], report: GCReport, dry_run: bool) -> None:
    """Remove the objects among ``candidates`` (lock name -> (hash as stored in the tracking table, listed
    object)) that have no entry in ``external``'s tracking table: each under a lock on its key there, so an
    insert committing that hash meanwhile waits, and only if no session holds its upload lock."""
    connection = external.connection
    table = external.full_table_name
    names = list(candidates)
    for start in range(0, len(names), 1000):
        chunk = names[start:start + 1000]
        known = {bytes(row[0]) if isinstance(row[0], (bytes, bytearray)) else row[0] for row in connection.query(
            f"SELECT hash FROM {table} WHERE hash IN ({', '.join(['%s'] * len(chunk))})",
            [candidates[name][0] for name in chunk]).fetchall()}
        for name in chunk:
            hash_, info = candidates[name]
            if hash_ in known:
                continue
            try:
                if dry_run:
                    if external.upload_in_flight(name):
                        continue
                else:
                    with connection.transaction():
                        # Lock the key (a gap lock, as it has no entry): an insert committing this hash
                        # meanwhile waits until the object is gone; one that re-used the object puts it
                        # back (its commit), one that uploaded it holds its upload lock.
                        if connection.query(f"SELECT 1 FROM {table} WHERE hash = %s FOR UPDATE",
                                            (hash_,)).fetchone():
                            continue
                        if external.upload_in_flight(name):  # uploaded, its entry not yet inserted
                            log.debug("object %s is being inserted: kept", name)
                            continue
                        store.remove(info.key)
                report.orphans.append(name)
                report.freed += info.size
            except (DjfsError, OSError) as error:
                report.failed.append((name, str(error)))
