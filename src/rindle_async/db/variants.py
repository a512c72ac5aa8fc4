"""The SQL of ``variants``, reads as typed rows (state changes go through ``lifecycle``)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg
import msgspec

from ..lifecycle.machines import ASSET, VARIANT
from . import fetch_as

if TYPE_CHECKING:
    from . import Connection


class StoredVariant(msgspec.Struct, frozen=True, kw_only=True):
    """A variant with an object in storage, and the storage its asset is in."""

    id: UUID
    storage_key: str
    storage: str


class VariantOfAsset(msgspec.Struct, frozen=True, kw_only=True):
    """A variant with its asset's profile and state, as regeneration and rendering read it."""

    id: UUID
    asset_id: UUID
    name: str
    state: str
    profile: str
    asset_state: str


async def names_of(conn: Connection | asyncpg.Pool, schema: str, asset_id: UUID) -> set[str]:
    """The names of the variants the asset has rows for.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    return {r["name"] for r in await conn.fetch(
        f"SELECT name FROM {schema}.variants WHERE asset_id = $1", asset_id)}


async def states_of(conn: Connection, schema: str, asset_id: UUID) -> set[str]:
    """The states the asset's variants are in.

    conn: a connection.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    return {r["state"] for r in await conn.fetch(
        f"SELECT DISTINCT state FROM {schema}.variants WHERE asset_id = $1", asset_id)}


async def lock_in_states(conn: Connection, schema: str, asset_id: UUID, states: list[str]) -> dict[UUID, str]:
    """Lock the asset's variants in ``states`` and return their states by id.

    conn: a connection inside the transaction that will change them.
    schema: rindle_async's schema.
    asset_id: the asset.
    states: the states to lock.
    """
    rows = await conn.fetch(f"SELECT id, state FROM {schema}.variants WHERE asset_id = $1"
                            " AND state = ANY($2::text[]) ORDER BY id FOR UPDATE", asset_id, states)
    return {r["id"]: r["state"] for r in rows}


async def lock_key_state(conn: Connection, schema: str, variant_id: UUID) -> tuple[str, str | None] | None:
    """Lock one variant and return its state and storage key; None when it is gone.

    conn: a connection inside the transaction that will change it.
    schema: rindle_async's schema.
    variant_id: the variant.
    """
    row = await conn.fetchrow(f"SELECT state, storage_key FROM {schema}.variants WHERE id = $1 FOR UPDATE",
                              variant_id)
    return None if row is None else (row["state"], row["storage_key"])


