"""Migrations on a real PostgreSQL: fresh, repeated, concurrent, tampered, from the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import asyncpg
import pytest

from rindle_async import ConfigurationError
from rindle_async.db import migrate as migrations

EXPECTED_TABLES = {"assets", "variants", "attachments", "upload_sessions", "tus_uploads", "processing_runs", "instance",
                   "jobs", "migrations"}


async def tables(db: asyncpg.Connection, schema: str) -> set[str]:
    rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    return {r["tablename"] for r in rows}


async def test_fresh_database_gets_every_table(db, database_url, schema):
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrations.pending(conn, schema) == [1, 2, 3, 4, 5, 6]
        assert await migrations.migrate(conn, schema) == [1, 2, 3, 4, 5, 6]
        assert await migrations.pending(conn, schema) == []
    finally:
        await conn.close()
    assert await tables(db, schema) == EXPECTED_TABLES
    uniques = {r["indexname"] for r in await db.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND indexdef LIKE 'CREATE UNIQUE%'",
        schema)}
    assert {"variants_asset_name_key", "attachments_owner_slot_key", "assets_storage_key_key",
            "variants_storage_key_idx", "jobs_pending_dedupe_idx"} <= uniques


async def test_second_run_applies_nothing(make_rindle, db, schema):
    rindle = await make_rindle(migrate=False)
    assert await rindle.migrate() == [1, 2, 3, 4, 5, 6]
    assert await rindle.migrate() == []
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.migrations") == 6


async def test_concurrent_runners_apply_each_migration_once(database_url, db, schema):
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrations.migrate(c, schema) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sorted(results) == [[], [], [], [1, 2, 3, 4, 5, 6]]
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.migrations") == 6
    assert await tables(db, schema) == EXPECTED_TABLES


async def test_edited_migration_is_refused(make_rindle, db, schema):
    rindle = await make_rindle()
    await db.execute(f"UPDATE {schema}.migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(ConfigurationError, match="migration 1 .* different SQL"):
        await rindle.migrate()


async def test_migrate_refuses_a_connection_inside_a_transaction(db, schema):
    async with db.transaction():
        with pytest.raises(ConfigurationError, match="outside a transaction"):
            await migrations.migrate(db, schema)


def test_bad_schema_name_is_refused():
    with pytest.raises(ConfigurationError, match="schema='rindle; drop' is not a valid schema name"):
        migrations.migrations("rindle; drop")


def test_migration_sql_contains_the_schema_for_alembic_hosts():
    sql = migrations.migration_sql("media")
    assert sql.startswith("CREATE SCHEMA IF NOT EXISTS media;")
    assert "CREATE TABLE media.jobs" in sql and "__SCHEMA__" not in sql
    assert "CREATE TABLE media.jobs" not in migrations.migration_sql("media", after=1)


async def test_migration_sql_runs_on_a_fresh_schema(db, schema):
    await db.execute(migrations.migration_sql(schema))
    assert await tables(db, schema) == EXPECTED_TABLES - {"migrations"}


def test_cli_migrate(tmp_path, database_url, redis_url, schema):
    (tmp_path / "hostapp.py").write_text(textwrap.dedent(f"""
        from rindle_async import Rindle
        rindle = Rindle(database_url={database_url!r}, redis_url={redis_url!r}, schema={schema!r})
    """))
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "rindle_async.cli", "--app", "hostapp:rindle", "migrate"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"applied migrations 1, 2, 3, 4, 5, 6 to schema {schema}"
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"schema {schema} is up to date"
    bad = subprocess.run([sys.executable, "-m", "rindle_async.cli", "--app", "hostapp:nothing",
                          "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "hostapp.nothing is NoneType, not a rindle_async.Rindle" in bad.stderr
