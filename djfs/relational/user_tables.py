"""Table tiers, named as DataJoint names them in MySQL.

``Manual`` → ``name``, ``Lookup`` → ``#name``, ``Imported`` → ``_name``, ``Computed`` → ``__name``,
``Part`` → ``<master>__<part>``; class names are CamelCase, table names their snake_case.
"""

from __future__ import annotations

import re
from typing import Any

from . import autopopulate
from ..errors import DeclarationError
from .naming import BASE_NAME, PART_NAME, class_name, to_camel_case, to_snake_case  # noqa: F401 - re-exported
from .table import Table

class UserTable(Table):
    tier_prefix = ""
    #: regular expression of this tier's table names (DataJoint's), for classes made from the database
    tier_regexp = BASE_NAME
    _spawned_name: str | None = None  # the table's name when the class was made from the database

    @classmethod
    def make_table_name(cls) -> str:
        if cls.__dict__.get("_spawned_name"):
            return cls._spawned_name
        return cls.tier_prefix + to_snake_case(cls.__name__)


class Manual(UserTable):
    """Rows entered by hand or by acquisition software."""


class Lookup(UserTable):
    """Small reference tables; ``contents`` are inserted when the table is declared."""
    tier_prefix = "#"
    contents: Any = ()


class AutoPopulate(UserTable):
    """Tables filled by ``populate()``, which calls ``make(key)`` for every key of ``key_source`` not yet in."""

    @property
    def key_source(self) -> Any:
        """The keys ``make`` is called with (those not yet in the table): override it with any query."""
        return autopopulate.default_key_source(self)

    def populate(self, *restrictions: Any, **options: Any) -> dict:
        """See ``djfs.relational.autopopulate.populate`` (DataJoint's arguments and result)."""
        return autopopulate.populate(self, *restrictions, **options)


class Imported(AutoPopulate):
    """Rows made from data outside the database."""
    tier_prefix = "_"


class Computed(AutoPopulate):
    """Rows computed from other tables."""
    tier_prefix = "__"


class Part(UserTable):
    """A part of its master (the enclosing class): declared with it, deleted with it."""
    master: type | None = None

    @classmethod
    def make_table_name(cls) -> str:
        if cls.__dict__.get("_spawned_name"):
            return cls._spawned_name
        if cls.master is None:
            raise DeclarationError(f"part table {cls.__name__} must be nested in its master's class")
        return cls.master.make_table_name() + "__" + to_snake_case(cls.__name__)


TIER_PREFIXES = {"": "Manual", "#": "Lookup", "_": "Imported", "__": "Computed"}
#: DataJoint's table names: tier by prefix; ``<master>__<part>`` is a part table
TIERS: list[tuple[str, type]] = [("#" + BASE_NAME, Lookup), ("__" + BASE_NAME, Computed), ("_" + BASE_NAME, Imported),
                                 (BASE_NAME, Manual)]


def tier_of(table_name: str) -> tuple[type, str | None, str | None]:
    """(tier class, master table, part name) of a table name; (None, None, None) if not DataJoint's."""
    for pattern, tier in TIERS:
        if re.fullmatch(pattern, table_name):
            return tier, None, None
    part = re.fullmatch(PART_NAME, table_name)
    if part:
        return Part, part.group("master"), part.group("part")
    return None, None, None
