"""Rendering variants: the ``process_variant`` job and the asset's settling.

A variant row's ``recipe_digest`` is the recipe it wants (set when it is
queued) and, once ready, the recipe of the stored object.  The job renders the
recipe in the processing pool, uploads it under a key that contains the digest
(so a new recipe never overwrites the object a live URL points at), and only
then, under lock, re-checks that the asset is still live and the row still
wants that digest before marking it ready.  A stale job's object is deleted
instead.  When no variant is left pending, the asset settles as ready, or
degraded if any variant failed.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import anyio
import msgspec

from . import security, states
from .assets import asset_uuid
from .errors import InvalidTransition, RindleError
from .states import ASSET, VARIANT

if TYPE_CHECKING:
    from .db.transaction import UnitOfWork
    from .jobs import JobRun

log = logging.getLogger("rindle_async.rendering")
LIVE = frozenset({"available", "processing", "ready", "degraded"})
PENDING = frozenset({"planned", "queued", "processing"})
BAD = frozenset({"failed", "cancelled", "missing"})


class RecipeMismatch(RindleError):
    """This worker's profile wants another recipe than the row (a deploy in progress)."""

    retryable = True
    retry_after = 60.0  # give a rolling deploy minutes, not seconds, before the tries run out


async def settle_asset(uow: UnitOfWork, asset_id: object) -> str | None:
    """Move a processing asset to ready or degraded once no variant is pending.

    uow: the unit of work that just changed a variant.
    asset_id: the asset.
    Returns the asset's new state, or None when it did not change.
    """
    schema = uow.ledger.schema
    state = await uow.conn.fetchval(f"SELECT state FROM {schema}.assets WHERE id = $1 FOR UPDATE",
                                    asset_id)
    if state != "processing":
        return None
    counts = {r["state"] for r in await uow.conn.fetch(
        f"SELECT DISTINCT state FROM {schema}.variants WHERE asset_id = $1", asset_id)}
    if counts & PENDING:
        return None
    target = "degraded" if counts & BAD else "ready"
    await states.transition(uow, ASSET, asset_id, "processing", target)
    return target


async def _row(job: JobRun, asset_id: object, name: str):
    schema = job.rindle.schema
    return await job.rindle.pool.fetchrow(
        f"SELECT v.id, v.state, v.recipe_digest, a.state AS asset_state, a.profile, a.storage,"
        f" a.storage_key AS source_key FROM {schema}.variants v JOIN {schema}.assets a"
        f" ON a.id = v.asset_id WHERE v.asset_id = $1 AND v.name = $2", asset_id, name)


async def process_variant(job: JobRun) -> None:
    """Render one variant and mark it ready, unless the work went stale meanwhile.

    job: the running ledger job; ``job.args`` holds ``asset_id`` and ``variant``.
    """
    from .processing import images  # loads libvips, in workers only

    rindle = job.rindle
    asset_id, name = asset_uuid(job.args["asset_id"]), job.args["variant"]
    row = await _row(job, asset_id, name)
    if row is None or row["asset_state"] not in LIVE or row["state"] not in ("queued", "processing"):
        return  # purged, refused, or already handled by an earlier delivery
    profile = rindle.profiles.get(row["profile"])
    variant = profile.variants.get(name) if profile is not None else None
    if variant is None:
        async with job.complete() as uow:
            await states.transition(uow, VARIANT, row["id"], row["state"], "cancelled",
                                    reason=f"variant {name!r} is no longer in profile {row['profile']!r}")
            await settle_asset(uow, asset_id)
        return
    digest = profile.recipe_digests()[name]
    if digest != row["recipe_digest"]:
        raise RecipeMismatch(f"this worker renders {name!r} as recipe {digest}, the row wants "
                             f"{row['recipe_digest']}; are workers running different profiles?")
    if row["state"] == "queued":
        try:
            async with rindle.db.transaction() as uow:
                await states.transition(uow, VARIANT, row["id"], "queued", "processing")
        except InvalidTransition:
            return  # another delivery of this render took it first

    storage = rindle.storages[row["storage"]]
    key = security.variant_key(profile.name, str(asset_id), name, digest, variant.extension)
    async with anyio.TemporaryDirectory(prefix="rindle-render-") as workdir:
        source = os.path.join(workdir, "original")
        await storage.download(row["source_key"], source)
        result = await rindle.processing.run(
            images.render, source, workdir, msgspec.structs.asdict(variant), profile.max_pixels,
            timeout=max(1.0, job.kind.timeout - 10))
        info = await storage.put(key, result["path"], content_type=variant.content_type)
    accepted = False
    async with job.complete() as uow:
        current = await uow.conn.fetchrow(
            f"SELECT v.state, v.recipe_digest, a.state AS asset_state FROM {rindle.schema}.variants v"
            f" JOIN {rindle.schema}.assets a ON a.id = v.asset_id WHERE v.id = $1"
            f" FOR UPDATE OF v, a", row["id"])
        if (current is not None and current["asset_state"] in LIVE
                and current["state"] == "processing" and current["recipe_digest"] == digest):
            await states.transition(uow, VARIANT, row["id"], "processing", "ready", storage_key=key,
                                    width=result["width"], height=result["height"],
                                    byte_size=info.size, content_type=variant.content_type,
                                    reason=None, generated_at=datetime.now(timezone.utc))
            await settle_asset(uow, asset_id)
            accepted = True
    if not accepted:
        log.info("variant %s of asset %s went stale while rendering; its object is dropped", name,
                 asset_id)
        referenced = await rindle.pool.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {rindle.schema}.variants WHERE storage_key = $1)", key)
        if not referenced:
            await storage.delete(key)


async def variant_failed(uow: UnitOfWork, job: JobRun, error: str) -> None:
    """``on_discard`` of process_variant: the variant fails with the error; the asset settles."""
    asset_id, name = asset_uuid(job.args["asset_id"]), job.args["variant"]
    row = await uow.conn.fetchrow(
        f"SELECT id, state FROM {job.rindle.schema}.variants WHERE asset_id = $1 AND name = $2"
        " FOR UPDATE", asset_id, name)
    if row is None or not VARIANT.allows(row["state"], "failed"):
        return
    await states.transition(uow, VARIANT, row["id"], row["state"], "failed", reason=error)
    await settle_asset(uow, asset_id)
