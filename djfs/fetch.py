"""Fetching: rows of a (restricted) table as numpy record arrays, dicts or per-attribute arrays.

Values are decoded on the way out: blobs unpacked, external references resolved through the schema's
``~external`` table (all of one call's objects fetched in parallel), uuids as ``uuid.UUID``, json parsed.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from . import blob, external_dj
from .errors import QueryError

if TYPE_CHECKING:
    from .table import Table

ORDER_ITEM = re.compile(r"^\s*(?P<name>[a-z][a-z0-9_]*|KEY)(?:\s+(?P<direction>asc|desc))?\s*$", re.I)


def _order_clause(table: "Table", order_by: str | list[str] | tuple | None) -> str:
    if order_by is None:
        return ""
    items = [order_by] if isinstance(order_by, str) else list(order_by)
    parts = []
    for item in items:
        match = ORDER_ITEM.match(item)
        if not match:
            raise QueryError(f"{table.full_table_name}: bad order_by item {item!r}")
        name, direction = match.group("name"), (match.group("direction") or "").upper()
        names = table.primary_key if name == "KEY" else [name]
        for attribute in names:
            if attribute not in table.heading:
                raise QueryError(f"{table.full_table_name}: order_by names unknown attribute {attribute!r}")
            parts.append(f"`{attribute}` {direction}".strip())
    return " ORDER BY " + ", ".join(parts)


def _limit_clause(limit: int | None, offset: int | None) -> str:
    if limit is None and offset is None:
        return ""
    limit = int(limit) if limit is not None else 2**63 - 1
    clause = f" LIMIT {limit}"
    if offset is not None:
        clause += f" OFFSET {int(offset)}"
    return clause


def query_rows(table: "Table", names: list[str], order_by=None, limit=None, offset=None,
               decode: bool = True, squeeze: bool = False, download_path: str = ".") -> list[dict[str, Any]]:
    """Rows as dicts of decoded values, in one query (plus one batch of external object reads)."""
    heading = table.heading
    for name in names:
        if name not in heading:
            raise QueryError(f"{table.full_table_name} has no attribute {name!r}")
    sql, args = table.make_sql(", ".join(f"`{n}`" for n in names))
    sql += _order_clause(table, order_by) + _limit_clause(limit, offset)
    raw = table.connection.query(sql, args, context=f"fetch from {table.full_table_name}").fetchall()
    rows = [dict(zip(names, values)) for values in raw]
    if not decode:
        return rows
    externals = [n for n in names if heading[n].is_external]
    if externals:
        hashes = {row[n] for row in rows for n in externals if row[n] is not None}
        objects = table.external.get_many(sorted(hashes), squeeze=squeeze) if hashes else {}
    external_dj.decode(table, rows, [n for n in names if heading[n].datajoint_kind], squeeze, download_path)
    for row in rows:
        for name in names:
            value = row[name]
            if value is None:
                continue
            attribute = heading[name]
            if attribute.is_blob:
                row[name] = blob.unpack(value, squeeze=squeeze)
            elif attribute.is_external:
                row[name] = objects[value]
            elif attribute.is_uuid:
                row[name] = uuid.UUID(bytes=bytes(value))
            elif attribute.is_json:
                row[name] = json.loads(value)
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


class Fetch:
    """``table.fetch(...)``: DataJoint's call signature."""

    def __init__(self, table: "Table") -> None:
        self._table = table

    def __call__(self, *attrs: str, offset: int | None = None, limit: int | None = None,
                 order_by: str | list[str] | None = None, as_dict: bool | None = None, squeeze: bool = False,
                 format_objects: bool = True, download_path: str = ".") -> Any:
        table = self._table
        heading = table.heading
        if not attrs:
            rows = query_rows(table, heading.names, order_by, limit, offset, format_objects, squeeze, download_path)
            return rows if as_dict else as_record_array(table, heading.names, rows)
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
            raise QueryError(f"fetch1 needs exactly one row of {table.full_table_name}, "
                             f"found {'none' if not rows else 'more than one'}")
        row = rows[0]
        if not attrs:
            return row
        values = [({k: row[k] for k in table.primary_key} if attr == "KEY" else row[attr]) for attr in attrs]
        return values[0] if len(values) == 1 else tuple(values)
