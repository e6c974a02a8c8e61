"""Connections to the MySQL/MariaDB server over pymysql.

One pymysql connection per thread (pymysql connections are not thread-safe; the mount serves from many
threads), transactions that nest by joining the outer one, and a transparent reconnect when the server has
dropped an idle connection — but never inside a transaction, where a silent reconnect would lose work.
Every value travels as a bound parameter; SQL text holds only identifiers that djfs itself quoted.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pymysql

from . import errors
from .settings import Config

log = logging.getLogger(__name__)

#: server error codes meaning "the connection is gone": worth one reconnect outside a transaction
LOST_CONNECTION = {2003, 2006, 2013, 2055, 4031}
DUPLICATE_ENTRY = 1062
FOREIGN_KEY_ERRORS = {1216, 1217, 1451, 1452}
#: statements that make the server commit the open transaction implicitly: never run inside one
DDL = re.compile(r"^\s*(CREATE|DROP|ALTER|RENAME|TRUNCATE)\b", re.IGNORECASE)


def translate(error: pymysql.MySQLError, context: str = "") -> Exception:
    """Turn a server error into djfs's exception, keeping the server's own words (never a password)."""
    code = error.args[0] if error.args else None
    message = error.args[1] if len(error.args) > 1 else str(error)
    where = f"{context}: " if context else ""
    if code == DUPLICATE_ENTRY:
        return errors.DuplicateError(f"{where}duplicate primary key ({message})")
    if code in FOREIGN_KEY_ERRORS:
        return errors.IntegrityError(f"{where}foreign key constraint ({message})")
    if isinstance(error, pymysql.err.OperationalError) and code in LOST_CONNECTION:
        return errors.ConnectionLostError(f"{where}database connection lost ({message})")
    return errors.QueryError(f"{where}{message} (MySQL error {code})", code=code)


class Connection:
    """A handle on one server: per-thread sessions, transactions, queries with bound parameters."""

    def __init__(self, host: str, port: int, user: str | None, password: str | None,
                 init_command: str | None = None, connect_timeout: float = 10.0,
                 io_timeout: float | None = None) -> None:
        """``io_timeout`` bounds every socket read and write: a hung server then fails instead of hanging
        (the mount uses it; the library waits as long as a query takes)."""
        self.host, self.port, self.user = host, port, user
        self._password = password
        self._init_command = init_command
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._local = threading.local()

    @classmethod
    def from_config(cls, config: Config) -> "Connection":
        return cls(config["database.host"], config["database.port"], config["database.user"],
                   config["database.password"], config["connection.init_function"])

    def __repr__(self) -> str:
        return f"Connection({self.user}@{self.host}:{self.port})"

    # -- per-thread session
    def _open(self) -> pymysql.connections.Connection:
        try:
            session = pymysql.connect(
                host=self.host, port=self.port, user=self.user or "", password=self._password or "",
                autocommit=True, charset="utf8mb4", binary_prefix=True,
                connect_timeout=self._connect_timeout, init_command=self._init_command,
                read_timeout=self._io_timeout, write_timeout=self._io_timeout,
                local_infile=False)
        except pymysql.MySQLError as error:
            raise errors.ConnectionLostError(
                f"can't connect to the database at {self.host}:{self.port} as {self.user!r}: "
                f"{error.args[1] if len(error.args) > 1 else error}") from None
        session.query("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_ZERO_DATE'")
        return session

    @property
    def _session(self) -> pymysql.connections.Connection:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._open()
            self._local.depth = 0
        return session

    @property
    def in_transaction(self) -> bool:
        return getattr(self._local, "depth", 0) > 0

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            try:
                session.close()
            except pymysql.MySQLError:
                pass
            self._local.session = None

    def _drop_session(self) -> None:
        session = getattr(self._local, "session", None)
        self._local.session = None
        if getattr(self._local, "depth", 0) > 0:
            # The server rolled the transaction back with the session: everything until the end of the
            # ``transaction()`` block must fail, or later statements would run, and commit, on their own.
            self._local.broken = True
        if session is not None:
            try:
                session.close()
            except Exception:
                pass

    # -- queries
    def query(self, sql: str, args: Sequence[Any] | dict | None = None, *, as_dict: bool = False,
              context: str = "") -> pymysql.cursors.Cursor:
        """Run one statement with bound parameters; reconnects once if the server had dropped us."""
        cursor_class = pymysql.cursors.DictCursor if as_dict else pymysql.cursors.Cursor
        self._check_not_broken()
        if self.in_transaction and DDL.match(sql):
            raise errors.QueryError(f"{context + ': ' if context else ''}refused to run DDL ({sql.split()[0]} "
                                    f"{' '.join(sql.split()[1:3])} ...) inside a transaction: the server would "
                                    "commit the transaction's work implicitly")
        for attempt in (1, 2):
            try:
                cursor = self._session.cursor(cursor_class)
                cursor.execute(sql, args)
                return cursor
            except pymysql.err.InterfaceError as error:  # the socket was closed under us
                lost: pymysql.MySQLError = error
            except pymysql.MySQLError as error:
                code = error.args[0] if error.args else None
                if not (isinstance(error, pymysql.err.OperationalError) and code in LOST_CONNECTION):
                    raise translate(error, context) from None
                lost = error
            in_transaction = self.in_transaction
            self._drop_session()
            if in_transaction or attempt == 2:
                raise translate(lost, context) if not isinstance(lost, pymysql.err.InterfaceError) else \
                    errors.ConnectionLostError(f"{context + ': ' if context else ''}database connection lost")
            log.info("database connection lost; reconnecting")
        raise AssertionError("unreachable")

    def _check_not_broken(self) -> None:
        if getattr(self._local, "broken", False):
            raise errors.ConnectionLostError("the database connection was lost inside this transaction, which "
                                             "the server rolled back; leave the transaction block and retry")

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]], context: str = "") -> None:
        try:
            self._session.cursor().executemany(sql, rows)
        except pymysql.MySQLError as error:
            raise translate(error, context) from None

    @contextmanager
    def transaction(self) -> Iterator["Connection"]:
        """A transaction on this thread's session; nested uses join the outer one."""
        self._check_not_broken()
        session = self._session
        if self._local.depth == 0:
            self.query("START TRANSACTION")
        self._local.depth += 1
        try:
            yield self
        except BaseException:
            self._local.depth -= 1
            if self._local.depth == 0:
                self._local.broken = False
                if self._local.session is session:
                    try:
                        session.rollback()
                    except pymysql.MySQLError:
                        self._drop_session()
            raise
        self._local.depth -= 1
        if self._local.depth == 0:
            broken, self._local.broken = getattr(self._local, "broken", False), False
            if broken or self._local.session is not session:
                raise errors.ConnectionLostError("the database connection was lost inside a transaction; the "
                                                 "server rolled it back")
            try:
                session.commit()
            except pymysql.MySQLError as error:
                self._drop_session()
                self._local.broken = False
                raise translate(error, "commit") from None

    def max_allowed_packet(self) -> int:
        cached = getattr(self, "_max_packet", None)
        if cached is None:
            cached = self._max_packet = int(self.query("SELECT @@max_allowed_packet").fetchone()[0])
        return cached


_connection: Connection | None = None
_lock = threading.Lock()


def conn(config: Config | None = None, reset: bool = False) -> Connection:
    """The process-wide default connection, made from ``djfs.config`` on first use."""
    global _connection
    from . import config as default_config
    with _lock:
        if _connection is None or reset:
            if _connection is not None:
                _connection.close()
            _connection = Connection.from_config(config or default_config)
        return _connection
