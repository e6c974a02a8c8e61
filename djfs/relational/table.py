"""Tables: restriction, insert, delete, drop, describe — DataJoint's behaviour on one MySQL table.

A ``Table`` instance is a query: the table plus the restrictions applied so far (``&``, ``-``); every
method runs against that restricted set. Through ``TableMeta`` the same methods work on the class
(``Mouse.insert1(...)``, ``Mouse & key``), as in DataJoint.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..objects import external_dj
from .codec import DEFAULT, encode
from .condition import Where, sql_value
from ..errors import DataError, DjfsError, DuplicateError, QueryError
from .expression import QueryExpression
from .heading import Heading
from .naming import class_name, master_of

if TYPE_CHECKING:
    from ..connection import Connection
    from ..objects.external import ExternalTable

log = logging.getLogger(__name__)

#: names that, read on a table class, act on a fresh instance (``Mouse.insert1`` as in DataJoint)
CLASS_METHODS = {"insert", "insert1", "delete", "delete_quick", "drop", "drop_quick", "describe", "fetch",
                 "fetch1", "heading", "restrict", "primary_key", "make_sql", "children", "parents",
                 "external", "keys", "populate", "key_source", "full_table_name", "table_name", "where",
                 "proj", "aggr", "aggregate", "join", "head", "tail", "query_name", "foreign_keys"}
STATEMENT_SHARE = 0.75  # of max_allowed_packet one INSERT statement may fill


class TableMeta(type):
    """Lets table classes be used as queries: ``Mouse & key``, ``len(Mouse)``, ``Mouse.fetch()``."""

    def __getattribute__(cls, name: str) -> Any:
        if name in CLASS_METHODS and type.__getattribute__(cls, "database") is not None:
            return getattr(cls(), name)
        return super().__getattribute__(name)

    def __and__(cls, condition: Any) -> "Table":
        return cls() & condition

    def __sub__(cls, condition: Any) -> "Table":
        return cls() - condition

    def __xor__(cls, condition: Any) -> "Table":
        return cls() ^ condition

    def __mul__(cls, other: Any) -> QueryExpression:
        return cls() * other

    def __matmul__(cls, other: Any) -> QueryExpression:
        return cls() @ other

    def __add__(cls, other: Any) -> QueryExpression:
        return cls() + other

    def __len__(cls) -> int:
        return len(cls())

    def __iter__(cls):
        return iter(cls())

    def __contains__(cls, item: Any) -> bool:
        return item in cls()

    def __bool__(cls) -> bool:
        return True

    def __repr__(cls) -> str:
        database = type.__getattribute__(cls, "database")
        return repr(cls()) if database else super().__repr__()


class Table(QueryExpression, metaclass=TableMeta):
    """Base of all table classes; the schema decorator sets ``database`` and ``connection``."""

    database: str | None = None
    connection: "Connection | None" = None
    definition: str = ""
    _table_name: str | None = None
    _heading: Heading | None = None
    _schema: Any = None

    def __init__(self) -> None:
        if self.database is None:
            raise DjfsError(f"class {type(self).__name__} is not declared: decorate it with a schema")
        self._restrictions: list[Where] = []

    # -- identity
    @property
    def table_name(self) -> str:
        return self._table_name  # set by the tier when the schema declares the class

    @property
    def full_table_name(self) -> str:
        return f"`{self.database}`.`{self.table_name}`"

    @property
    def heading(self) -> Heading:
        cls = type(self)
        if cls._heading is None:
            cls._heading = Heading.load(self.connection, self.database, self.table_name)
        return cls._heading

    @property
    def primary_key(self) -> list[str]:
        return self.heading.primary_key

    @property
    def external(self) -> "ExternalTable":
        return self._schema.external

    @property
    def query_name(self) -> str:
        return self.full_table_name

    def from_clause(self) -> tuple[str, tuple]:
        return self.full_table_name, ()

    def _find_external(self, database: str) -> "ExternalTable | None":
        if database == self.database and self._schema is not None:
            return self._schema.external
        return None

    # -- insert
    def insert1(self, row: Any, **kwargs: Any) -> None:
        """Insert one row (dict, tuple or numpy record)."""
        self.insert((row,), **kwargs)

    def insert(self, rows: Iterable[Any], replace: bool = False, skip_duplicates: bool = False,
               ignore_extra_fields: bool = False) -> None:
        """Insert rows in one transaction: all of them or, on any error, none.

        External values are uploaded first; the ``~external`` entries and the rows follow in one
        transaction, so a failure leaves at most an unreferenced object in the store, never a row that
        points at a missing one.
        """
        if self._restrictions:
            raise DjfsError(f"{self.full_table_name}: insert into a restricted table is not allowed")
        heading = self.heading
        rows = [self._as_dict(row, ignore_extra_fields) for row in self._row_list(rows)]
        if not rows:
            return
        if skip_duplicates:
            rows = self._without_existing(rows)
            if not rows:
                return
        names = [n for n in heading.names if any(n in row for row in rows)]
        for row in rows:
            self._check_required(row)
        externals = [n for n in names if heading[n].is_external]
        objects = [n for n in names if heading[n].is_external or heading[n].datajoint_kind]
        pending = external_dj.prepare(self, rows, objects) if objects else None
        encoded = [[encode(heading[n], row.get(n), f"{self.full_table_name}.{n}",
                           lambda index=index, n=n: pending.hash_of(index, n)) for n in names]
                   for index, row in enumerate(rows)]
        if pending is None:
            self._insert_rows(rows, names, encoded, None, replace, skip_duplicates, externals)
            return
        try:
            pending.upload()
            self._insert_rows(rows, names, encoded, pending, replace, skip_duplicates, externals)
        finally:
            pending.release()

    def _insert_rows(self, rows: list[dict], names: list[str], encoded: list[list], pending: Any,
                     replace: bool, skip_duplicates: bool, externals: list[str]) -> None:
        """The transaction of an insert: the ``~external`` entries, then the rows."""
        heading = self.heading
        verb = "REPLACE" if replace else "INSERT"
        suffix = ""
        if skip_duplicates:
            first = heading.primary_key[0]
            suffix = f" ON DUPLICATE KEY UPDATE `{first}` = `{first}`"
        columns = ", ".join(f"`{n}`" for n in names)
        with self.connection.transaction():
            if pending is not None:
                if replace:
                    self._mark_replaced_externals(rows, externals)
                pending.commit()
            for batch in self._batches(encoded, names):
                values = ", ".join("(" + ", ".join("DEFAULT" if v is DEFAULT else "%s" for v in row) + ")"
                                   for row in batch)
                sql = f"{verb} INTO {self.full_table_name} ({columns}) VALUES {values}{suffix}"
                try:
                    self.connection.query(sql, [v for row in batch for v in row if v is not DEFAULT],
                                          context=f"insert into {self.full_table_name}")
                except DuplicateError as error:
                    raise DuplicateError(f"{error} — use skip_duplicates=True or replace=True to allow it") \
                        from None
                except QueryError as error:
                    raise DataError(str(error)) from None

    @staticmethod
    def _row_list(rows: Any) -> list:
        if isinstance(rows, np.ndarray) and rows.dtype.names:
            return list(rows)
        if type(rows).__name__ == "DataFrame" and hasattr(rows, "to_dict"):  # pandas, e.g. from fetch(format="frame")
            named_index = any(name is not None for name in rows.index.names)
            return (rows.reset_index() if named_index else rows).to_dict("records")
        if isinstance(rows, Mapping):
            raise DataError("insert takes a list of rows; use insert1 for a single dict")
        return list(rows)

    def _as_dict(self, row: Any, ignore_extra_fields: bool) -> dict:
        heading = self.heading
        if isinstance(row, np.void) and row.dtype.names:
            row = {name: row[name] for name in row.dtype.names}
        elif isinstance(row, Mapping):
            row = dict(row)
        elif isinstance(row, (tuple, list)):
            if len(row) != len(heading):
                raise DataError(f"{self.full_table_name}: a row as a tuple needs {len(heading)} values "
                                f"({', '.join(heading.names)}), got {len(row)}")
            row = dict(zip(heading.names, row))
        else:
            raise DataError(f"{self.full_table_name}: can't insert a row of type {type(row).__name__}")
        unknown = [name for name in row if name not in heading]
        if unknown:
            if not ignore_extra_fields:
                raise DataError(f"{self.full_table_name}: unknown attribute {unknown[0]!r} "
                                "(pass ignore_extra_fields=True to drop it)")
            row = {k: v for k, v in row.items() if k in heading}
        return row

    def _check_required(self, row: dict) -> None:
        for attribute in self.heading:
            if attribute.name in row:
                continue
            if attribute.nullable or attribute.default is not None:
                continue
            raise DataError(f"{self.full_table_name}: missing value for attribute {attribute.name!r}")

    def _batches(self, rows: list[list], names: list[str]) -> Iterable[list[list]]:
        """Rows grouped so that no INSERT statement exceeds the server's ``max_allowed_packet``."""
        limit = int(self.connection.max_allowed_packet() * STATEMENT_SHARE)
        batch, size = [], 0
        for row in rows:
            row_size = 64 + sum(2 * len(v) + 8 if isinstance(v, (bytes, str)) else 24 for v in row)  # noqa
            if row_size > limit:
                big = max(range(len(row)), key=lambda i: len(row[i]) if isinstance(row[i], (bytes, str)) else 0)
                raise DataError(f"{self.full_table_name}.{names[big]}: a value of {row_size} bytes exceeds the "
                                f"server's max_allowed_packet; use an external attribute for large values")
            if batch and size + row_size > limit:
                yield batch
                batch, size = [], 0
            batch.append(row)
            size += row_size
        if batch:
            yield batch

    def _without_existing(self, rows: list[dict]) -> list[dict]:
        """Rows whose primary key is not in the table yet (for ``skip_duplicates``)."""
        key = self.primary_key
        if not all(all(k in row for k in key) for row in rows):
            return rows
        existing = set()
        for start in range(0, len(rows), 1000):
            chunk = rows[start:start + 1000]
            restricted = self & [{k: row[k] for k in key} for row in chunk]
            for found in restricted.fetch("KEY"):
                existing.add(tuple(_hashable(found[k]) for k in key))
        return [row for row in rows if tuple(_hashable(sql_value(self.heading[k], row[k])) for k in key)
                not in existing and tuple(_hashable(row[k]) for k in key) not in existing]

    def _mark_replaced_externals(self, rows: list[dict], externals: list[str]) -> None:
        key = self.primary_key
        restricted = self & [{k: row[k] for k in key} for row in rows if all(k in row for k in key)]
        self.external.mark_deleted(self.full_table_name, restricted.where, externals)

    # -- delete and drop
    def children(self) -> list[tuple[str, str, list[str], list[str]]]:
        """Tables whose foreign keys point at this one: (database, table, columns, referenced columns)."""
        return _children(self.connection, self.database, self.table_name)

    def parents(self) -> list[str]:
        rows = self.connection.query(
            "SELECT DISTINCT referenced_table_schema, referenced_table_name FROM information_schema."
            "key_column_usage WHERE table_schema = %s AND table_name = %s AND referenced_table_name IS NOT NULL",
            (self.database, self.table_name)).fetchall()
        return [f"`{schema}`.`{table}`" for schema, table in rows if not table.startswith("~")]

    def foreign_keys(self) -> list[tuple[str, str, list[str], list[str]]]:
        """This table's foreign keys to other tables: (database, table, columns, referenced columns)."""
        rows = self.connection.query(
            "SELECT referenced_table_schema, referenced_table_name, constraint_name, column_name, "
            "referenced_column_name FROM information_schema.key_column_usage WHERE table_schema = %s AND "
            "table_name = %s AND referenced_table_name IS NOT NULL ORDER BY constraint_name, ordinal_position",
            (self.database, self.table_name)).fetchall()
        grouped: dict[tuple[str, str, str], tuple[list[str], list[str]]] = {}
        for schema, parent, constraint, column, referenced in rows:
            if not parent.startswith("~"):
                columns, references = grouped.setdefault((schema, parent, constraint), ([], []))
                columns.append(column)
                references.append(referenced)
        return [(schema, parent, cols, refs) for (schema, parent, _), (cols, refs) in grouped.items()]

    def delete_quick(self) -> int:
        """Delete the restricted rows of this table only (fails if other rows depend on them)."""
        with self.connection.transaction():
            return _delete_rows(self.connection, self.database, self.table_name, self.where, cascade=False)

    def delete(self, safemode: bool | None = None, force_parts: bool = False) -> int:
        """Delete the restricted rows and, in the same transaction, every row that depends on them.

        With ``safemode`` (the ``safemode`` setting unless given) the counts per table are shown and the
        deletion is committed only if the user types ``yes``; without a terminal to ask on, it is refused.
        Rows of a part table go only with their master's, unless ``force_parts`` (DataJoint's rule)."""
        safemode = check_safemode(safemode, f"delete from {self.full_table_name}")
        counts: dict[str, int] = {}
        try:
            with self.connection.transaction():
                count = _delete_rows(self.connection, self.database, self.table_name, self.where, cascade=True,
                                     counts=counts)
                if not force_parts:
                    _check_parts_with_masters(counts)
                if safemode:
                    for table, deleted in counts.items():
                        if deleted:
                            print(f"Deleting {deleted} rows from {table}")
                    if not count:
                        print("Nothing to delete.")
                    elif not confirm("Commit deletes?"):
                        raise _Cancelled
        except _Cancelled:
            print("Deletes cancelled.")
            return 0
        log.info("deleted %d rows from %s", count, self.full_table_name)
        return count

    def drop_quick(self) -> None:
        self.connection.query(f"DROP TABLE IF EXISTS {self.full_table_name}")
        type(self)._heading = None

    def drop(self, safemode: bool | None = None) -> None:
        """Drop this table and the tables that depend on it, children first (asking first in safemode)."""
        if self._restrictions:
            raise DjfsError("drop() applies to a whole table, not to a restriction")
        safemode = check_safemode(safemode, f"drop {self.full_table_name}")
        order = _dependents_first(self.connection, self.database, self.table_name)
        if safemode:
            for database, table in reversed(order):
                full = f"`{database}`.`{table}`"
                rows = self.connection.query(f"SELECT COUNT(*) FROM {full}").fetchone()[0]
                print(f"{full} ({rows} rows)")
            if not confirm("Proceed?"):
                print("Drop cancelled.")
                return
        for database, table in order:
            with self.connection.transaction():
                _delete_rows(self.connection, database, table, Where("TRUE"), cascade=False)
            self.connection.query(f"DROP TABLE IF EXISTS `{database}`.`{table}`")
        type(self)._heading = None

    def describe(self, printout: bool = False) -> str:
        """The table's definition, regenerated from the server (foreign keys as ``-> Parent``)."""
        heading = self.heading
        lines = [f"# {heading.comment}"] if heading.comment else []
        by_column = {}
        for fk in self.foreign_keys():
            for column in fk[2]:
                by_column.setdefault(column, fk)
        shown: set[int] = set()
        separated = False
        for attribute in heading:
            if not attribute.in_key and not separated:
                lines.append("---")
                separated = True
            fk = by_column.get(attribute.name)
            if fk is not None:
                if id(fk) not in shown:
                    shown.add(id(fk))
                    lines.append(self._reference_line(fk, attribute.nullable))
                continue
            default = ""
            if attribute.nullable:
                default = " = null"
            elif attribute.default is not None:
                default = f" = {attribute.default!r}" if not str(attribute.default).replace(".", "").isdigit() \
                    else f" = {attribute.default}"
            kind = attribute.type if attribute.type in ("uuid", "json", "bool", "blob") else attribute.sql_type
            if attribute.is_external:
                kind = attribute.external_type
            if attribute.is_blob:
                kind = attribute.sql_type
            if attribute.datajoint_kind:
                kind = attribute.datajoint_kind + (attribute.store or "")
            comment = f"  # {attribute.comment}" if attribute.comment else ""
            lines.append(f"{attribute.name}{default} : {kind}{comment}")
        if not separated:
            lines.append("---")
        text = "\n".join(lines)
        if printout:
            print(text)
        return text

    def _reference_line(self, fk: tuple[str, str, list[str], list[str]], nullable: bool) -> str:
        """``-> Parent``, ``-> [nullable] other_schema.Parent``, ``-> Parent.proj(new="old")``."""
        database, table, columns, references = fk
        name = class_name(table) if database == self.database else f"{database}.{class_name(table)}"
        renames = ", ".join(f'{c}="{r}"' for c, r in zip(columns, references) if c != r)
        return f"-> {'[nullable] ' if nullable else ''}{name}" + (f".proj({renames})" if renames else "")


