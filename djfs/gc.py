"""Garbage collection of external objects: nothing live is removed, nothing removed is left referenced.

1. Entries marked ``deleted`` and no longer referenced by any row, and entries ``stored`` but referenced by
   no row for longer than the grace period, are locked (``SELECT ... FOR UPDATE``), their objects removed,
   then the entries deleted — all in one transaction, so an insert that revives an entry meanwhile waits
   for the lock and re-uploads what was removed (see ``ExternalTable.commit``).
2. Objects in the schema's folders with no entry at all (an insert that failed after its upload) are
   removed once they are older than the grace period; younger ones may belong to an insert in flight.

An object that can't be removed keeps its entry and is reported; the next run tries again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import hashing
from .errors import DjfsError

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
    unreferenced = external._unreferenced_condition()
    condition = (f"(e.status = 'deleted' OR e.timestamp < NOW() - INTERVAL %s SECOND) AND {unreferenced}")
    with connection.transaction():
        lock = "" if dry_run else " FOR UPDATE"
        rows = connection.query(f"SELECT e.hash, e.store, e.folder, e.size FROM {table} AS e WHERE {condition}"
                                + lock, (int(grace),), as_dict=True).fetchall()
        removed = []
        for row in rows:
            try:
                hash_ = hashing.validate(row["hash"])
                if not dry_run:
                    external.store(row["store"], row["folder"]).remove(hashing.object_path(hash_))
                removed.append(hash_)
                report.freed += int(row["size"])
            except (DjfsError, OSError) as error:
                report.failed.append((str(row["hash"])[:60], str(error)))
        report.entries = removed
        if removed and not dry_run:
            for start in range(0, len(removed), 1000):
                chunk = removed[start:start + 1000]
                connection.query(f"DELETE FROM {table} WHERE hash IN ({', '.join(['%s'] * len(chunk))})", chunk)
    _sweep_orphans(external, report, dry_run, grace)
    log.info("%s", report)
    return report


def _sweep_orphans(external: "ExternalTable", report: GCReport, dry_run: bool, grace: float) -> None:
    connection = external.connection
    locations = {(row[0], row[1]) for row in connection.query(
        f"SELECT DISTINCT store, folder FROM {external.full_table_name}").fetchall()}
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
        names = list(candidates)
        for start in range(0, len(names), 1000):
            chunk = names[start:start + 1000]
            # The locking read holds the (gap) locks of these hashes until we are done: an insert that
            # commits one of them meanwhile waits, then finds its object gone and uploads it again.
            with connection.transaction():
                locked = "" if dry_run else " FOR UPDATE"
                known = {row[0] for row in connection.query(
                    f"SELECT hash FROM {external.full_table_name} WHERE hash IN ({', '.join(['%s'] * len(chunk))})"
                    + locked, chunk).fetchall()}
                for name in chunk:
                    if name in known:
                        continue
                    try:
                        if not dry_run:
                            store.remove(candidates[name].key)
                        report.orphans.append(name)
                        report.freed += candidates[name].size
                    except (DjfsError, OSError) as error:
                        report.failed.append((name, str(error)))
