"""Headings: what a table's attributes are, read back from the server.

The server knows the SQL types; what it can't say (that a ``char(43)`` is an ``external`` reference, that a
``binary(16)`` is a ``uuid``, that a ``longtext`` holds ``json``) travels in the column comment as a
``:type:`` prefix, as DataJoint does, so any client reading the schema sees the same heading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..connection import Connection

#: djfs types that are not plain SQL types, kept as ``:<type>:`` at the start of the column comment
SPECIAL_TYPE = re.compile(r"^:(?P<type>uuid|json|bool|external(?:-[a-z][a-z0-9_]*)?|npy@(?:[a-z][a-z0-9_]*)?"
                          r"|(?:blob|attach|filepath)@[a-z][-\w]*|attach):(?P<comment>.*)$", re.S)
#: DataJoint 0.12-0.14's own kinds (``djfs.objects.external_dj``): the type is the kind, the store in ``Attribute.store``
DATAJOINT_KINDS = ("blob@", "attach@", "filepath@", "attach")
BLOB_TYPES = ("tinyblob", "blob", "mediumblob", "longblob")

_NUMPY_TYPES = {
    "tinyint": np.int8, "smallint": np.int16, "mediumint": np.int32, "int": np.int32, "bigint": np.int64,
    "tinyint unsigned": np.uint8, "smallint unsigned": np.uint16, "mediumint unsigned": np.uint32,
    "int unsigned": np.uint32, "bigint unsigned": np.uint64, "float": np.float32, "double": np.float64,
}


@dataclass(frozen=True)
class Attribute:
    name: str
    sql_type: str           # as the server reports it, e.g. 'int(10) unsigned', 'longblob', 'char(43)'
    type: str               # djfs's view: 'uuid', 'json', 'bool', 'external', 'blob' or the SQL type
    in_key: bool
    nullable: bool
    default: str | None
    comment: str
    store: str | None = None  # for external attributes: '' (default store) or the store's name
    database: str | None = None  # the schema whose ``~external`` holds its objects (external attributes)
    expression: str | None = None  # SQL of a computed attribute (``proj(x='a * 2')``), None for stored ones
    serialization: str = "blob"  # for external attributes: 'blob' (external) or 'npy' (npy@, djfs.npy)

    @property
    def is_blob(self) -> bool:
        return self.type == "blob"

    @property
    def is_external(self) -> bool:
        return self.type == "external"

    @property
    def external_type(self) -> str:
        """An external attribute's type as declared: ``external[-store]`` or ``npy@[store]``."""
        if self.serialization == "npy":
            return f"npy@{self.store or ''}"
        return "external" + (f"-{self.store}" if self.store else "")

    @property
    def is_uuid(self) -> bool:
        return self.type == "uuid"

    @property
    def is_json(self) -> bool:
        return self.type == "json"

    @property
    def datajoint_kind(self) -> str | None:
        """'blob@', 'attach@', 'filepath@' (DataJoint's external kinds) or 'attach' (in-table); else None."""
        return self.type if self.type in DATAJOINT_KINDS else None

    @property
    def holds_object(self) -> bool:
        """Serialized values (blob, external, DataJoint's kinds): can't be restricted on, decoded when fetched."""
        return self.is_blob or self.is_external or self.datajoint_kind is not None

    @property
    def base_sql_type(self) -> str:
        """'int(10) unsigned' -> 'int unsigned': the display width says nothing about the values."""
        return re.sub(r"\(\d+\)", "", self.sql_type).strip()

    @property
    def numpy_type(self) -> np.dtype:
        """The field type of fetched record arrays; object where NULLs or Python objects may appear."""
        base = self.base_sql_type
        if base in ("float", "double"):
            return np.dtype(_NUMPY_TYPES[base])
        if base in _NUMPY_TYPES and not self.nullable and self.type not in ("bool",):
            return np.dtype(_NUMPY_TYPES[base])
        return np.dtype(object)

    @property
    def sql_name(self) -> str:
        return f"`{self.name}`"


