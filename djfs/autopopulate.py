"""``populate()`` for Imported and Computed tables, as in DataJoint.

The default key source is the join of the primary keys of the table's primary-key parents (``Parent.proj()``
each, so parents that share a secondary attribute's name still combine); a table may override ``key_source``
with any query. ``populate`` calls the table's ``make(key)`` for each key of its key source not yet in the
table, each in its own transaction, so a failing key leaves nothing behind and the others go on.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from .errors import DjfsError

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


def populate(table: "Table", restriction: Any = None, suppress_errors: bool = False,
             max_calls: int | None = None) -> list[tuple[dict, Exception]]:
    """Call ``make(key)`` for each missing key; returns the (key, error) pairs when errors are suppressed."""
    if not hasattr(table, "make"):
        raise DjfsError(f"{type(table).__name__} needs a make(self, key) method to be populated")
    todo = table.key_source
    if restriction is not None:
        todo = todo & restriction
    keys = (todo.proj() - table).fetch("KEY", order_by="KEY")
    errors = []
    for count, key in enumerate(keys):
        if max_calls is not None and count >= max_calls:
            break
        try:
            with table.connection.transaction():
                if key in table:
                    continue  # made meanwhile by another process
                table.make(dict(key))
        except Exception as error:  # noqa: BLE001 - reported or re-raised below
            if not suppress_errors:
                raise
            log.warning("make(%s) failed: %s", key, error)
            errors.append((key, error))
    return errors
