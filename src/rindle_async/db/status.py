"""The counting reads behind ``status``, across the state tables."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from ..lifecycle.machines import ASSET, VARIANT

if TYPE_CHECKING:
    from . import Connection

STATE_TABLES = ("assets", "variants", "upload_sessions")


async def by_state(conn: Connection | asyncpg.Pool, schema: str, table: str) -> dict[str, int]:
    """Rows per state of one of ``STATE_TABLES``.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    table: ``assets``, ``variants`` or ``upload_sessions``.
    """
    if table not in STATE_TABLES:
        raise ValueError(f"table={table!r} is not one of {STATE_TABLES}")
    return {r["state"]: r["n"] for r in await conn.fetch(
        f"SELECT state, count(*) AS n FROM {schema}.{table} GROUP BY state ORDER BY state")}


async def stuck(conn: Connection | asyncpg.Pool, schema: str, cutoff: datetime) -> dict[str, int]:
    """Rows of each state table in a transient state since before ``cutoff``.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    cutoff: rows whose state changed after this are not stuck.
    """
    return {
        "assets": await conn.fetchval(
            f"SELECT count(*) FROM {schema}.assets WHERE state = ANY($2::text[])"
            f" AND state_changed_at < $1", cutoff, ASSET.array("transient")),
        "variants": await conn.fetchval(
            f"SELECT count(*) FROM {schema}.variants WHERE state = ANY($2::text[])"
            f" AND state_changed_at < $1", cutoff, VARIANT.array("pending")),
        "upload_sessions": await conn.fetchval(
            f"SELECT count(*) FROM {schema}.upload_sessions WHERE state = 'verifying'"
            f" AND state_changed_at < $1", cutoff),
    }


async def running_attempts(conn: Connection | asyncpg.Pool, schema: str) -> dict[str, int]:
    """Job attempts running now, per worker id.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    """
    return {r["worker"] or "(unknown)": r["n"] for r in await conn.fetch(
        f"SELECT worker, count(*) AS n FROM {schema}.processing_runs WHERE outcome = 'running'"
        " GROUP BY worker ORDER BY worker")}
