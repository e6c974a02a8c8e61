"""Restrictions (``table & cond``, ``table - cond``) as SQL with bound parameters.

A condition becomes a ``Where``: SQL text holding only identifiers we quoted and ``%s`` placeholders, plus
the values to bind. Accepted, as in DataJoint: a dict (attributes not in the table are ignored), a list or
tuple of conditions (OR), an SQL string (trusted: it is the programmer's own text), another table or query
(semijoin on the attributes they share), ``True``/``False``, and ``Not(cond)``. Blob and external attributes
can't be compared in SQL: a restriction naming one (in a dict, a query or an SQL string) is refused.
"""

from __future__ import annotations

import datetime
import decimal
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import QueryError
from .heading import Heading

if TYPE_CHECKING:
    from .expression import QueryExpression


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
class Top:
    """DataJoint's ``Top``: restrict to the first ``limit`` rows in ``order_by`` order (after ``offset``):
    ``Scan & djfs.Top(3, "depth DESC")``."""
    limit: int | None = 1
    order_by: str | list[str] = "KEY"
    offset: int = 0

    def __post_init__(self) -> None:
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)):
            raise QueryError("Top limit must be an integer")
        if not isinstance(self.offset, int) or isinstance(self.offset, bool):
            raise QueryError("The offset argument must be an integer")


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


def assert_join_compatibility(first: Any, second: Any) -> None:
    """DataJoint 0.14's rule: two queries may be joined (or one restrict the other) on their shared attributes
    only if none of them is a secondary attribute of both: that would match rows by a coincidence of names."""
    shared = [n for n in first.heading.secondary_attributes if n in second.heading.secondary_attributes]
    if shared:
        raise QueryError(f"Cannot join query expressions on dependent attribute `{shared[0]}` (a secondary "
                         "attribute of both; rename it with proj() or use the @ operator)")


def _refuse_objects(heading: Heading, names: Any, where: str) -> None:
    for name in names:
        if name in heading and heading[name].holds_object:
            raise QueryError(f"{where}: attribute {name!r} is {heading[name].type} and can't be used in a "
                             "restriction")


_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"')
_WORD = re.compile(r"`([^`]+)`|\b([A-Za-z_][A-Za-z0-9_]*)\b")


def names_in_sql(text: str) -> set[str]:
    """The identifiers an SQL condition names, outside its string literals (to refuse blob/external ones)."""
    stripped = _LITERAL.sub("''", text)
    return {quoted or bare for quoted, bare in _WORD.findall(stripped)}


def _dict_condition(heading: Heading, condition: Mapping, where: str) -> Where:
    parts, args = [], []
    _refuse_objects(heading, condition, where)
    for name, value in condition.items():
        if name not in heading:
            continue
        attribute = heading[name]
        if value is None:
            parts.append(f"`{name}` IS NULL")
        else:
            parts.append(f"`{name}` = %s")
            args.append(sql_value(attribute, value))
    return Where(" AND ".join(parts) or "TRUE", tuple(args))


def _is_query(thing: Any) -> bool:
    return hasattr(thing, "heading") and hasattr(thing, "make_sql")


def make_condition(query: "QueryExpression", condition: Any, check: bool = True) -> Where:
    """The ``Where`` for one restriction of ``query``; ``check=False`` skips the join-compatibility rule
    (DataJoint's ``^`` operator).

    Queries are known by their interface (``heading``, ``make_sql``), not their class, so this module does not
    import ``expression`` (which imports it): the modules of the relational layer form no cycle."""
    heading = query.heading
    name = query.query_name
    if isinstance(condition, Top):
        raise QueryError(f"{name}: Top(...) restricts a query on its own (query & Top(...)), not negated or in a list")
    if isinstance(condition, Not):
        inner = make_condition(query, condition.condition, check)
        return Where(f"NOT ({inner.sql})", inner.args)
    if isinstance(condition, bool):
        return Where("TRUE" if condition else "FALSE")
    if isinstance(condition, str):
        _refuse_objects(heading, names_in_sql(condition), name)
        return Where(condition.replace("%", "%%"))
    if isinstance(condition, np.void) and condition.dtype.names:
        condition = {n: condition[n] for n in condition.dtype.names}
    if isinstance(condition, Mapping):
        return _dict_condition(heading, condition, name)
    if isinstance(condition, np.ndarray) and condition.dtype.names:
        condition = [{n: row[n] for n in condition.dtype.names} for row in condition]
    if isinstance(condition, (list, tuple, set)):
        parts = [make_condition(query, item, check) for item in condition]
        if not parts:
            return Where("FALSE")
        return Where(" OR ".join(f"({p.sql})" for p in parts), sum((p.args for p in parts), ()))
    if isinstance(condition, type) and _is_query(condition):
        condition = condition()
    if getattr(condition, "universal_set", False):
        raise QueryError(f"{name}: restricting by djfs.U(...) is meaningless; use U(...) & query instead")
    if _is_query(condition):
        if check:
            assert_join_compatibility(query, condition)
        common = [n for n in condition.heading.names if n in heading]
        _refuse_objects(heading, common, name)
        _refuse_objects(condition.heading, common, name)
        if not common:
            return Where("TRUE" if condition else "FALSE")
        columns = ", ".join(f"`{n}`" for n in common)
        inner_sql, inner_args = condition.make_sql(columns)
        return Where(f"({columns}) IN ({inner_sql})", inner_args)
    raise QueryError(f"{name}: unsupported restriction of type {type(condition).__name__}")
