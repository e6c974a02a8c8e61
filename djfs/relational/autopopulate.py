"""``populate()`` for Imported and Computed tables, as in DataJoint.

The default key source is the join of the primary keys of the table's primary-key parents (``Parent.proj()``
each, so parents that share a secondary attribute's name still combine); a table may override ``key_source``
with any query. ``populate`` calls the table's ``make(key)`` for each key of its key source not yet in the
table, each in its own transaction, so a failing key leaves nothing behind and the others go on.
"""

from __future__ import annotations

import functools
import logging
import random
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ..errors import DjfsError

if TYPE_CHECKING:
    from .expression import QueryExpression
    from .table import Table

log = logging.getLogger(__name__)


def primary_parents(table: "Table") -> list[tuple[str, str, list[str], list[str]]]:
    """The foreign keys that lie in this table's primary key: (database, table, columns, referenced columns)."""
    key = set(table.primary_key)
    return [fk for fk in table.foreign_keys() if set(fk[2]) <= key]


def default_key_source(table: "Table") -> "QueryExpression":
    """The join of the primary-key parents' primary keys, renamed as this table's foreign keys rename them."""
    from .table import FreeTable
    parents = primary_parents(table)
    if not parents:
        raise DjfsError(f"{table.full_table_name} has no primary-key parent to populate from")
    keys = [FreeTable(table.connection, database, name).proj(**{c: r for c, r in zip(columns, refs) if c != r})
            for database, name, columns, refs in parents]
    return functools.reduce(lambda a, b: a * b, keys)


def populate(table: "Table", *restrictions: Any, keys: list[dict] | None = None, suppress_errors: bool = False,
             return_exception_objects: bool = False, reserve_jobs: bool = False, order: str = "original",
             limit: int | None = None, max_calls: int | None = None, display_progress: bool = False,
             processes: int = 1, make_kwargs: dict | None = None) -> dict[str, Any]:
    """DataJoint's ``populate``: ``make(key)`` for each key of ``(key_source & restrictions).proj() - table``
    (or of ``keys``), each in its own transaction. Returns ``{"success_count", "error_list"}``; with
    ``suppress_errors`` failures are collected as (key, message) — (key, exception) with
    ``return_exception_objects`` — instead of raised."""
    if not hasattr(table, "make"):
        raise DjfsError(f"{type(table).__name__} needs a make(self, key) method to be populated")
    if table.connection.in_transaction:
        raise DjfsError("populate cannot be called during a transaction")
    if reserve_jobs or processes != 1:
        raise DjfsError("populate: reserve_jobs and processes > 1 are not implemented in djfs (run one populate "
                        "per process with different restrictions instead)")
    if order not in ("original", "reverse", "random"):
        raise DjfsError(f"populate: order must be 'original', 'reverse' or 'random', not {order!r}")
    if keys is None:
        todo = table.key_source
        for restriction in restrictions:
            todo = todo & restriction
        keys = (todo.proj() - table).fetch("KEY", order_by="KEY", limit=limit)
    keys = list(keys)
    if order == "reverse":
        keys.reverse()
    elif order == "random":
        random.shuffle(keys)
    keys = keys[:max_calls]
    errors, done = [], 0
    for key in tqdm(keys, desc=type(table).__name__, disable=not display_progress):
        try:
            with table.connection.transaction():
                if key in table:
                    continue  # made meanwhile by another process
                table.make(dict(key), **(make_kwargs or {}))
            done += 1
        except Exception as error:  # noqa: BLE001 - reported or re-raised below
            if not suppress_errors:
                raise
            log.warning("make(%s) failed: %s", key, error)
            errors.append((key, error if return_exception_objects else f"{type(error).__name__}: {error}"))
    return {"success_count": done, "error_list": errors}
