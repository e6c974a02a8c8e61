"""Connections: per-thread sessions, transactions, reconnect after the server dropped us."""

import threading

import pymysql
import pytest

import djfs
from djfs.connection import Connection
from djfs.errors import ConnectionLostError


def kill_session(mariadb, connection):
    session_id = connection.query("SELECT CONNECTION_ID()").fetchone()[0]
    admin = pymysql.connect(**mariadb.connect_args())
    admin.cursor().execute("KILL %s", (session_id,))
    admin.close()
    return session_id


def test_reconnects_after_idle_drop(mariadb, connection):
    before = kill_session(mariadb, connection)
    assert connection.query("SELECT 41 + 1").fetchone()[0] == 42
    assert connection.query("SELECT CONNECTION_ID()").fetchone()[0] != before


@pytest.fixture
def table_t(connection, schema):
    """An empty scratch table `t` (x int) in the test's database."""
    connection.query(f"CREATE TABLE `{schema.database}`.t (x int primary key)")
    return f"`{schema.database}`.t"


def test_no_silent_reconnect_inside_transaction(mariadb, connection, schema, table_t):
    with pytest.raises(ConnectionLostError):
        with connection.transaction():
            connection.query(f"INSERT INTO `{schema.database}`.t VALUES (1)")
            kill_session(mariadb, connection)
            connection.query(f"INSERT INTO `{schema.database}`.t VALUES (2)")
    assert connection.query(f"SELECT COUNT(*) FROM `{schema.database}`.t").fetchone()[0] == 0


def test_transaction_rolls_back_and_nests(connection, schema, table_t):
    with pytest.raises(RuntimeError):
        with connection.transaction():
            connection.query(f"INSERT INTO `{schema.database}`.t VALUES (1)")
            with connection.transaction():
                connection.query(f"INSERT INTO `{schema.database}`.t VALUES (2)")
            raise RuntimeError("boom")
    assert connection.query(f"SELECT COUNT(*) FROM `{schema.database}`.t").fetchone()[0] == 0
    with connection.transaction():
        connection.query(f"INSERT INTO `{schema.database}`.t VALUES (3)")
    assert connection.query(f"SELECT x FROM `{schema.database}`.t").fetchall() == ((3,),)


def test_one_session_per_thread(connection):
    ids = set()

    def work():
        ids.add(connection.query("SELECT CONNECTION_ID()").fetchone()[0])
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids.add(connection.query("SELECT CONNECTION_ID()").fetchone()[0])
    assert len(ids) == 5


def test_bad_credentials_message_has_no_password(mariadb):
    connection = Connection(mariadb.host, mariadb.port, "nobody", "pa55-SECRET-word")
    with pytest.raises(ConnectionLostError) as error:
        connection.query("SELECT 1")
    assert "pa55-SECRET-word" not in str(error.value) and "nobody" in str(error.value)
    assert "pa55" not in repr(connection)


def test_server_restart_library_recovers(mariadb, connection, schema):
    @schema
    class Item(djfs.Manual):
        definition = "k : int"
    Item.insert1({"k": 1})
    mariadb.restart()
    assert len(Item) == 1  # next call reconnects
    Item.insert1({"k": 2})
    assert sorted(Item.fetch("k")) == [1, 2]


def test_statements_after_a_loss_inside_a_transaction_fail_until_the_block_ends(mariadb, connection, schema,
                                                                                  table_t):
    with pytest.raises(ConnectionLostError):
        with connection.transaction():
            connection.query(f"INSERT INTO `{schema.database}`.t VALUES (1)")
            kill_session(mariadb, connection)
            try:
                connection.query(f"INSERT INTO `{schema.database}`.t VALUES (2)")
            except ConnectionLostError:
                pass  # user code that swallows the error ...
            with pytest.raises(ConnectionLostError, match="rolled back"):
                connection.query(f"INSERT INTO `{schema.database}`.t VALUES (3)")  # ... can't go on silently
    # the block itself failed; afterwards the connection works again and nothing was written
    assert connection.query(f"SELECT COUNT(*) FROM `{schema.database}`.t").fetchone()[0] == 0
