"""Restrictions (``table & cond``, ``table - cond``) as SQL with bound parameters.

A condition becomes a ``Where``: SQL text holding only identifiers we quoted and ``%s`` placeholders, plus
the values to bind. Accepted, as in DataJoint: a dict (attributes not in the table are ignored), a list or
tuple of conditions (OR), an SQL string (trusted: it is the programmer's own text), another table or query
(semijoin on the attributes they share), ``True``/``False``, and ``Not(cond)``.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import QueryError
from .heading import Heading

if TYPE_CHECKING:
    from .table import Table


@dataclass(frozen=True)
class Where:
    sql: str
    args: tuple = field(default_factory=tuple)

    @staticmethod
    def all(parts: list["Where"]) -> "Where":
        if not parts:
            return Where("TRUE")
        return Where(" AND ".join(f"({p.sql})" for p in parts), sum((p.args for p in parts), ()))


@dataclass(frozen=True)
class Not:
    """Negation of a condition: ``table - cond`` is ``table & Not(cond)``."""
    condition: Any


def sql_value(attribute, value: Any) -> Any:
    """A Python value in the form the driver binds for this attribute (uuid as 16 bytes, numpy as Python)."""
    if value is None:
        return None
    if attribute is not None and attribute.is_uuid:
        if isinstance(value, uuid.UUID):
            return value.bytes
        if isinstance(value, str):
            try:
                return uuid.UUID(value).bytes
            except ValueError:
                raise QueryError(f"{value!r} is not a UUID for attribute {attribute.name!r}") from None
        if isinstance(value, (bytes, bytearray)) and len(value) == 16:
            return bytes(value)
        raise QueryError(f"{value!r} is not a UUID for attribute {attribute.name!r}")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str, bytes, decimal.Decimal, datetime.date, datetime.time,
                          datetime.timedelta)):
        return value
    raise QueryError(f"can't compare attribute {getattr(attribute, 'name', '?')!r} with a value of type "
                     f"{type(value).__name__}")


def _dict_condition(heading: Heading, condition: Mapping, table_name: str) -> Where:
    parts, args = [], []
    for name, value in condition.items():
        if name not in heading:
            continue
        attribute = heading[name]
        if attribute.holds_object:
            raise QueryError(f"{table_name}: attribute {name!r} is {attribute.type} and can't be used in a "
                             "restriction")
        if value is None:
            parts.append(f"`{name}` IS NULL")
        else:
            parts.append(f"`{name}` = %s")
            args.append(sql_value(attribute, value))
    return Where(" AND ".join(parts) or "TRUE", tuple(args))


def make_condition(table: "Table", condition: Any) -> Where:
    """The ``Where`` for one restriction of ``table``."""
    heading = table.heading
    name = table.full_table_name
    if isinstance(condition, Not):
        inner = make_condition(table, condition.condition)
        return Where(f"NOT ({inner.sql})", inner.args)
    if isinstance(condition, bool):
        return Where("TRUE" if condition else "FALSE")
    if isinstance(condition, str):
        return Where(condition.replace("%", "%%"))
    if isinstance(condition, np.void) and condition.dtype.names:
        condition = {n: condition[n] for n in condition.dtype.names}
    if isinstance(condition, Mapping):
        return _dict_condition(heading, condition, name)
    if isinstance(condition, np.ndarray) and condition.dtype.names:
        condition = [{n: row[n] for n in condition.dtype.names} for row in condition]
    if isinstance(condition, (list, tuple, set)):
        parts = [make_condition(table, item) for item in condition]
        if not parts:
            return Where("FALSE")
        return Where(" OR ".join(f"({p.sql})" for p in parts), sum((p.args for p in parts), ()))
    if hasattr(condition, "heading") and hasattr(condition, "make_sql"):
        other = condition() if isinstance(condition, type) else condition
        common = [n for n in other.heading.names if n in heading]
        for attribute in common:
            if heading[attribute].holds_object:
                raise QueryError(f"{name}: can't restrict by {attribute!r}, an {heading[attribute].type} attribute")
        if not common:
            return Where("TRUE" if len(other) else "FALSE")
        columns = ", ".join(f"`{n}`" for n in common)
        inner_sql, inner_args = other.make_sql(columns)
        return Where(f"({columns}) IN ({inner_sql})", inner_args)
    raise QueryError(f"{name}: unsupported restriction of type {type(condition).__name__}")
