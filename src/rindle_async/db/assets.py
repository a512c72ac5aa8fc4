"""The SQL of ``assets``: locking reads shared by every code path that changes an asset, and
the reads of maintenance (state changes go through ``lifecycle``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg
import msgspec

from ..ledger.kinds import PURGE
from ..lifecycle.machines import ASSET, JOB, UPLOAD_SESSION
from ..storage.keys import is_resumable_scratch
from . import fetch_one_as

if TYPE_CHECKING:
    from . import Connection

# literals, not parameters: the planner matches a partial index's predicate only then
_OPEN = UPLOAD_SESSION.literal("open")
_CLOSED_BADLY = UPLOAD_SESSION.literal("closed_badly")


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


class CleanupCandidate(msgspec.Struct, frozen=True):
    """An asset and why cleanup wants it: ``session`` (its upload failed), ``unattached``
    (held by nothing since before the cutoff), ``unpurged`` (a tombstone without a purge on
    its way), or None (it does not)."""

    id: UUID
    why: str | None


async def cleanup_page(conn: Connection | asyncpg.Pool, schema: str, after: UUID, cutoff: datetime,
                       now: datetime, limit: int) -> list[CleanupCandidate]:
    """The next page of assets in id order, each with why cleanup wants it.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    after: the id of the last asset of the page before.
    cutoff: assets (and tombstones) older than this may be cleaned up.
    now: the clock (an open session before its deadline keeps its asset).
    limit: assets per page.
    """
    # Subqueries the planner can only answer with one index probe per asset: an EXISTS may
    # become a hashed scan of a whole table for every page, and a state filter may steer a
    # probe to a partial index on state that holds no asset_id.
    rows = await conn.fetch(
        f"SELECT a.id, CASE"
        f" WHEN a.state = 'deleted' THEN CASE WHEN a.state_changed_at < $2 AND (SELECT true"
        f"   FROM {schema}.jobs j WHERE j.kind = '{PURGE.name}' AND j.status IN {JOB.literal('active')}"
        f"   AND j.args->>'asset_id' = a.id::text LIMIT 1) IS NULL THEN 'unpurged' END"
        f" WHEN (SELECT true FROM {schema}.attachments t WHERE t.asset_id = a.id LIMIT 1) THEN NULL"
        f" ELSE (SELECT CASE WHEN bool_or(s.state IN {_OPEN} AND s.expires_at >= $3) THEN NULL"
        f"   WHEN bool_or(s.state IN {_CLOSED_BADLY}) THEN 'session'"
        f"   WHEN a.created_at < $2 THEN 'unattached' END"
        f"   FROM {schema}.upload_sessions s WHERE s.asset_id = a.id) END AS why"
        f" FROM {schema}.assets a WHERE a.id > $1 ORDER BY a.id LIMIT $4",
        after, cutoff, now, limit)
    return [CleanupCandidate(row["id"], row["why"]) for row in rows]


async def unreferenced_keys(conn: Connection | asyncpg.Pool, schema: str, storage: str,
                            keys: list[tuple[str, UUID | None]]) -> list[str]:
    """Those of ``keys`` (in order) that no row refers to and no pending purge will delete.
    A staged asset's resumable-upload scratch objects are its session's: its deadline decides.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    storage: the storage's name.
    keys: (storage key, the asset id its layout names, or None).
    """
    if not keys:
        return []
    rows = await conn.fetch(
        f"SELECT o.key FROM unnest($1::text[], $2::uuid[], $4::bool[]) WITH ORDINALITY"
        f" AS o(key, asset_id, scratch, n)"
        f" LEFT JOIN {schema}.assets a ON a.id = o.asset_id AND a.storage = $3"
        f" WHERE a.id IS NULL OR (a.state <> 'deleted' AND a.storage_key <> o.key"
        f"   AND NOT (o.scratch AND a.state = 'staged') AND (SELECT true"
        f"   FROM {schema}.variants v WHERE v.asset_id = a.id AND v.storage_key = o.key LIMIT 1)"
        f"   IS NULL)"
        f" ORDER BY o.n", [key for key, _ in keys], [asset for _, asset in keys], storage,
        [is_resumable_scratch(key) for key, _ in keys])
    return [row["key"] for row in rows]


class StoredOriginal(msgspec.Struct, frozen=True, kw_only=True):
    """A promoted asset's original and the storage it is in."""

    id: UUID
    storage: str
    storage_key: str


