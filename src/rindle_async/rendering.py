"""Rendering variants: the ``process_variant`` job and the asset's settling.

One job renders every queued variant of one asset, from one decode of the
original (``processing.images.render_job``, which also makes the asset's placeholder from a
frame it decoded, when the asset has none yet), in three phases:

1. claim (one transaction): variants the profile no longer has are cancelled,
   the others move to ``processing``;
2. render and store (no transaction): one pool call, then one upload per
   variant under a key that contains its recipe digest, so a new recipe never
   overwrites the object a live URL points at;
3. accept (one transaction), under lock: a variant becomes ``ready`` only if the
   asset is still live and the row still wants that digest; a variant whose own
   recipe failed becomes ``failed``; the asset settles as ready, or degraded if
   any variant failed.  Objects of work that went stale are deleted.

Each variant keeps its own row, state, digest, key and failure: one that fails
does not fail the others, and a retry (a storage error, a killed process)
renders only what is still ``processing``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec

from .db import assets, variants
from .errors import RindleError, StorageError
from .ledger.stage import render_key
from .lifecycle import transitions
from .lifecycle.machines import ASSET, VARIANT
from .scratch import local_copy, scratch_folder
from .storage import keys

if TYPE_CHECKING:
    from .db.transaction import UnitOfWork
    from .ledger.runner import JobRun
    from .profiles import Profile

log = logging.getLogger("rindle_async.rendering")
LIVE = ASSET.group("live")


class RecipeMismatch(RindleError):
    """This worker's profile wants another recipe than the row (a deploy in progress)."""

    retryable = True
    retry_after = 60.0  # give a rolling deploy minutes, not seconds, before the tries run out


@dataclass(frozen=True)
class Planned:
    """One variant this attempt renders."""

    id: Any
    name: str
    digest: str


@dataclass
class Work:
    """What a render attempt claimed, and what came of it."""

    asset_id: Any
    profile: Profile
    storage_name: str
    source_key: str
    variants: list[Planned]
    mismatched: list[str]
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> key, size, ...
    refused: dict[str, str] = field(default_factory=dict)  # name -> why its recipe failed
    transient: list[BaseException] = field(default_factory=list)  # worth another try
    wants_placeholder: bool = False  # the asset has none: make it from the frames decoded here
    placeholder: dict[str, str] | None = None


async def settle_asset(uow: UnitOfWork, asset_id: UUID,
                       known: tuple[str, set[str]] | None = None) -> str | None:
    """Move a processing asset to ready or degraded once no variant is pending.

    uow: the unit of work that just changed a variant.
    asset_id: the asset.
    known: the asset's state and its variants' states, when the caller holds them locked.
    Returns the asset's new state, or None when it did not change.
    """
    if known is None:
        state = await assets.lock_state(uow.conn, uow.schema, asset_id)
        variant_states = await variants.states_of(uow.conn, uow.schema, asset_id)
    else:
        state, variant_states = known
    if state != "processing" or variant_states & VARIANT.group("pending"):
        return None
    target = "degraded" if variant_states & VARIANT.group("bad") else "ready"
    await transitions.transition(uow, ASSET, asset_id, "processing", target)
    return target


async def process_variant(job: JobRun) -> None:
    """Render every queued variant of one asset from one decode; each keeps its own outcome.

    job: the running ledger job; ``job.args.asset_id`` names the asset.
    """
    work = await _claim(job, job.args.asset_id)
    if work is None:
        return  # purged, refused, or already handled by an earlier delivery
    if work.variants:
        await _render_and_store(job, work)
        await _accept(job, work)
    if work.transient:
        raise work.transient[0]
    if work.mismatched:
        digests = work.profile.recipe_digests()
        raise RecipeMismatch(
            f"this worker renders {', '.join(repr(n) for n in work.mismatched)} with recipe(s) "
            f"{', '.join(digests[n] for n in work.mismatched)}, which the rows do not want; are "
            "workers running different profiles?")


async def _claim(job: JobRun, asset_id: UUID) -> Work | None:
    rt = job.runtime
    async with rt.db.transaction() as uow:
        rows = await variants.lock_for_render(uow.conn, rt.schema, asset_id)
        if not rows or rows[0].asset_state not in LIVE:
            return None
        first = rows[0]
        profile = rt.profiles.get(first.profile)
        digests = profile.recipe_digests() if profile is not None else {}
        retired = [r for r in rows if r.name not in digests]
        for row in retired:
            await transitions.transition(uow, VARIANT, row.id, row.state, "cancelled",
                                    reason=f"variant {row.name!r} is no longer in profile "
                                           f"{first.profile!r}")
        if retired:
            await settle_asset(uow, asset_id)
        live = [r for r in rows if r.name in digests]
        wanted = [r for r in live if r.recipe_digest == digests[r.name]]
        queued = [r.id for r in wanted if r.state == "queued"]
        await transitions.transition_many(uow, VARIANT, queued, "queued", "processing")
    if profile is None:
        return None
    return Work(asset_id=asset_id, profile=profile, storage_name=first.storage,
                source_key=first.source_key, wants_placeholder=not first.has_placeholder,
                variants=[Planned(r.id, r.name, r.recipe_digest) for r in wanted],
                mismatched=[r.name for r in live if r not in wanted])