@dataclass
class Heading:
    attributes: dict[str, Attribute] = field(default_factory=dict)
    comment: str = ""

    @classmethod
    def load(cls, connection: "Connection", database: str, table: str) -> "Heading":
        rows = connection.query(f"SHOW FULL COLUMNS FROM `{database}`.`{table}`", as_dict=True).fetchall()
        status = connection.query("SELECT table_comment FROM information_schema.tables "
                                  "WHERE table_schema = %s AND table_name = %s", (database, table)).fetchone()
        attributes = {}
        for row in rows:
            comment = row["Comment"] or ""
            sql_type = row["Type"]
            kind, store, serialization = sql_type.split("(")[0].split(" ")[0], None, "blob"
            special = SPECIAL_TYPE.match(comment)
            if special:
                kind, comment = special.group("type"), special.group("comment")
                if kind.startswith("external"):
                    store = kind[len("external-"):] if "-" in kind else ""
                    kind = "external"
                elif kind.startswith("npy@"):
                    store, kind, serialization = kind[len("npy@"):], "external", "npy"
                elif "@" in kind:
                    kind, store = kind.split("@")
                    kind += "@"
            elif kind in BLOB_TYPES:
                kind = "blob"
            else:
                kind = sql_type
            attributes[row["Field"]] = Attribute(
                name=row["Field"], sql_type=sql_type, type=kind, in_key=row["Key"] == "PRI",
                nullable=row["Null"] == "YES", default=row["Default"], comment=comment, store=store,
                database=database, serialization=serialization)
        return cls(attributes, status[0] if status else "")

    # -- headings of derived queries (joins, projections, aggregations)
    def join(self, other: "Heading") -> "Heading":
        """DataJoint's join heading: both primary keys (ours first), then the remaining attributes; an
        attribute secondary here and primary there joins the primary key."""
        chosen = ([self[n] for n in self.primary_key]
                  + [other[n] for n in other.primary_key if n not in self.primary_key]
                  + [self[n] for n in self.secondary_attributes if n not in other.primary_key]
                  + [other[n] for n in other.secondary_attributes if n not in self])
        key = set(self.primary_key) | set(other.primary_key)
        return Heading({a.name: replace(a, in_key=a.name in key) for a in chosen})

    def with_primary_key(self, key: list[str]) -> "Heading":
        """The same attributes with ``key`` as primary key (aggregations, ``U`` promotions), key first."""
        names = list(key) + [n for n in self.names if n not in key]
        return Heading({n: replace(self[n], in_key=n in key) for n in names})

    @staticmethod
    def computed(name: str, expression: str) -> Attribute:
        """A secondary attribute computed in SQL; its values come back as the server sends them."""
        return Attribute(name=name, sql_type="expression", type="expression", in_key=False, nullable=True,
                         default=None, comment="", expression=expression)

    # -- views of the attributes
    @property
    def names(self) -> list[str]:
        return list(self.attributes)

    @property
    def primary_key(self) -> list[str]:
        return [name for name, attr in self.attributes.items() if attr.in_key]

    @property
    def secondary_attributes(self) -> list[str]:
        return [name for name, attr in self.attributes.items() if not attr.in_key]

    @property
    def blobs(self) -> list[str]:
        return [name for name, attr in self.attributes.items() if attr.is_blob]

    @property
    def objects(self) -> list[str]:
        """Attributes holding serialized values, which can't take part in a restriction."""
        return [name for name, attr in self.attributes.items() if attr.holds_object]

    @property
    def externals(self) -> list[str]:
        return [name for name, attr in self.attributes.items() if attr.is_external]

    def __getitem__(self, name: str) -> Attribute:
        return self.attributes[name]

    def __contains__(self, name: object) -> bool:
        return name in self.attributes

    def __iter__(self):
        return iter(self.attributes.values())

    def __len__(self) -> int:
        return len(self.attributes)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype([(name, attr.numpy_type) for name, attr in self.attributes.items()])

    def __repr__(self) -> str:
        lines = [f"# {self.comment}"] if self.comment else []
        for attr in self:
            if not attr.in_key and lines and "---" not in lines and any(a.in_key for a in self):
                lines.append("---")
            lines.append(f"{attr.name:<20}: {attr.type if attr.type != attr.sql_type else attr.sql_type}"
                         + (f"  # {attr.comment}" if attr.comment else ""))
        return "\n".join(lines)