async def live_originals(conn: Connection | asyncpg.Pool, schema: str) -> list[StoredOriginal]:
    """Every promoted (live) asset's original, in id order.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    """
    rows = await conn.fetch(f"SELECT id, storage, storage_key FROM {schema}.assets"
                            " WHERE state = ANY($1::text[]) ORDER BY id", ASSET.array("live"))
    return [StoredOriginal(**dict(r)) for r in rows]


async def state_of(conn: Connection | asyncpg.Pool, schema: str, asset_id: UUID) -> str | None:
    """The asset's state, without a lock; None when it does not exist.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    state: str | None = await conn.fetchval(f"SELECT state FROM {schema}.assets WHERE id = $1", asset_id)
    return state


async def lacking_variants(conn: Connection | asyncpg.Pool, schema: str, profile: str,
                           names: list[str]) -> list[UUID]:
    """The profile's assets with variants that lack a row for one of ``names``.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    profile: the profile.
    names: the profile's variant names.
    """
    return [r["id"] for r in await conn.fetch(
        f"SELECT a.id FROM {schema}.assets a WHERE a.profile = $1 AND a.state = ANY($4::text[])"
        f" AND (SELECT count(*) FROM {schema}.variants v WHERE v.asset_id = a.id"
        f" AND v.name = ANY($2::text[])) < $3", profile, names, len(names), ASSET.array("rendered"))]


class PurgeView(msgspec.Struct, frozen=True, kw_only=True):
    """What purge reads of an asset: its state, where its original is, and whether it is held."""

    id: UUID
    state: str
    storage: str
    storage_key: str
    held: bool


async def purge_view(conn: Connection | asyncpg.Pool, schema: str, asset_id: UUID) -> PurgeView | None:
    """The asset as purge sees it; None when it does not exist.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    return await fetch_one_as(
        PurgeView, conn,
        f"SELECT a.id, a.state, a.storage, a.storage_key, EXISTS (SELECT 1 FROM {schema}.attachments t"
        f" WHERE t.asset_id = a.id) AS held FROM {schema}.assets a WHERE a.id = $1", asset_id)


async def delete(conn: Connection, schema: str, asset_id: UUID) -> None:
    """Delete the asset's row; its variants and sessions go with it (an attachment refuses it).

    conn: a connection inside the transaction that purges it.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    await conn.execute(f"DELETE FROM {schema}.assets WHERE id = $1", asset_id)


class AssetRow(msgspec.Struct, frozen=True, kw_only=True):
    """One asset as stored (every column of ``assets``)."""

    id: UUID
    profile: str
    storage: str
    storage_key: str
    state: str
    filename: str | None
    content_type: str | None
    byte_size: int | None
    width: int | None
    height: int | None
    sha256: str | None
    metadata: str  # jsonb, as asyncpg returns it: JSON text
    reason: str | None
    created_at: datetime
    updated_at: datetime
    state_changed_at: datetime


async def get(conn: Connection | asyncpg.Pool, schema: str, asset_id: UUID) -> AssetRow | None:
    """The asset; None when it does not exist.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    return await fetch_one_as(
        AssetRow, conn,
        f"SELECT * FROM {schema}.assets WHERE id = $1", asset_id)


