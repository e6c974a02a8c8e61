"""Query expressions: DataJoint's relational algebra, compiled to one SQL statement with bound parameters.

A ``QueryExpression`` is a heading (the attributes it yields, with their primary key), a source (what follows
``FROM``) and the restrictions applied so far. Tables are query expressions whose source is the table itself;
every operator returns a new expression and runs nothing until rows are asked for::

    Session * Scan                      join on the attributes both have (natural join)
    Scan & {'session': 1}, Scan - Roi   restriction by a dict, SQL text, a list (OR), another query, Not(...)
    Scan.proj('depth', fov='field')     projection: primary key, the named attributes, renames, computations
    Session.aggr(Scan, n='count(*)')    one row per Session row, with aggregates of its matching Scan rows
    djfs.U('depth') & Scan              the distinct values of attributes, as a query of its own
    Scan.proj() + Archive.proj()        union (same primary key)

Derived expressions are subqueries (``SELECT ... FROM (<operand>) AS `$n` ...``), so a restriction applied to
a projection or a join always refers to the names the user sees. Join and restriction refuse to match on an
attribute that is secondary in both operands, as DataJoint 0.14 does (``@`` and ``^`` allow it).
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import TYPE_CHECKING, Any

from .condition import Not, Top, Where, assert_join_compatibility, make_condition
from ..errors import DjfsError, QueryError
from .fetch import Fetch, Fetch1, limit_clause, order_clause
from .heading import Heading

if TYPE_CHECKING:
    from ..connection import Connection
    from ..objects.external import ExternalTable

_aliases = itertools.count()
IDENTIFIER = re.compile(r"^\s*(?P<name>[A-Za-z_]\w*)\s*$")
DUPLICATE = re.compile(r"^\s*\(\s*(?P<name>[A-Za-z_]\w*)\s*\)\s*$")
CONSTANTS = {"null", "true", "false", "current_timestamp"}


def _alias() -> str:
    return f"`${next(_aliases)}`"


def as_expression(operand: Any) -> "QueryExpression":
    """A table class becomes an instance; anything that is not a query is refused."""
    if isinstance(operand, type) and issubclass(operand, QueryExpression):
        operand = operand()
    if not isinstance(operand, QueryExpression):
        raise QueryError(f"{operand!r} is not a query expression (a table or a query built from tables)")
    return operand


class QueryExpression:
    """The algebra and the reads every query shares; subclasses say what the query reads from."""

    connection: "Connection | None" = None
    _restrictions: list[Where]

    # -- what a subclass provides
    @property
    def heading(self) -> Heading:
        raise NotImplementedError

    def from_clause(self) -> tuple[str, tuple]:
        """The SQL after ``FROM`` and the values it binds."""
        raise NotImplementedError

    @property
    def query_name(self) -> str:
        """How errors name this query."""
        raise NotImplementedError

    def _find_external(self, database: str) -> "ExternalTable | None":
        return None

    def external_of(self, database: str | None) -> "ExternalTable":
        """The ``~external`` table of the schema an external attribute comes from."""
        found = self._find_external(database)
        if found is not None:
            return found
        from ..objects.external import ExternalTable
        return ExternalTable(self.connection, database)

    # -- reading
    @property
    def primary_key(self) -> list[str]:
        return self.heading.primary_key

    @property
    def where(self) -> Where:
        return Where.all(self._restrictions)

    def make_sql(self, columns: str | None = None) -> tuple[str, tuple]:
        source, source_args = self.from_clause()
        where = self.where
        columns = columns or ", ".join(f"`{n}`" for n in self.heading.names) or "1"
        return f"SELECT {columns} FROM {source} WHERE {where.sql}", tuple(source_args) + tuple(where.args)

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

    @property
    def fetch(self) -> Fetch:
        return Fetch(self)

    @property
    def fetch1(self) -> Fetch1:
        return Fetch1(self)

    def head(self, limit: int = 25, **fetch_kwargs: Any) -> Any:
        """The first ``limit`` rows in primary-key order."""
        return self.fetch(order_by="KEY", limit=limit, **fetch_kwargs)

    def tail(self, limit: int = 25, **fetch_kwargs: Any) -> Any:
        """The last ``limit`` rows, in primary-key order."""
        return self.fetch(order_by="KEY DESC", limit=limit, **fetch_kwargs)[::-1]

    # -- restriction
    def _copy(self) -> "QueryExpression":
        other = copy.copy(self)
        other._restrictions = list(self._restrictions)
        return other

    def restrict(self, condition: Any, check: bool = True) -> "QueryExpression":
        if isinstance(condition, Top):
            sql, args = self.make_sql()
            limit = condition.limit if condition.limit is not None or not condition.offset else 2**63 - 1
            sql += order_clause(self, condition.order_by) + limit_clause(limit, condition.offset or None)
            return Derived(self.connection, self.heading, sql, args, f"({self.query_name} & {condition})", [self])
        result = self._copy()
        result._restrictions.append(make_condition(self, condition, check))
        return result

    def __and__(self, condition: Any) -> "QueryExpression":
        return self.restrict(condition)

    def __xor__(self, condition: Any) -> "QueryExpression":
        """Restriction that may match on attributes secondary in both (DataJoint's permissive ``^``)."""
        return self.restrict(condition, check=False)

    def __sub__(self, condition: Any) -> "QueryExpression":
        return self.restrict(Not(condition))

    # -- join
    def join(self, other: Any, left: bool = False, check: bool = True) -> "QueryExpression":
        """Natural join: rows of both that agree on every attribute they share."""
        if isinstance(other, U):
            return other.join(self)
        other = as_expression(other)
        if check:
            assert_join_compatibility(self, other)
        heading = self.heading.join(other.heading)
        first, first_args = self.make_sql()
        second, second_args = other.make_sql()
        source = f"({first}) AS {_alias()} NATURAL {'LEFT ' if left else ''}JOIN ({second}) AS {_alias()}"
        return Derived(self.connection, heading, _select(heading.names, source), first_args + second_args,
                       f"({self.query_name} * {other.query_name})", [self, other])

    def __mul__(self, other: Any) -> "QueryExpression":
        return self.join(other)

    def __matmul__(self, other: Any) -> "QueryExpression":
        """Join that may match on attributes secondary in both (DataJoint's permissive ``@``)."""
        return self.join(other, check=False)

    def __add__(self, other: Any) -> "QueryExpression":
        """Union, as DataJoint's: same primary key, no shared secondary attributes; a row of only one operand
        has NULL for the other's secondary attributes."""
        other = as_expression(other)
        if set(self.primary_key) != set(other.primary_key):
            raise QueryError("The operands of a union must share the same primary key.")
        if set(self.heading.secondary_attributes) & set(other.heading.secondary_attributes):
            raise QueryError("The operands of a union must not share any secondary attributes.")
        heading = self.heading.join(other.heading)
        if not heading.secondary_attributes:
            columns = ", ".join(f"`{n}`" for n in heading.primary_key)
            (first, first_args), (second, second_args) = self.make_sql(columns), other.make_sql(columns)
        else:
            columns = ", ".join(f"`{n}`" for n in heading.names)
            first, first_args = self.join(other, left=True).make_sql(columns)
            missing = (other - self).proj(..., **{n: "NULL" for n in self.heading.secondary_attributes})
            second, second_args = missing.make_sql(columns)
        return Derived(self.connection, heading, f"({first}) UNION ({second})", first_args + second_args,
                       f"({self.query_name} + {other.query_name})", [self, other])

    # -- projection and aggregation
    def proj(self, *attributes: Any, **named: str) -> "QueryExpression":
        """Primary key, the named attributes (``...`` for all, ``'-a'`` to leave one out), renames
        ``new='old'`` and computed attributes ``new='<SQL expression>'``."""
        heading, columns = _projection(self.heading, attributes, named)
        source, args = self.make_sql(", ".join(columns))
        return Derived(self.connection, heading, source, args, f"{self.query_name}.proj()", [self])

    def aggr(self, group: Any, *attributes: Any, keep_all_rows: bool = False, **named: str) -> "QueryExpression":
        """One row per row of this query, with attributes computed over its matching rows of ``group``
        (``Session.aggr(Scan, n='count(*)')``); ``keep_all_rows`` keeps rows that match none."""
        group = as_expression(group)
        assert_join_compatibility(self, group)
        if Ellipsis in attributes or "..." in attributes:
            attributes = tuple(a for a in attributes if a not in (Ellipsis, "...")) + tuple(
                self.heading.secondary_attributes)
        return _aggregate(self, group, self.primary_key, attributes, named, keep_all_rows)

    aggregate = aggr

    def __repr__(self) -> str:
        from .. import config
        limit = config["display.limit"]
        try:
            rows = self.fetch(limit=limit, as_dict=True, format_objects=False)
            count = len(self)
        except DjfsError as error:
            return f"<{self.query_name}: {error}>"
        names = self.heading.names
        lines = [f"{self.query_name}  ({count} rows)", "  ".join(names)]
        for row in rows:
            lines.append("  ".join("=OBJ=" if self.heading[n].holds_object else str(row[n]) for n in names))
        if count > len(rows):
            lines.append("...")
        return "\n".join(lines)


class Derived(QueryExpression):
    """A query built from others: its source is a subquery."""

    def __init__(self, connection: "Connection", heading: Heading, sql: str, args: tuple, name: str,
                 operands: list[QueryExpression]) -> None:
        self.connection = connection
        self._heading = heading
        self._sql, self._args = sql, tuple(args)
        self._name = name
        self._operands = operands
        self._restrictions = []

    @property
    def heading(self) -> Heading:
        return self._heading

    @property
    def query_name(self) -> str:
        return self._name

    def from_clause(self) -> tuple[str, tuple]:
        return f"({self._sql}) AS {_alias()}", self._args

    def _find_external(self, database: str) -> "ExternalTable | None":
        for operand in self._operands:
            found = operand._find_external(database)
            if found is not None:
                return found
        return None


class U:
    """DataJoint's universal set: ``U('a', 'b') & query`` is the distinct values of ``a, b`` in ``query``;
    ``U('a').aggr(query, n='count(*)')`` groups ``query`` by ``a``; ``query * U('a')`` adds ``a`` to the
    primary key."""

    universal_set = True  # how restrictions recognise it

    def __init__(self, *attributes: str) -> None:
        for name in attributes:
            if not isinstance(name, str) or not IDENTIFIER.match(name):
                raise QueryError(f"U() takes attribute names, not {name!r}")
        self._primary_key = list(attributes)

    @property
    def primary_key(self) -> list[str]:
        return list(self._primary_key)

    def __repr__(self) -> str:
        return f"U({', '.join(map(repr, self._primary_key))})"

    def _check(self, query: QueryExpression) -> None:
        missing = [n for n in self._primary_key if n not in query.heading]
        if missing:
            raise QueryError(f"U(): {query.query_name} has no attribute {missing[0]!r}")

    def __and__(self, query: Any) -> QueryExpression:
        if not self._primary_key:
            raise QueryError("U() & query needs attribute names: U('a', ...) & query")
        query = as_expression(query)
        self._check(query)
        heading = query.heading.with_primary_key(self._primary_key)
        heading = Heading({n: heading[n] for n in self._primary_key})
        inner, args = query.make_sql("DISTINCT " + ", ".join(f"`{n}`" for n in self._primary_key))
        return Derived(query.connection, heading, inner, args, f"({self!r} & {query.query_name})", [query])

    def join(self, query: Any) -> QueryExpression:
        query = as_expression(query)
        self._check(query)
        key = query.primary_key + [n for n in self._primary_key if n not in query.primary_key]
        heading = query.heading.with_primary_key(key)
        inner, args = query.make_sql()
        return Derived(query.connection, heading, inner, args, f"({query.query_name} * {self!r})", [query])

    def __mul__(self, query: Any) -> QueryExpression:
        return self.join(query)

    __rmul__ = __mul__

    def __sub__(self, query: Any) -> None:
        raise QueryError("U() can't be restricted by negation: it is the set of all values")

    def aggr(self, group: Any, keep_all_rows: bool = False, **named: str) -> QueryExpression:
        if keep_all_rows:
            raise QueryError("Cannot set keep_all_rows=True when aggregating on a universal set.")
        group = as_expression(group)
        self._check(group)
        return _aggregate(None, group, self._primary_key, (), named, False)

    aggregate = aggr


def _select(names: list[str], source: str) -> str:
    return f"SELECT {', '.join(f'`{n}`' for n in names) or '1'} FROM {source}"


def _projection(heading: Heading, attributes: tuple, named: dict[str, str]) -> tuple[Heading, list[str]]:
    """The heading and the SELECT items of ``proj(*attributes, **named)``, checked as DataJoint checks them."""
    for item in attributes:
        if item is not Ellipsis and not isinstance(item, str):
            raise QueryError(f"{item!r} is not a valid data type for an attribute in .proj")
    renamed: dict[str, str] = {}
    duplicated: dict[str, str] = {}
    computed: dict[str, str] = {}
    for new, text in named.items():
        if not isinstance(text, str):
            raise QueryError(f"proj({new}=...) needs an attribute name or an SQL expression, not {text!r}")
        rename, duplicate = IDENTIFIER.match(text), DUPLICATE.match(text)
        if rename and rename.group("name").lower() not in CONSTANTS:
            renamed[new] = rename.group("name")
        elif duplicate and duplicate.group("name").lower() not in CONSTANTS:
            duplicated[new] = duplicate.group("name")
        else:
            computed[new] = text
    wanted = {a.strip() for a in attributes if isinstance(a, str) and a.strip() not in ("...",)
              and not a.strip().startswith("-")}
    wanted.update(k for k in heading.primary_key if k not in renamed.values())
    if Ellipsis in attributes or "..." in attributes:
        wanted.update(a for a in heading.secondary_attributes if a not in renamed.values())
    excluded = {a.strip().lstrip("-").strip() for a in attributes if isinstance(a, str) and a.strip().startswith("-")}
    key_excluded = [a for a in excluded if a in heading.primary_key]
    if key_excluded:
        raise QueryError(f"Cannot exclude primary key attribute {key_excluded[0]}")
    wanted -= excluded
    for name in sorted(wanted | set(renamed.values()) | set(duplicated.values()) | excluded):
        if name not in heading:
            raise QueryError(f"Attribute `{name}` not found.")
    for new in list(renamed) + list(duplicated) + list(computed):
        if new in wanted or sum(new in group for group in (renamed, duplicated, computed)) > 1:
            raise QueryError(f"Attribute `{new}` already exists")
    from dataclasses import replace
    attributes_out, columns = {}, []
    for name in heading.names:
        if name in wanted:
            attributes_out[name] = heading[name]
            columns.append(f"`{name}`")
        for new, old in renamed.items():
            if old == name:
                attributes_out[new] = replace(heading[old], name=new)
                columns.append(f"`{old}` AS `{new}`")
    for new, old in duplicated.items():
        attributes_out[new] = replace(heading[old], name=new, in_key=False)
        columns.append(f"`{old}` AS `{new}`")
    for new, text in computed.items():
        attributes_out[new] = Heading.computed(new, text)
        # '%' is SQL's; DataJoint makes users write '%%' here, which is read the same way
        columns.append(f"({re.sub('%%?', '%%', text)}) AS `{new}`")
    key = [n for n, a in attributes_out.items() if a.in_key]
    result = Heading(attributes_out).with_primary_key(key)
    return result, columns


def _aggregate(query: QueryExpression | None, group: QueryExpression, key: list[str], attributes: tuple,
               named: dict[str, str], keep_all_rows: bool) -> QueryExpression:
    """``query.aggr(group, ...)`` (``query`` None: ``U(*key).aggr(group, ...)``): grouped by ``key``."""
    if query is None:
        heading = group.heading.with_primary_key(key)
        source, args = group.from_clause()
        where = group.where
        source = f"{source} WHERE {where.sql}"
        args = tuple(args) + tuple(where.args)
        operands, name = [group], f"U({', '.join(key)}).aggr({group.query_name})"
    else:
        heading = query.heading.join(group.heading).with_primary_key(key)
        first, first_args = query.make_sql()
        second, second_args = group.make_sql()
        source = f"({first}) AS {_alias()} NATURAL {'LEFT ' if keep_all_rows else ''}JOIN ({second}) AS {_alias()}"
        args = first_args + second_args
        operands, name = [query, group], f"{query.query_name}.aggr({group.query_name})"
    result, columns = _projection(heading, attributes, named)
    group_by = f" GROUP BY {', '.join(f'`{n}`' for n in key)}" if key else ""
    sql = f"SELECT {', '.join(columns) or '1'} FROM {source}{group_by}"
    return Derived(group.connection, result, sql, args, name, operands)
