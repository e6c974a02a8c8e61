"""``populate()`` for Imported and Computed tables, as in DataJoint.

The key source is every combination of the primary keys of the table's primary-key parents (a natural join
of the parents' key columns); ``populate`` calls the table's ``make(key)`` for each key not yet in the table,
each in its own transaction, so a failing key leaves nothing behind and the others go on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .condition import make_condition
from .errors import DjfsError

if TYPE_CHECKING:
    from .table import Table

log = logging.getLogger(__name__)


def primary_parents(table: "Table") -> list[tuple[str, str]]:
    """(database, table) of the parents whose foreign keys lie in this table's primary key."""
    key = set(table.primary_key)
    rows = table.connection.query(
        "SELECT referenced_table_schema, referenced_table_name, constraint_name, column_name "
        "FROM information_schema.key_column_usage WHERE table_schema = %s AND table_name = %s "
        "AND referenced_table_name IS NOT NULL", (table.database, table.table_name)).fetchall()
    constraints: dict[tuple[str, str, str], list[str]] = {}
    for schema, parent, constraint, column in rows:
        if not parent.startswith("~"):
            constraints.setdefault((schema, parent, constraint), []).append(column)
    return [(schema, parent) for (schema, parent, _), columns in constraints.items() if set(columns) <= key]


def key_source(table: "Table", restriction: Any = None) -> list[dict]:
    """Keys that ``make`` should be called with: parents' key combinations not yet in the table."""
    parents = primary_parents(table)
    if not parents:
        raise DjfsError(f"{table.full_table_name} has no primary-key parent to populate from")
    joined = " NATURAL JOIN ".join(f"(SELECT DISTINCT * FROM `{db}`.`{name}`) AS p{i}"
                                   for i, (db, name) in enumerate(parents))
    inherited = [n for n in table.primary_key if _in_parents(table, parents, n)]
    columns = ", ".join(f"`{n}`" for n in inherited)
    where, args = "TRUE", ()
    if restriction is not None:
        condition = make_condition(table, restriction)
        where, args = condition.sql, condition.args
    done = ", ".join(f"`{n}`" for n in inherited)
    sql = (f"SELECT DISTINCT {columns} FROM {joined} WHERE ({where}) AND ({done}) NOT IN "
           f"(SELECT {done} FROM {table.full_table_name}) ORDER BY {columns}")
    rows = table.connection.query(sql, args, as_dict=True).fetchall()
    return [dict(row) for row in rows]


def _in_parents(table: "Table", parents: list[tuple[str, str]], name: str) -> bool:
    for db, parent in parents:
        found = table.connection.query("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND "
                                       "table_name = %s AND column_name = %s", (db, parent, name)).fetchone()
        if found:
            return True
    return False


def populate(table: "Table", restriction: Any = None, suppress_errors: bool = False,
             max_calls: int | None = None) -> list[tuple[dict, Exception]]:
    """Call ``make(key)`` for each missing key; returns the (key, error) pairs when errors are suppressed."""
    if not hasattr(table, "make"):
        raise DjfsError(f"{type(table).__name__} needs a make(self, key) method to be populated")
    errors = []
    for count, key in enumerate(key_source(table, restriction)):
        if max_calls is not None and count >= max_calls:
            break
        try:
            with table.connection.transaction():
                table.make(dict(key))
        except Exception as error:  # noqa: BLE001 - reported or re-raised below
            if not suppress_errors:
                raise
            log.warning("make(%s) failed: %s", key, error)
            errors.append((key, error))
    return errors