async def stored_keys(conn: Connection | asyncpg.Pool, schema: str, asset_id: UUID) -> list[str]:
    """The storage keys the asset's variants hold.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    return [r["storage_key"] for r in await conn.fetch(
        f"SELECT storage_key FROM {schema}.variants WHERE asset_id = $1 AND storage_key IS NOT NULL",
        asset_id)]


async def key_referenced(conn: Connection | asyncpg.Pool, schema: str, key: str) -> bool:
    """Whether any variant row refers to ``key``.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    key: a storage key.
    """
    return bool(await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {schema}.variants WHERE storage_key = $1)", key))


async def stored(conn: Connection | asyncpg.Pool, schema: str) -> list[StoredVariant]:
    """Every variant with a stored object (ready or stale), in id order.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    """
    return await fetch_as(
        StoredVariant, conn,
        f"SELECT v.id, v.storage_key, a.storage FROM {schema}.variants v JOIN {schema}.assets a"
        f" ON a.id = v.asset_id WHERE v.state = ANY($1::text[]) AND v.storage_key IS NOT NULL"
        f" ORDER BY v.id", VARIANT.array("stored"))


async def drifted(conn: Connection | asyncpg.Pool, schema: str, profile: str, name: str,
                  digest: str) -> list[UUID]:
    """The ready variants ``name`` of the profile's assets whose recipe digest is not ``digest``.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    profile: the profile.
    name: the variant name.
    digest: the profile's current recipe digest for it.
    """
    return [r["id"] for r in await conn.fetch(
        f"SELECT v.id FROM {schema}.variants v JOIN {schema}.assets a ON a.id = v.asset_id"
        f" WHERE a.profile = $1 AND v.name = $2 AND v.state = 'ready' AND v.recipe_digest <> $3",
        profile, name, digest)]


async def repoint_pending(conn: Connection, schema: str, profile: str, name: str,
                          digest: str) -> list[tuple[UUID, UUID, str]]:
    """Point the pending variants ``name`` of the profile's assets at ``digest``; return
    (variant id, asset id, state) of each one changed.

    conn: a connection inside a transaction.
    schema: rindle_async's schema.
    profile: the profile.
    name: the variant name.
    digest: the recipe digest they must render.
    """
    rows = await conn.fetch(
        f"UPDATE {schema}.variants v SET recipe_digest = $3, updated_at = now()"
        f" FROM {schema}.assets a WHERE a.id = v.asset_id AND a.profile = $1 AND v.name = $2"
        f" AND v.state = ANY($4::text[]) AND v.recipe_digest <> $3"
        f" RETURNING v.id, v.asset_id, v.state", profile, name, digest, VARIANT.array("pending"))
    return [(r["id"], r["asset_id"], r["state"]) for r in rows]


async def in_states(conn: Connection | asyncpg.Pool, schema: str, states: list[str], *,
                    profile: str | None = None, name: str | None = None,
                    asset_id: UUID | None = None) -> list[VariantOfAsset]:
    """The variants in ``states`` of assets that have variants, by asset and name.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    states: the variant states.
    profile: only this profile's assets.
    name: only variants of this name.
    asset_id: only this asset's variants.
    """
    return await fetch_as(
        VariantOfAsset, conn,
        f"SELECT v.id, v.asset_id, v.name, v.state, a.profile, a.state AS asset_state"
        f" FROM {schema}.variants v JOIN {schema}.assets a ON a.id = v.asset_id"
        f" WHERE v.state = ANY($1::text[]) AND a.state = ANY($5::text[])"
        f" AND ($2::text IS NULL OR a.profile = $2) AND ($3::text IS NULL OR v.name = $3)"
        f" AND ($4::uuid IS NULL OR a.id = $4) ORDER BY v.asset_id, v.name",
        states, profile, name, asset_id, ASSET.array("rendered"))


class RenderRow(msgspec.Struct, frozen=True, kw_only=True):
    """A variant a render may claim, with its asset's state, profile and original."""

    id: UUID
    name: str
    state: str
    recipe_digest: str
    asset_state: str
    profile: str
    storage: str
    source_key: str
    has_placeholder: bool


async def lock_for_render(conn: Connection, schema: str, asset_id: UUID) -> list[RenderRow]:
    """Lock the asset and its variants a render may claim (queued or processing), by name.

    conn: a connection inside the transaction that claims them.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    return await fetch_as(
        RenderRow, conn,
        f"SELECT a.state AS asset_state, a.profile, a.storage, a.storage_key AS source_key,"
        f" a.metadata ? 'placeholder' AS has_placeholder,"
        f" v.id, v.name, v.state, v.recipe_digest FROM {schema}.assets a"
        f" JOIN {schema}.variants v ON v.asset_id = a.id"
        f" WHERE a.id = $1 AND v.state = ANY($2::text[]) ORDER BY v.name"
        f" FOR UPDATE OF a, v", asset_id, VARIANT.array("rendering"))


class LockedVariant(msgspec.Struct, frozen=True, kw_only=True):
    """A variant locked with its asset, as a render reads it back before accepting its work."""

    id: UUID
    state: str
    recipe_digest: str
    asset_state: str


async def lock_with_asset(conn: Connection, schema: str, asset_id: UUID) -> list[LockedVariant]:
    """Lock the asset and all its variants; return the variants with the asset's state.

    conn: a connection inside the transaction that changes them.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    return await fetch_as(
        LockedVariant, conn,
        f"SELECT v.id, v.state, v.recipe_digest, a.state AS asset_state FROM {schema}.variants v"
        f" JOIN {schema}.assets a ON a.id = v.asset_id WHERE v.asset_id = $1"
        f" FOR UPDATE OF v, a", asset_id)
