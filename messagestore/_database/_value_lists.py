"""``column IN (a list of values)`` as ONE bound parameter, so each statement compiles once.

SQLAlchemy renders ``in_(values)`` anew for each execution, one placeholder per value (with a
1,000-stream tick that cost more than the query). Here the list is one parameter: a PostgreSQL
array (``column = ANY(:p)``) or SQLite JSON text (``IN (SELECT value FROM json_each(:p))``), with
no limit on the number of values::

    _EXISTING = ListStatement(lambda one_of: select(t.c.id).where(one_of(t.c.id, "ids")))
    conn.execute(_EXISTING(conn), {"ids": values(conn, ids)})
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import ColumnElement, String, any_, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Executable

__all__ = ["ListStatement", "OneOf", "values"]

OneOf = Callable[[ColumnElement[Any], str], ColumnElement[bool]]
"""``one_of(column, name)``: the condition "column is one of the list bound as ``name``"."""


def _one_of_postgresql(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    return column == any_(bindparam(name, type_=ARRAY(column.type)))


def _one_of_sqlite(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    value: ColumnElement[Any] = literal_column("value")
    listed = select(value).select_from(func.json_each(bindparam(name, type_=String)))
    return column.in_(listed.scalar_subquery())


class ListStatement:
    """A statement with list parameters, built once for each dialect it runs on."""

    def __init__(self, build: Callable[[OneOf], Executable]) -> None:
        self._build = build
        self._built: dict[str, Executable] = {}

    def __call__(self, conn: Connection) -> Executable:
        dialect = conn.dialect.name
        statement = self._built.get(dialect)
        if statement is None:
            one_of = _one_of_postgresql if dialect == "postgresql" else _one_of_sqlite
            statement = self._built[dialect] = self._build(one_of)
        return statement


def values(conn: Connection, items: Iterable[Any]) -> Any:
    """The parameter value for a list of ``items`` on ``conn``'s dialect."""
    listed = list(items)
    if conn.dialect.name == "postgresql":
        return listed
    return json.dumps(listed)