class FreeTable(Table):
    """A table known by its name alone (no class): parents in key sources, tables found in the database."""

    def __init__(self, connection: "Connection", database: str, table_name: str) -> None:
        self.connection = connection
        self.database = database
        self._table_name = table_name
        self._free_heading: Heading | None = None
        self._restrictions = []

    @property
    def heading(self) -> Heading:
        if self._free_heading is None:
            self._free_heading = Heading.load(self.connection, self.database, self._table_name)
        return self._free_heading


def _check_parts_with_masters(counts: dict[str, int]) -> None:
    """Refuse (rolling back) a delete that removed rows of a part table but none of its master's."""
    for full_name, deleted in counts.items():
        database, table = (part.strip("`") for part in full_name.split("`.`"))
        master = master_of(table)
        if deleted and master and not counts.get(f"`{database}`.`{master}`"):
            raise DjfsError(f"Attempt to delete part table {full_name} before deleting from its master "
                            f"`{database}`.`{master}` first (delete from the master, or pass force_parts=True)")


class _Cancelled(Exception):
    """The user answered no: roll the deletion back."""


def check_safemode(safemode: bool | None, what: str, bypass: str = "safemode=False") -> bool:
    """The effective safemode; refuses when it is on and no terminal can answer the question."""
    if safemode is None:
        from .. import config
        safemode = config["safemode"]
    if safemode and not (sys.stdin is not None and sys.stdin.isatty()):
        raise DjfsError(f"{what}: safemode is on and stdin is not a terminal, so nobody can confirm; pass "
                        f"{bypass} (or set djfs.config['safemode'] = False) to go ahead without asking")
    return bool(safemode)


