"""Schemas: one MySQL database each, and the decorator that declares table classes in it."""

from __future__ import annotations

import inspect
import logging
import re
import types
from typing import Any

from ..connection import Connection, conn
from .declare import declare
from ..errors import DeclarationError, DjfsError
from ..objects.external import ExternalTable
from .table import check_safemode, confirm
from .user_tables import Lookup, Part, UserTable, class_name, tier_of, to_camel_case

log = logging.getLogger(__name__)
DATABASE_NAME = re.compile(r"^[A-Za-z0-9_$]{1,64}$")


class Schema:
    """``schema = djfs.Schema('lab_imaging')``; then ``@schema`` on each table class."""

    def __init__(self, database: str, context: dict | None = None, *, connection: Connection | None = None,
                 create_schema: bool = True) -> None:
        if not DATABASE_NAME.match(database):
            raise DjfsError(f"schema name {database!r} must be 1-64 letters, digits, '_' or '$'")
        self.database = database
        self.context = context
        self.connection = connection or conn()
        exists = self.connection.query("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                                        (database,)).fetchone()
        if not exists:
            if not create_schema:
                raise DjfsError(f"schema {database!r} does not exist")
            self.connection.query(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        self.external = ExternalTable(self.connection, database)

    def __repr__(self) -> str:
        return f"Schema({self.database!r})"

    def set_external_storage(self, folder: str) -> None:
        """The folder (file store) or bucket (S3) of this schema's external objects."""
        self.external.set_folder(folder)

    def __call__(self, cls: type, context: dict | None = None) -> type:
        """Declare ``cls`` (and its nested Part classes) in this schema."""
        if context is None:
            context = self.context
        if context is None:
            frame = inspect.currentframe().f_back
            context = {**frame.f_globals, **frame.f_locals}
        self._declare(cls, context)
        for name, member in list(vars(cls).items()):
            if isinstance(member, type) and issubclass(member, Part) and name[:1].isupper():
                member.master = cls
                self._declare(member, {**context, cls.__name__: cls, "master": cls})
        return cls

    def _declare(self, cls: type, context: dict) -> None:
        if not issubclass(cls, UserTable):
            raise DeclarationError(f"{cls.__name__} must derive from a tier: Manual, Lookup, Imported, "
                                   "Computed or Part")
        cls.database = self.database
        cls.connection = self.connection
        cls._schema = self
        cls._table_name = cls.make_table_name()
        cls._heading = None
        exists = self.connection.query("SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
                                       "AND table_name = %s", (self.database, cls._table_name)).fetchone()
        if not exists:
            definition = cls.definition if isinstance(cls.definition, str) else ""
            declaration = declare(self.database, cls._table_name, definition, context)
            if declaration.stores:
                self.external.declare()
            for store in declaration.datajoint_stores:
                self.external[store].declare()
            self.connection.query(declaration.sql, context=f"declare {cls.__name__}")
            log.info("declared %s", cls._table_name)
        if issubclass(cls, Lookup) and cls.contents:
            cls().insert(list(cls.contents), skip_duplicates=True)

    def spawn_missing_classes(self, context: dict | None = None) -> dict[str, type]:
        """Make a class for every table of the database that ``context`` has no class for (the caller's
        namespace by default): tiers from DataJoint's table names, part tables nested in their masters."""
        if context is None:
            context = self.context if self.context is not None else inspect.currentframe().f_back.f_locals
        parts = []
        for table in self.list_tables():
            tier, master, part = tier_of(table)
            if tier is Part:
                parts.append((table, master, part))
            elif tier is not None and to_camel_case(table.lstrip("#_")) not in context:
                context[to_camel_case(table.lstrip("#_"))] = self._spawn(table, tier, context)
        for table, master, part in parts:
            owner = context.get(to_camel_case(master.lstrip("#_")))
            if owner is None:
                raise DjfsError(f"part table {table!r} of schema {self.database!r} has no master table {master!r}")
            if not isinstance(owner.__dict__.get(to_camel_case(part)), type):
                spawned = self._spawn(table, Part, context, master=owner)
                setattr(owner, to_camel_case(part), spawned)
        return context

    def _spawn(self, table: str, tier: type, context: dict, master: type | None = None) -> type:
        """A class for an existing table (nothing is declared: the table is read as it is)."""
        name = to_camel_case(table.rsplit("__", 1)[-1] if master is not None else table.lstrip("#_"))
        members = {"_spawned_name": table, "definition": "", "__module__": context.get("__name__", __name__)}
        if master is not None:
            members["master"] = master
        cls = type(name, (tier,), members)
        self._declare(cls, context)
        return cls

    def list_tables(self) -> list[str]:
        rows = self.connection.query("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                                     "ORDER BY table_name", (self.database,)).fetchall()
        return [row[0] for row in rows]

    def class_names(self) -> dict[str, str]:
        """DataJoint class name → MySQL table name, hidden tables (``~...``) left out."""
        return {class_name(t): t for t in self.list_tables() if not t.startswith("~")}

    def drop(self, force: bool = False) -> None:
        """Drop the whole database, its tables and its ``~external`` entries (objects stay for gc).

        As DataJoint: ``force=True`` drops without asking; otherwise, in safemode, the tables and their row
        counts are shown and the drop happens only if the user types ``yes`` (refused without a terminal)."""
        if not force and check_safemode(None, f"drop schema {self.database!r}", "force=True"):
            for table in self.list_tables():
                rows = self.connection.query(f"SELECT COUNT(*) FROM `{self.database}`.`{table}`").fetchone()[0]
                print(f"`{self.database}`.`{table}` ({rows} rows)")
            if not confirm(f"Drop schema {self.database!r} and all its tables?"):
                print("Drop cancelled.")
                return
        self.connection.query(f"DROP DATABASE IF EXISTS `{self.database}`")

def VirtualModule(module_name: str, schema_name: str, *, connection: Connection | None = None,
                  create_schema: bool = False) -> types.ModuleType:
    """A module holding a class for every table of an existing schema, made from the database alone
    (``lab = djfs.VirtualModule('lab', 'lab_imaging')``; then ``lab.Session * lab.Scan``); ``lab.schema`` is
    the schema."""
    module = types.ModuleType(module_name, f"Tables of schema {schema_name!r}, made from the database")
    schema = Schema(schema_name, module.__dict__, connection=connection, create_schema=create_schema)
    module.__dict__["schema"] = schema
    schema.spawn_missing_classes(module.__dict__)
    return module
