"""Locking reads of ``assets`` shared by every code path that changes an asset."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    from . import Connection


async def lock_states(conn: Connection, schema: str, ids: Iterable[UUID]) -> dict[UUID, str]:
    """Lock the assets of ``ids`` (those that exist) and return their states.

    Rows are locked in id order, so two transactions locking overlapping sets wait for each
    other instead of deadlocking.
    conn: a connection inside the transaction that will change them.
    schema: rindle_async's schema.
    ids: the assets.
    """
    rows = await conn.fetch(f"SELECT id, state FROM {schema}.assets WHERE id = ANY($1::uuid[])"
                            " ORDER BY id FOR UPDATE", sorted(set(ids)))
    return {row["id"]: row["state"] for row in rows}


async def lock_state(conn: Connection, schema: str, asset_id: UUID) -> str | None:
    """Lock one asset and return its state; None when it does not exist.

    conn: a connection inside the transaction that will change it.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    state: str | None = await conn.fetchval(
        f"SELECT state FROM {schema}.assets WHERE id = $1 FOR UPDATE", asset_id)
    return state
