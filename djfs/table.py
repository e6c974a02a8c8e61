"""Tables: restriction, insert, delete, drop, describe — DataJoint's behaviour on one MySQL table.

A ``Table`` instance is a query: the table plus the restrictions applied so far (``&``, ``-``); every
method runs against that restricted set. Through ``TableMeta`` the same methods work on the class
(``Mouse.insert1(...)``, ``Mouse & key``), as in DataJoint.
"""

from __future__ import annotations

import datetime
import decimal
import json
import logging
import math
import numbers
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import blob
from .condition import Not, Where, make_condition, sql_value
from .errors import DataError, DjfsError, DuplicateError, QueryError
from .fetch import Fetch, Fetch1
from .heading import Attribute, Heading

if TYPE_CHECKING:
    from .connection import Connection
    from .external import ExternalTable

log = logging.getLogger(__name__)

#: names that, read on a table class, act on a fresh instance (``Mouse.insert1`` as in DataJoint)
CLASS_METHODS = {"insert", "insert1", "delete", "delete_quick", "drop", "drop_quick", "describe", "fetch",
                 "fetch1", "heading", "restrict", "primary_key", "make_sql", "children", "parents",
                 "external", "keys", "populate", "key_source", "full_table_name", "table_name", "where"}
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


class Table(metaclass=TableMeta):
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

    # -- restriction
    def _copy(self) -> "Table":
        other = object.__new__(type(self))
        other._restrictions = list(self._restrictions)
        return other

    def restrict(self, condition: Any) -> "Table":
        result = self._copy()
        result._restrictions.append(make_condition(self, condition))
        return result

    def __and__(self, condition: Any) -> "Table":
        return self.restrict(condition)

    def __sub__(self, condition: Any) -> "Table":
        return self.restrict(Not(condition))

    @property
    def where(self) -> Where:
        return Where.all(self._restrictions)

    def make_sql(self, columns: str | None = None) -> tuple[str, tuple]:
        where = self.where
        columns = columns or ", ".join(f"`{n}`" for n in self.heading.names)
        return f"SELECT {columns} FROM {self.full_table_name} WHERE {where.sql}", where.args

    def __len__(self) -> int:
        sql, args = self.make_sql("COUNT(*)")
        return int(self.connection.query(sql, args).fetchone()[0])

    def __bool__(self) -> bool:
        sql, args = self.make_sql("1")
        return self.connection.query(sql + " LIMIT 1", args).fetchone() is not None

    def __contains__(self, item: Any) -> bool:
        return bool(self & item)

    def __iter__(self):
        return iter(self.fetch("KEY"))

    def keys(self) -> list[dict]:
        return self.fetch("KEY")

    # -- fetch
    @property
    def fetch(self) -> Fetch:
        return Fetch(self)

    @property
    def fetch1(self) -> Fetch1:
        return Fetch1(self)

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
        pending = self.external.prepare(self, rows, externals) if externals else None
        encoded = [[self._encode(heading[n], row.get(n), pending, index) for n in names]
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
        placeholder = "(" + ", ".join(["%s"] * len(names)) + ")"
        with self.connection.transaction():
            if pending is not None:
                if replace:
                    self._mark_replaced_externals(rows, externals)
                pending.commit()
            for batch in self._batches(encoded, names):
                sql = (f"{verb} INTO {self.full_table_name} ({columns}) VALUES "
                       + ", ".join([placeholder] * len(batch)) + suffix)
                try:
                    self.connection.query(sql, [v for row in batch for v in row],
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

    def _encode(self, attribute: Attribute, value: Any, pending: Any, index: int) -> Any:
        """One value as the driver binds it, checked against its attribute's type."""
        where = f"{self.full_table_name}.{attribute.name}"
        if value is None or (isinstance(value, float) and math.isnan(value) and attribute.nullable):
            if value is not None or attribute.nullable or attribute.default is not None:
                return None
            if not attribute.nullable:
                raise DataError(f"{where} can't be NULL")
        if attribute.is_external:
            return pending.hash_of(index, attribute.name)
        if attribute.is_blob:
            return blob.pack(value)
        if attribute.is_json:
            try:
                return json.dumps(value, default=_json_default)
            except (TypeError, ValueError) as error:
                raise DataError(f"{where}: value is not JSON-serializable: {error}") from None
        if attribute.is_uuid:
            try:
                return sql_value(attribute, value)
            except QueryError:
                raise DataError(f"{where}: {value!r} is not a UUID") from None
        if isinstance(value, np.generic):
            value = value.item()
        base = attribute.base_sql_type
        if attribute.type == "bool":
            if not isinstance(value, (bool, int, np.bool_)):
                raise DataError(f"{where}: expected a bool, got {type(value).__name__}")
            return int(value)
        if re.match(r"^(tiny|small|medium|big)?int", base):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                if isinstance(value, float) and value.is_integer():
                    return int(value)
                raise DataError(f"{where}: expected an integer, got {value!r}")
            return int(value)
        if base.startswith(("float", "double", "real", "decimal")):
            if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
                raise DataError(f"{where}: expected a number, got {value!r}")
            if isinstance(value, float) and math.isnan(value):
                raise DataError(f"{where}: NaN can't be stored in a non-nullable attribute")
            return value
        if base.startswith(("char", "varchar", "enum", "tinytext", "text", "mediumtext", "longtext")):
            if not isinstance(value, str):
                raise DataError(f"{where}: expected a string, got {type(value).__name__}")
            return value
        if base.startswith(("date", "time", "year")):
            if not isinstance(value, (str, int, datetime.date, datetime.time, datetime.timedelta,
                                      np.datetime64)):
                raise DataError(f"{where}: expected a date/time, got {type(value).__name__}")
            if isinstance(value, np.datetime64):
                value = value.astype("datetime64[us]").item()
            return value
        return value

    def _batches(self, rows: list[list], names: list[str]) -> Iterable[list[list]]:
        """Rows grouped so that no INSERT statement exceeds the server's ``max_allowed_packet``."""
        limit = int(self.connection.max_allowed_packet() * STATEMENT_SHARE)
        batch, size = [], 0
        for row in rows:
            row_size = 64 + sum(2 * len(v) + 8 if isinstance(v, (bytes, str)) else 24 for v in row)
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
        self.external.mark_deleted(restricted, externals)

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

    def delete_quick(self) -> int:
        """Delete the restricted rows of this table only (fails if other rows depend on them)."""
        with self.connection.transaction():
            return _delete_rows(self.connection, self.database, self.table_name, self.where, cascade=False)

    def delete(self, safemode: bool | None = None) -> int:
        """Delete the restricted rows and, in the same transaction, every row that depends on them."""
        with self.connection.transaction():
            count = _delete_rows(self.connection, self.database, self.table_name, self.where, cascade=True)
        log.info("deleted %d rows from %s", count, self.full_table_name)
        return count

    def drop_quick(self) -> None:
        self.connection.query(f"DROP TABLE IF EXISTS {self.full_table_name}")
        type(self)._heading = None

    def drop(self) -> None:
        """Drop this table and the tables that depend on it, children first."""
        if self._restrictions:
            raise DjfsError("drop() applies to a whole table, not to a restriction")
        order = _dependents_first(self.connection, self.database, self.table_name)
        for database, table in order:
            with self.connection.transaction():
                _delete_rows(self.connection, database, table, Where("TRUE"), cascade=False)
            self.connection.query(f"DROP TABLE IF EXISTS `{database}`.`{table}`")
        type(self)._heading = None

    def describe(self, printout: bool = False) -> str:
        """The table's definition, regenerated from the server."""
        heading = self.heading
        lines = [f"# {heading.comment}"] if heading.comment else []
        separated = False
        for attribute in heading:
            if not attribute.in_key and not separated:
                lines.append("---")
                separated = True
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
            comment = f"  # {attribute.comment}" if attribute.comment else ""
            lines.append(f"{attribute.name}{default} : {kind}{comment}")
        if not separated:
            lines.append("---")
        text = "\n".join(lines)
        if printout:
            print(text)
        return text

    def __repr__(self) -> str:
        try:
            rows = self.fetch(limit=10, as_dict=True, format_objects=False)
            count = len(self)
        except DjfsError as error:
            return f"<{type(self).__name__}: {error}>"
        names = self.heading.names
        lines = [f"{self.full_table_name}  ({count} rows)", "  ".join(names)]
        for row in rows:
            lines.append("  ".join("=OBJ=" if self.heading[n].holds_object else str(row[n]) for n in names))
        if count > len(rows):
            lines.append("...")
        return "\n".join(lines)


def _hashable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, uuid.UUID):
        return value.bytes
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (datetime.date, datetime.time, uuid.UUID, decimal.Decimal)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


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
                 depth: int = 0) -> int:
    """Delete rows (children first when cascading); their external entries are marked ``deleted``."""
    if depth > 64:
        raise DjfsError("delete cascades deeper than 64 levels: is there a cycle of foreign keys?")
    full = f"`{database}`.`{table}`"
    if cascade:
        for child_db, child, columns, references in _children(connection, database, table):
            cols = ", ".join(f"`{c}`" for c in columns)
            refs = ", ".join(f"`{r}`" for r in references)
            child_where = Where(f"({cols}) IN (SELECT {refs} FROM {full} WHERE {where.sql})", where.args)
            _delete_rows(connection, child_db, child, child_where, cascade=True, depth=depth + 1)
    if not table.startswith("~"):
        heading = Heading.load(connection, database, table)
        for name in heading.externals:
            connection.query(
                f"UPDATE `{database}`.`~external` SET status = 'deleted' WHERE hash IN "
                f"(SELECT `{name}` FROM {full} WHERE {where.sql})", where.args)
    cursor = connection.query(f"DELETE FROM {full} WHERE {where.sql}", where.args, context=f"delete from {full}")
    return cursor.rowcount if depth == 0 else cursor.rowcount


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
