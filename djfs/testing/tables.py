"""Large tables for tests and benchmarks, filled by the server itself."""

from __future__ import annotations

from typing import Any

import djfs


def fill_rows(connection: Any, table: str, n: int, *, key: str = "item", value: str = "value",
              factor: int = 1) -> None:
    """Insert the rows ``key = 0 .. n-1``, ``value = factor * key`` into ``table`` (a full table name,
    `` `db`.`table` ``) in one statement: 100,000 rows in about a second, where inserting them from Python
    would take a test's whole budget.

    ``connection`` is a djfs connection (or anything with ``query(sql, args)``); ``key`` and ``value`` are
    column names written by the caller, never data.
    """
    if n < 1:
        raise ValueError(f"fill_rows needs at least one row, not {n}")
    connection.query(f"SET STATEMENT max_recursive_iterations = %s FOR "
                     f"INSERT INTO {table} (`{key}`, `{value}`) WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL "
                     f"SELECT i + 1 FROM n WHERE i < %s) SELECT i, %s * i FROM n", (n + 1, n - 1, factor))


def item_table(schema: Any, n: int, factor: int = 1) -> type:
    """Declare ``Item`` (``item : int``, then ``value : int``) in ``schema`` and fill it with ``fill_rows``: the
    one flat table of many rows that listing tests and benchmarks page through."""
    @schema
    class Item(djfs.Lookup):
        definition = """
        item : int
        ---
        value : int
        """
    fill_rows(schema.connection, Item.full_table_name, n, factor=factor)
    return Item
