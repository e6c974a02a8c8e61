"""DataJoint's definition syntax, parsed into a ``CREATE TABLE`` statement.

A definition is a table comment line (``# ...``), primary-key lines, a ``---`` separator, secondary lines.
Each line is one of::

    -> Parent                          (foreign key; its primary key joins this table's section)
    -> [nullable] Parent               (secondary only: the inherited attributes may be NULL)
    -> Parent.proj(new='old', ...)     (foreign key whose attributes are renamed in this table)
    name = default : type   # comment
    index(attr, ...)   /   unique index(attr, ...)

Any line that is none of these raises ``DeclarationError`` quoting it: a typo never turns into a silently
different table. Defaults are rendered as SQL literals with the driver's escaping; DDL has no bound parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pymysql.converters import escape_string

from ..errors import DeclarationError
from ..settings import STORE_NAME

EXTERNAL_TABLE = "~external"
HASH_SQL_TYPE = "char(43) CHARACTER SET ascii COLLATE ascii_bin"

ATTRIBUTE_LINE = re.compile(
    r"""^(?P<name>[a-z][a-z0-9_]*)\s*
        (?:=\s*(?P<default>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^:#"']*?)\s*)?
        :\s*(?P<type>[^#]+?)\s*
        (?:\#\s*(?P<comment>.*))?$""", re.X)
FOREIGN_KEY_LINE = re.compile(r"^->\s*(?P<options>\[\s*nullable\s*\])?\s*(?P<ref>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*?)"
                              r"(?:\s*\.\s*proj\s*\((?P<renames>[^)]*)\))?\s*$")
RENAME = re.compile(r"^\s*(?P<new>[a-z][a-z0-9_]*)\s*=\s*(?P<quote>['\"])(?P<old>[a-z][a-z0-9_]*)(?P=quote)\s*$")
INDEX_LINE = re.compile(r"^(?P<unique>unique\s+)?index\s*\((?P<attrs>[^)]*)\)\s*$", re.I)
SEPARATOR_LINE = re.compile(r"^-{3,}\s*$")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")

#: accepted types: pattern -> how it is written in SQL (None: as written)
TYPE_PATTERNS: list[tuple[re.Pattern, str | None]] = [(re.compile(p, re.I), sql) for p, sql in [
    (r"^(tiny|small|medium|big)?int(\s*\(\d+\))?(\s+unsigned)?(\s+zerofill)?$", None),
    (r"^(float|double|real)(\s*\(\d+\s*,\s*\d+\))?(\s+unsigned)?$", None),
    (r"^decimal\s*\(\d+\s*(,\s*\d+)?\)(\s+unsigned)?$", None),
    (r"^(var)?char\s*\(\d+\)$", None),
    (r"^enum\s*\((\s*('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\s*,?)+\)$", None),
    (r"^(bool|boolean)$", "tinyint"),
    (r"^(date|time|year)$", None),
    (r"^(datetime|timestamp)(\s*\(\d\))?$", None),
    (r"^(tiny|medium|long)?text$", None),
    (r"^(tiny|medium|long)?blob$", None),
    (r"^uuid$", "binary(16)"),
    (r"^json$", "longtext"),
    (rf"^external(-{STORE_NAME})?$", HASH_SQL_TYPE),
    (rf"^npy@({STORE_NAME})?$", HASH_SQL_TYPE),   # external object stored as .npy (djfs.npy)
    (r"^(blob|attach|filepath)@[a-z][-\w]*$", "binary(16)"),  # DataJoint 0.12-0.14's kinds (djfs.objects.external_dj)
    (r"^attach$", "longblob"),
]]
SPECIAL_TYPES = ("uuid", "json", "bool", "boolean")
SQL_KEYWORD_DEFAULTS = {"null", "current_timestamp", "current_timestamp()"}


@dataclass
class ParsedAttribute:
    name: str
    type: str            # as written in the definition
    sql_type: str
    in_key: bool
    nullable: bool = False
    default: str | None = None   # as an SQL literal
    comment: str = ""

    @property
    def special(self) -> str | None:
        lowered = self.type.lower()
        if lowered.startswith(("external", "npy@")) or "@" in lowered or lowered == "attach":
            return lowered
        if lowered in SPECIAL_TYPES:
            return "bool" if lowered == "boolean" else lowered
        return None

    @property
    def is_object(self) -> bool:
        lowered = self.type.lower()
        return (lowered.endswith("blob") or external_store(lowered) is not None or "@" in lowered
                or lowered == "attach")

    def sql(self) -> str:
        comment = f":{self.special}:{self.comment}" if self.special else self.comment
        null = "NULL" if self.nullable else "NOT NULL"
        default = f" DEFAULT {self.default}" if self.default is not None else ""
        check = f" CHECK (json_valid(`{self.name}`))" if self.special == "json" else ""
        return f'`{self.name}` {self.sql_type} {null}{default} COMMENT "{escape_string(comment)}"{check}'


@dataclass
class Declaration:
    """Everything the schema needs to create a table: the statement and what it depends on."""
    sql: str
    attributes: list[ParsedAttribute] = field(default_factory=list)
    parents: list[Any] = field(default_factory=list)
    stores: set[str] = field(default_factory=set)   # '' for the default store
    datajoint_stores: set[str] = field(default_factory=set)   # DataJoint's stores (``~external_<store>``)

    @property
    def primary_key(self) -> list[str]:
        return [a.name for a in self.attributes if a.in_key]


def external_store(special: str) -> str | None:
    """The store ('' for the default) of an ``external[-store]`` or ``npy@[store]`` type, else None."""
    if special.startswith("external"):
        return special[len("external-"):] if "-" in special else ""
    if special.startswith("npy@"):
        return special[len("npy@"):]
    return None


def _error(table: str, line: str, why: str) -> DeclarationError:
    return DeclarationError(f"in the definition of {table}: {why}: {line.strip()!r}")


def _sql_type(written: str) -> str | None:
    for pattern, sql in TYPE_PATTERNS:
        if pattern.match(written):
            return sql or written
    return None


def _default_literal(default: str, sql_type: str) -> str:
    lowered = default.lower()
    if lowered in SQL_KEYWORD_DEFAULTS:
        return default.upper()
    if default[:1] in "\"'" and default[-1:] == default[:1] and len(default) >= 2:
        default = default[1:-1]
    elif re.match(r"^-?\d+(\.\d*)?([eE][-+]?\d+)?$", default) and not sql_type.lower().startswith(
            ("char", "varchar", "enum", "date", "time")):
        return default
    return f'"{escape_string(default)}"'


def _resolve(reference: str, context: Mapping[str, Any], table: str, line: str) -> Any:
    """``Parent`` or ``module.Parent`` looked up in the declaring module's names; never ``eval``."""
    head, *rest = reference.split(".")
    if head not in context:
        raise _error(table, line, f"{head!r} is not defined where the table is declared")
    target = context[head]
    for part in rest:
        if not hasattr(target, part):
            raise _error(table, line, f"{reference!r} can't be resolved")
        target = getattr(target, part)
    if not (isinstance(target, type) and hasattr(target, "full_table_name")):
        raise _error(table, line, f"{reference!r} is not a table")
    return target


def _renames(text: str | None, parent: Any, table: str, line: str) -> dict[str, str]:
    """``new='old', ...`` of ``-> Parent.proj(...)`` as {old: new}; only the parent's key can be renamed."""
    if text is None:
        return {}
    renames: dict[str, str] = {}
    for item in filter(str.strip, text.split(",")):
        match = RENAME.match(item)
        if not match:
            raise _error(table, line, f"a foreign key's proj() takes only renames new='old', not {item.strip()!r}")
        if match.group("old") not in parent.heading.primary_key:
            raise _error(table, line, f"{match.group('old')!r} is not in the primary key of the referenced table")
        renames[match.group("old")] = match.group("new")
    return renames


def parse(table: str, definition: str, context: Mapping[str, Any]) -> tuple[str, list, list, list]:
    """Split a definition into (comment, attributes, foreign keys, indexes); raises quoting the bad line."""
    comment = ""
    attributes: list[ParsedAttribute] = []
    foreign_keys: list[tuple[Any, bool, str, dict[str, str]]] = []
    indexes: list[tuple[bool, list[str], str]] = []
    in_key = True
    lines = [line.strip() for line in definition.strip().splitlines()]
    if lines and lines[0].startswith("#"):
        comment = lines.pop(0).lstrip("#").strip()
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if SEPARATOR_LINE.match(line):
            if not in_key:
                raise _error(table, line, "a second --- separator")
            in_key = False
            continue
        if line.startswith("->"):
            match = FOREIGN_KEY_LINE.match(line)
            if not match:
                raise _error(table, line, "malformed foreign key")
            nullable = bool(match.group("options"))
            if nullable and in_key:
                raise _error(table, line, "a primary-key foreign key can't be nullable")
            parent = _resolve(match.group("ref"), context, table, line)
            renames = _renames(match.group("renames"), parent, table, line)
            foreign_keys.append((parent, nullable, line, renames))
            for old in parent.heading.primary_key:
                name = renames.get(old, old)
                if any(a.name == name for a in attributes):
                    continue  # the same attribute inherited along two paths
                inherited = parent.heading[old]
                attributes.append(ParsedAttribute(
                    name=name, type=inherited.type if inherited.type in SPECIAL_TYPES else inherited.sql_type,
                    sql_type=inherited.sql_type, in_key=in_key, nullable=nullable,
                    default="NULL" if nullable else None, comment=inherited.comment))
            continue
        match = INDEX_LINE.match(line)
        if match:
            names = [n.strip() for n in match.group("attrs").split(",") if n.strip()]
            if not names:
                raise _error(table, line, "an index needs attributes")
            indexes.append((bool(match.group("unique")), names, line))
            continue
        match = ATTRIBUTE_LINE.match(line)
        if not match:
            raise _error(table, line, "can't parse this line (expected 'name = default : type  # comment', "
                                      "'-> Parent' or 'index(...)')")
        name, written, default = match.group("name"), match.group("type").strip(), match.group("default")
        sql_type = _sql_type(written)
        if sql_type is None:
            raise _error(table, line, f"unknown type {written!r}")
        attribute = ParsedAttribute(name=name, type=written, sql_type=sql_type, in_key=in_key,
                                    comment=(match.group("comment") or "").strip())
        if any(a.name == name for a in attributes):
            raise _error(table, line, f"attribute {name!r} is declared twice")
        if default is not None and default.strip():
            default = default.strip()
            if default.lower() == "null":
                attribute.nullable, attribute.default = True, "NULL"
            else:
                if attribute.is_object:
                    raise _error(table, line, "blob and external attributes can only default to null")
                attribute.default = _default_literal(default, sql_type)
        if in_key and attribute.nullable:
            raise _error(table, line, "a primary-key attribute can't be null")
        if in_key and attribute.is_object:
            raise _error(table, line, "blob and external attributes can't be in the primary key")
        attributes.append(attribute)
    return comment, attributes, foreign_keys, indexes


def declare(database: str, table: str, definition: str, context: Mapping[str, Any]) -> Declaration:
    """The ``CREATE TABLE`` statement for a definition."""
    full_name = f"`{database}`.`{table}`"
    comment, attributes, foreign_keys, indexes = parse(full_name, definition, context)
    primary_key = [a.name for a in attributes if a.in_key]
    if not primary_key:
        raise DeclarationError(f"in the definition of {full_name}: a table needs a primary key "
                               "(attributes above ---)")
    known = {a.name for a in attributes}
    clauses = [a.sql() for a in attributes]
    clauses.append("PRIMARY KEY (" + ", ".join(f"`{n}`" for n in primary_key) + ")")
    for parent, _, _, renames in foreign_keys:
        referenced = ", ".join(f"`{n}`" for n in parent.heading.primary_key)
        columns = ", ".join(f"`{renames.get(n, n)}`" for n in parent.heading.primary_key)
        clauses.append(f"FOREIGN KEY ({columns}) REFERENCES {parent.full_table_name} ({referenced}) "
                       "ON UPDATE CASCADE ON DELETE RESTRICT")
    stores, datajoint_stores = set(), set()
    for attribute in attributes:
        store = external_store(attribute.special or "")
        if store is not None:
            stores.add(store)
            clauses.append(f"FOREIGN KEY (`{attribute.name}`) REFERENCES `{database}`.`{EXTERNAL_TABLE}` (`hash`) "
                           "ON UPDATE RESTRICT ON DELETE RESTRICT")
        elif attribute.special and "@" in attribute.special:
            store = attribute.special.split("@")[1]
            datajoint_stores.add(store)
            clauses.append(f"FOREIGN KEY (`{attribute.name}`) REFERENCES `{database}`.`~external_{store}` (`hash`) "
                           "ON UPDATE RESTRICT ON DELETE RESTRICT")
    for unique, names, line in indexes:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise _error(full_name, line, f"index on unknown attribute {unknown[0]!r}")
        clauses.append(("UNIQUE " if unique else "") + "INDEX (" + ", ".join(f"`{n}`" for n in names) + ")")
    sql = (f"CREATE TABLE IF NOT EXISTS {full_name} (\n  " + ",\n  ".join(clauses) +
           f'\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin COMMENT "{escape_string(comment)}"')
    return Declaration(sql=sql, attributes=attributes, parents=[fk[0] for fk in foreign_keys], stores=stores,
                       datajoint_stores=datajoint_stores)
