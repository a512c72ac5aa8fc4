"""Apply the SQL migrations shipped in ``db/migrations`` under an advisory lock.

Running twice, or from several processes at once, is safe: the lock serialises
runners and each migration is applied in its own transaction together with the
row that records it.  Hosts that manage their schema with Alembic can take the
same SQL from :func:`migration_sql` (see README, "Alembic").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from . import check_schema_name

if TYPE_CHECKING:
    from . import Connection

_PLACEHOLDER = "__SCHEMA__"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations(schema: str = "rindle") -> list[Migration]:
    """Every shipped migration, oldest first, with ``schema`` filled in.

    schema: the PostgreSQL schema that holds rindle_async's tables.
    """
    check_schema_name(schema)
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        version, _, rest = entry.name.partition("_")
        found.append(Migration(int(version), rest.removesuffix(".sql"),
                               entry.read_text().replace(_PLACEHOLDER, schema)))
    return sorted(found, key=lambda m: m.version)


def migration_sql(schema: str = "rindle", *, after: int = 0) -> str:
    """The SQL of every migration newer than ``after``, for hosts that run it themselves.

    schema: the PostgreSQL schema that holds rindle_async's tables.
    after: the last version already applied (0 for a fresh database).
    """
    parts = [f"CREATE SCHEMA IF NOT EXISTS {schema};"]
    parts += [m.sql for m in migrations(schema) if m.version > after]
    return "\n".join(parts)


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"rindle_async.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def migrate(conn: Connection, schema: str = "rindle") -> list[int]:
    """Apply pending migrations; return the versions applied by this call.

    conn: a connection outside any transaction.
    schema: the PostgreSQL schema that holds rindle_async's tables.
    """
    check_schema_name(schema)
    if conn.is_in_transaction():
        raise ConfigurationError("migrate() needs a connection outside a transaction: "
                                 "each migration runs in a transaction of its own")
    await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
    try:
        await conn.execute(
            f"CREATE SCHEMA IF NOT EXISTS {schema};"
            f"CREATE TABLE IF NOT EXISTS {schema}.migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
        applied = {r["version"]: r["checksum"] for r in
                   await conn.fetch(f"SELECT version, checksum FROM {schema}.migrations")}
        done = []
        for m in migrations(schema):
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    raise ConfigurationError(
                        f"migration {m.version} ({m.name}) in schema {schema!r} was applied from "
                        "different SQL than this version of rindle_async ships; do not edit "
                        "applied migrations, add a new one")
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    f"INSERT INTO {schema}.migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum)
            done.append(m.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))


async def pending(conn: Connection, schema: str = "rindle") -> list[int]:
    """Versions shipped but not yet applied (all of them on a fresh database).

    conn: any connection.
    schema: the PostgreSQL schema that holds rindle_async's tables.
    """
    check_schema_name(schema)
    exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.migrations")
    applied = set()
    if exists is not None:
        applied = {r["version"] for r in await conn.fetch(f"SELECT version FROM {schema}.migrations")}
    return [m.version for m in migrations(schema) if m.version not in applied]