async def with_variants(conn: Connection | asyncpg.Pool, schema: str,
                        asset_id: UUID) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
    """The asset's row and its variants' rows by name, as ``models.Asset.from_row`` takes them;
    None when the asset does not exist.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    row = await conn.fetchrow(f"SELECT * FROM {schema}.assets WHERE id = $1", asset_id)
    if row is None:
        return None
    return row, await conn.fetch(f"SELECT * FROM {schema}.variants WHERE asset_id = $1 ORDER BY name",
                                 asset_id)


def _asked_variants_query(schema: str, *, many: bool) -> str:
    """Assets by id, one row per asked-for variant they have (a row with NULL variant columns when none)."""
    # One id is "= $1": PostgreSQL plans it faster than "= ANY($1)" of one element (about 0.1 ms).
    where = "a.id = ANY($1::uuid[])" if many else "a.id = $1"
    return (f"SELECT a.id, a.profile, a.storage, a.state, a.storage_key, a.content_type, a.filename,"
            f" a.width, a.height, a.metadata->>'placeholder' AS placeholder,"
            f" v.name AS variant, v.state AS variant_state, v.storage_key AS variant_key,"
            f" v.content_type AS variant_type, v.width AS variant_width, v.height AS variant_height"
            f" FROM {schema}.assets a LEFT JOIN {schema}.variants v"
            f" ON v.asset_id = a.id AND v.name = ANY($2::text[]) WHERE {where}")


async def with_asked_variants(conn: Connection | asyncpg.Pool, schema: str, ids: list[UUID],
                              names: Iterable[str | None]
                              ) -> dict[UUID, tuple[asyncpg.Record, dict[str, asyncpg.Record]]]:
    """What delivery signs from, in one query: asset id -> (its row, its rows of the asked-for
    variants by name).  Records, not structs: this is the read of every page that shows images.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    ids: the assets.
    names: the variant names (None, the original, is skipped).
    """
    wanted = [name for name in names if name is not None]
    if not ids:
        return {}
    if len(ids) == 1:
        rows = await conn.fetch(_asked_variants_query(schema, many=False), ids[0], wanted)
    else:
        rows = await conn.fetch(_asked_variants_query(schema, many=True), ids, wanted)
    found: dict[UUID, tuple[asyncpg.Record, dict[str, asyncpg.Record]]] = {}
    for row in rows:
        asset = found.setdefault(row["id"], (row, {}))
        if row["variant"] is not None:
            asset[1][row["variant"]] = row
    return found


async def lacking_page(conn: Connection | asyncpg.Pool, schema: str, profile: str, names: list[str],
                       after: UUID, limit: int) -> list[tuple[UUID, list[str]]]:
    """The next page of the profile's assets that have variants, in id order, each with those of
    ``names`` it has no row for (an empty list for one that lacks none).

    conn: a connection or the pool.
    schema: rindle_async's schema.
    profile: the profile.
    names: variant names.
    after: the id of the last asset of the page before.
    limit: assets per page.
    """
    rows = await conn.fetch(
        f"SELECT a.id, ARRAY(SELECT n FROM unnest($2::text[]) AS n WHERE NOT EXISTS (SELECT 1"
        f" FROM {schema}.variants v WHERE v.asset_id = a.id AND v.name = n) ORDER BY n) AS missing"
        f" FROM {schema}.assets a WHERE a.profile = $1 AND a.state = ANY($5::text[]) AND a.id > $3"
        f" ORDER BY a.id LIMIT $4", profile, names, after, limit, ASSET.array("rendered"))
    return [(row["id"], list(row["missing"])) for row in rows]


async def set_placeholder(conn: Connection, schema: str, asset_id: UUID, placeholder: str) -> None:
    """Store the placeholder a render computed, unless the asset has one already.

    conn: a connection inside the render's completing transaction.
    schema: rindle_async's schema.
    asset_id: the asset.
    placeholder: the placeholder as JSON text.
    """
    await conn.execute(f"UPDATE {schema}.assets SET metadata = metadata || jsonb_build_object('placeholder',"
                       " $2::jsonb) WHERE id = $1 AND NOT metadata ? 'placeholder'", asset_id, placeholder)