async def _render_and_store(job: JobRun, work: Work) -> None:
    from .processing import images  # loads libvips, in workers only

    rt, profile = job.runtime, work.profile
    storage = rt.storages[work.storage_name]
    recipes = {v.name: msgspec.structs.asdict(profile.variants[v.name]) for v in work.variants}
    with scratch_folder("rindle-render-") as workdir:
        source = await local_copy(storage, work.source_key, workdir)  # an original key is never rewritten
        rendered = await rt.processing.run(
            images.render_job, source, workdir, recipes, profile.max_pixels, work.wants_placeholder,
            timeout=job.kind.timeout - min(10.0, job.kind.timeout / 10), waiting=job.paused)
        outputs, work.placeholder = rendered["variants"], rendered["placeholder"]
        for planned in work.variants:
            output = outputs[planned.name]
            if "error" in output:
                work.refused[planned.name] = output["error"]
                continue
            variant = profile.variants[planned.name]
            key = keys.variant_key(profile.name, str(work.asset_id), planned.name,
                                       planned.digest, variant.extension)
            try:
                info = await storage.put(key, output["path"], content_type=variant.content_type)
            except StorageError as exc:
                work.transient.append(exc)
                continue
            work.stored[planned.name] = {"storage_key": key, "width": output["width"],
                                         "height": output["height"], "byte_size": info.size,
                                         "content_type": variant.content_type}



async def _accept(job: JobRun, work: Work) -> None:
    rt = job.runtime
    finished = not work.transient and not work.mismatched
    accepted: set[str] = set()
    async with (job.complete() if finished else rt.db.transaction()) as uow:
        rows = await variants.lock_with_asset(uow.conn, rt.schema, work.asset_id)
        now_states = {r.id: r.state for r in rows}
        asset_state = rows[0].asset_state if rows else None
        for planned in work.variants:
            row = next((r for r in rows if r.id == planned.id), None)
            if (asset_state not in LIVE or row is None or row.state != "processing"
                    or row.recipe_digest != planned.digest):
                continue  # purged, re-pointed or finished by another delivery meanwhile
            if planned.name in work.stored:
                await transitions.transition(uow, VARIANT, planned.id, "processing", "ready", reason=None,
                                        generated_at=datetime.now(timezone.utc),
                                        **work.stored[planned.name])
                now_states[planned.id] = "ready"
                accepted.add(planned.name)
            elif planned.name in work.refused:
                await transitions.transition(uow, VARIANT, planned.id, "processing", "failed",
                                        reason=work.refused[planned.name])
                now_states[planned.id] = "failed"
        if asset_state is not None:
            if work.placeholder is not None and asset_state in LIVE:
                await assets.set_placeholder(uow.conn, rt.schema, work.asset_id,
                                             msgspec.json.encode(work.placeholder).decode())
            await settle_asset(uow, work.asset_id, (asset_state, set(now_states.values())))
    storage = rt.storages[work.storage_name]
    for name, stored in work.stored.items():
        if name in accepted:
            continue
        log.info("variant %s of asset %s went stale while rendering; its object is dropped", name,
                 work.asset_id)
        if not await variants.key_referenced(rt.pool, rt.schema, stored["storage_key"]):
            await storage.delete(stored["storage_key"])


async def variant_failed(uow: UnitOfWork, job: JobRun, error: str) -> None:
    """``on_discard`` of process_variant: the variants it was rendering fail with the error.

    Queued variants fail too unless a newer render job of the asset is pending (it will
    render them); the asset settles.
    """
    asset_id = job.args.asset_id
    locked = await variants.lock_in_states(uow.conn, uow.schema, asset_id, VARIANT.array("rendering"))
    covered = await job.runtime.ledger.has_pending(uow.conn, render_key(asset_id), other_than=job.id)
    for variant_id, state in locked.items():
        if state == "processing" or not covered:
            await transitions.transition(uow, VARIANT, variant_id, state, "failed", reason=error)
    await settle_asset(uow, asset_id)
