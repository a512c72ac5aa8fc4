"""PostgreSQL plumbing: schema names, transactions, migrations."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import msgspec

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from typing import TypeAlias

    import asyncpg

    #: what rindle_async runs statements on: a connection of its pool (a proxy) or a host's own
    Connection: TypeAlias = "asyncpg.Connection | asyncpg.pool.PoolConnectionProxy"

Row = TypeVar("Row", bound=msgspec.Struct)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(name: str) -> str:
    """Return ``name`` if it is a safe, unquoted PostgreSQL schema name.

    name: the schema that holds rindle_async's tables.
    """
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
        raise ConfigurationError(
            f"schema={name!r} is not a valid schema name: use lowercase letters, digits "
            "and underscores, starting with a letter or underscore, at most 63 characters")
    return name


def server_settings(database_url: str, application_name: str) -> dict[str, str]:
    """The session settings of rindle_async's own connections: ``application_name``, so
    ``pg_stat_activity`` tells them apart, unless the DSN names one itself.

    database_url: the PostgreSQL DSN.
    application_name: how the connections appear in ``pg_stat_activity``.
    """
    if "application_name" in parse_qs(urlsplit(database_url).query):
        return {}
    return {"application_name": application_name}


async def fetch_as(row: type[Row], conn: Connection | asyncpg.Pool, sql: str, *args: Any) -> list[Row]:
    """The rows of ``sql`` as ``row`` structs (their fields named as the query's columns).

    row: the struct type.
    conn: a connection or the pool.
    sql: the query.
    args: its parameters.
    """
    return [row(**dict(record)) for record in await conn.fetch(sql, *args)]


async def fetch_one_as(row: type[Row], conn: Connection | asyncpg.Pool, sql: str, *args: Any) -> Row | None:
    """The first row of ``sql`` as a ``row`` struct; None when there is none.

    row: the struct type.
    conn: a connection or the pool.
    sql: the query.
    args: its parameters.
    """
    record = await conn.fetchrow(sql, *args)
    return None if record is None else row(**dict(record))
