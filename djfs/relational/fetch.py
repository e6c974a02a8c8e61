"""Fetching: rows of any query as numpy record arrays, dicts, per-attribute arrays or a pandas DataFrame.

Values are decoded on the way out (``codec.decode``): blobs unpacked, external references resolved through
the ``~external`` table of the schema each attribute comes from (all of one call's objects fetched in
parallel), uuids as ``uuid.UUID``, json parsed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ..objects import external_dj
from .codec import decode
from ..errors import QueryError

if TYPE_CHECKING:
    from .expression import QueryExpression as Table

ORDER_ITEM = re.compile(r"^\s*(?P<name>[a-z][a-z0-9_]*|KEY)(?:\s+(?P<direction>asc|desc))?\s*$", re.I)


def order_clause(table: "Table", order_by: str | list[str] | tuple | None) -> str:
    if order_by is None:
        return ""
    items = [order_by] if isinstance(order_by, str) else list(order_by)
    parts = []
    for item in items:
        match = ORDER_ITEM.match(item)
        if not match:
            raise QueryError(f"{table.query_name}: bad order_by item {item!r}")
        name, direction = match.group("name"), (match.group("direction") or "").upper()
        names = table.primary_key if name == "KEY" else [name]
        for attribute in names:
            if attribute not in table.heading:
                raise QueryError(f"{table.query_name}: order_by names unknown attribute {attribute!r}")
            parts.append(f"`{attribute}` {direction}".strip())
    return " ORDER BY " + ", ".join(parts)


def limit_clause(limit: int | None, offset: int | None) -> str:
    if limit is None and offset is None:
        return ""
    limit = int(limit) if limit is not None else 2**63 - 1
    clause = f" LIMIT {limit}"
    if offset is not None:
        clause += f" OFFSET {int(offset)}"
    return clause


def query_rows(table: "Table", names: list[str], order_by=None, limit=None, offset=None,
               decode_values: bool = True, squeeze: bool = False,
               download_path: str = ".") -> list[dict[str, Any]]:
    """Rows as dicts of decoded values, in one query (plus one batch of external object reads per schema)."""
    heading = table.heading
    for name in names:
        if name not in heading:
            raise QueryError(f"{table.query_name} has no attribute {name!r}")
    sql, args = table.make_sql(", ".join(f"`{n}`" for n in names))
    sql += order_clause(table, order_by) + limit_clause(limit, offset)
    raw = table.connection.query(sql, args, context=f"fetch from {table.query_name}").fetchall()
    rows = [dict(zip(names, values)) for values in raw]
    if not decode_values:
        return rows
    objects: dict[str, Any] = {}
    by_schema: dict[str, set[str]] = {}
    for name in names:
        if heading[name].is_external:
            by_schema.setdefault(heading[name].database, set()).update(
                row[name] for row in rows if row[name] is not None)
    for database, hashes in by_schema.items():
        if hashes:
            objects.update(table.external_of(database).get_many(sorted(hashes), squeeze=squeeze))
    external_dj.decode(table, rows, [n for n in names if heading[n].datajoint_kind], squeeze, download_path)
    attributes = [heading[name] for name in names]
    for row in rows:
        for attribute in attributes:
            row[attribute.name] = decode(attribute, row[attribute.name], objects, squeeze)
    return rows


def as_record_array(table: "Table", names: list[str], rows: list[dict]) -> np.ndarray:
    dtype = np.dtype([(n, table.heading[n].numpy_type) for n in names])
    result = np.empty(len(rows), dtype=dtype)
    for name in names:
        column = result[name]
        for i, row in enumerate(rows):
            value = row[name]
            if value is None and dtype[name].kind == "f":
                value = np.nan
            column[i] = value
    return result


def _format(format: str | None) -> str:
    if format is None:
        from .. import config
        format = config["fetch_format"]
    if format not in ("array", "frame"):
        raise QueryError(f"fetch format must be 'array' or 'frame', not {format!r}")
    return format


def as_frame(table: "Table", rows: list[dict]) -> Any:
    """A pandas DataFrame indexed by the primary key, as DataJoint's ``format='frame'``."""
    try:
        import pandas
    except ImportError:
        raise QueryError("fetch(format='frame') needs pandas: pip install 'djfs[frame]'") from None
    frame = pandas.DataFrame(rows, columns=table.heading.names)
    return frame.set_index(table.primary_key) if table.primary_key else frame


class Fetch:
    """``table.fetch(...)``: DataJoint's call signature."""

    def __init__(self, table: "Table") -> None:
        self._table = table

    def __call__(self, *attrs: str, offset: int | None = None, limit: int | None = None,
                 order_by: str | list[str] | None = None, as_dict: bool | None = None, squeeze: bool = False,
                 format: str | None = None, format_objects: bool = True, download_path: str = ".") -> Any:
        """``format`` ('array' or 'frame', default the ``fetch_format`` setting) applies when no attributes
        are named and ``as_dict`` is not set, as in DataJoint."""
        table = self._table
        heading = table.heading
        if not attrs:
            rows = query_rows(table, heading.names, order_by, limit, offset, format_objects, squeeze,
                              download_path)
            if as_dict:
                return rows
            if _format(format) == "frame":
                return as_frame(table, rows)
            return as_record_array(table, heading.names, rows)
        names: list[str] = []
        for attr in attrs:
            for name in (table.primary_key if attr == "KEY" else [attr]):
                if name not in names:
                    names.append(name)
        rows = query_rows(table, names, order_by, limit, offset, True, squeeze, download_path)
        if as_dict:
            keep = [n for attr in attrs for n in (table.primary_key if attr == "KEY" else [attr])]
            return [{n: row[n] for n in keep} for row in rows]
        results = []
        for attr in attrs:
            if attr == "KEY":
                results.append([{k: row[k] for k in table.primary_key} for row in rows])
            else:
                results.append(as_record_array(table, [attr], rows)[attr])
        return results[0] if len(attrs) == 1 else tuple(results)


class Fetch1:
    """``table.fetch1(...)``: exactly one row, as a dict or as the requested values."""

    def __init__(self, table: "Table") -> None:
        self._table = table

    def __call__(self, *attrs: str, squeeze: bool = False, download_path: str = ".") -> Any:
        table = self._table
        names: list[str] = []
        for attr in attrs or ("*",):
            expanded = table.heading.names if attr == "*" else table.primary_key if attr == "KEY" else [attr]
            names.extend(n for n in expanded if n not in names)
        rows = query_rows(table, names, limit=2, squeeze=squeeze, download_path=download_path)
        if len(rows) != 1:
            raise QueryError(f"fetch1 needs exactly one row of {table.query_name}, "
                             f"found {'none' if not rows else 'more than one'}")
        row = rows[0]
        if not attrs:
            return row
        values = [({k: row[k] for k in table.primary_key} if attr == "KEY" else row[attr]) for attr in attrs]
        return values[0] if len(values) == 1 else tuple(values)
