"""A private MariaDB server for the test session, and a fresh database for each test."""

from __future__ import annotations

import itertools
import os

import pytest

import djfs
from djfs.testing.mariadb import MariaDBServer, MariaDBUnavailable

_counter = itertools.count()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    """The session's server; a missing MariaDB fails the run loudly, it is never skipped."""
    try:
        server = MariaDBServer(tmp_path_factory.mktemp("mariadb")).start()
    except MariaDBUnavailable as error:
        pytest.fail(f"MariaDB is required for the tests: {error}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def db_config(mariadb):
    """djfs.config pointed at the session's server (restored after the test); safemode off, as tests have no
    one to answer its questions (tests of safemode turn it on)."""
    with djfs.config.override(**{"database.host": mariadb.host, "database.port": mariadb.port,
                                 "database.user": mariadb.user, "database.password": mariadb.password,
                                 "safemode": False}):
        djfs.conn(reset=True)
        yield djfs.config


@pytest.fixture
def connection(db_config):
    return djfs.conn()


@pytest.fixture
def schema_name(connection):
    """A database name no other test uses; dropped after the test."""
    name = f"djfs_test_{os.getpid()}_{next(_counter)}"
    yield name
    connection.query(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def schema(schema_name, connection):
    return djfs.Schema(schema_name, connection=connection)