def confirm(question: str) -> bool:
    """DataJoint's question: only ``yes`` goes ahead; Enter, ``no`` or end of input answers no."""
    while True:
        try:
            answer = input(f"{question} [yes, No]: ").strip().lower()
        except EOFError:
            return False
        if answer in ("yes", "no", ""):
            return answer == "yes"


def _hashable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, uuid.UUID):
        return value.bytes
    return value


def _children(connection: "Connection", database: str, table: str):
    rows = connection.query(
        "SELECT table_schema, table_name, constraint_name, column_name, referenced_column_name "
        "FROM information_schema.key_column_usage WHERE referenced_table_schema = %s "
        "AND referenced_table_name = %s ORDER BY table_schema, table_name, constraint_name, ordinal_position",
        (database, table)).fetchall()
    grouped: dict[tuple[str, str, str], tuple[list[str], list[str]]] = {}
    for schema, child, constraint, column, referenced in rows:
        columns, references = grouped.setdefault((schema, child, constraint), ([], []))
        columns.append(column)
        references.append(referenced)
    return [(schema, child, cols, refs) for (schema, child, _), (cols, refs) in grouped.items()]


def _delete_rows(connection: "Connection", database: str, table: str, where: Where, cascade: bool,
                 depth: int = 0, counts: dict[str, int] | None = None) -> int:
    """Delete rows (children first when cascading); their external entries are marked ``deleted``.

    ``counts`` collects the rows deleted per table (parents first, as ``safemode`` shows them)."""
    if depth > 64:
        raise DjfsError("delete cascades deeper than 64 levels: is there a cycle of foreign keys?")
    full = f"`{database}`.`{table}`"
    if counts is not None:
        counts.setdefault(full, 0)
    if cascade:
        for child_db, child, columns, references in _children(connection, database, table):
            cols = ", ".join(f"`{c}`" for c in columns)
            refs = ", ".join(f"`{r}`" for r in references)
            child_where = Where(f"({cols}) IN (SELECT {refs} FROM {full} WHERE {where.sql})", where.args)
            _delete_rows(connection, child_db, child, child_where, cascade=True, depth=depth + 1, counts=counts)
    if not table.startswith("~"):
        externals = Heading.load(connection, database, table).externals
        if externals:
            from ..objects.external import ExternalTable
            ExternalTable(connection, database).mark_deleted(full, where, externals)
    cursor = connection.query(f"DELETE FROM {full} WHERE {where.sql}", where.args, context=f"delete from {full}")
    if counts is not None:
        counts[full] += cursor.rowcount
    return cursor.rowcount


def _dependents_first(connection: "Connection", database: str, table: str) -> list[tuple[str, str]]:
    """This table and all that depend on it, in an order safe to drop (every child before its parent)."""
    order: list[tuple[str, str]] = []

    def visit(node: tuple[str, str], path: tuple) -> None:
        if node in path:
            return
        for child_db, child, _, _ in _children(connection, *node):
            visit((child_db, child), path + (node,))
        if node not in order:
            order.append(node)

    visit((database, table), ())
    return order
