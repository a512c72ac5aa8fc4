"""Recipes over time: stale detection when a profile's recipe changes, planning the variants
a profile gained, and regeneration (re-rendering stale, missing and failed variants).

``reconcile_profiles`` runs at every worker's startup (``Rindle.mark_stale_variants``), and
at a web process's ``open()`` only when it asks (``Rindle(detect_stale=True)``).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from .assets import asset_uuid
from .db import assets, variants
from .db.variants import VariantOfAsset
from .errors import InvalidTransition, NotFound, ValidationError
from .ledger.stage import stage_promote, stage_render
from .lifecycle import transitions
from .lifecycle.machines import ASSET, VARIANT
from .maintenance.report import Progress, Report, emit
from .promotion import plan_variants, queue_render

if TYPE_CHECKING:
    from .db.transaction import UnitOfWork
    from .profiles import Profile
    from .runtime import Runtime


async def reconcile_profiles(rt: Runtime) -> Report:
    """Mark ready variants whose recipe changed as stale; plan variants a profile gained.

    rt: the runtime of the opened Rindle.
    """
    report = Report("reconcile_profiles", False)
    for profile in rt.profiles.values():
        for name, digest in profile.recipe_digests().items():
            for variant_id in await variants.drifted(rt.pool, rt.schema, profile.name, name, digest):
                try:
                    async with rt.db.transaction() as uow:
                        await transitions.transition(uow, VARIANT, variant_id, "ready", "stale",
                                                     reason="the profile's recipe changed")
                except InvalidTransition:
                    continue  # another process (opening at the same deploy) got there first
                report.add("stale", str(variant_id))
            await _repoint_pending(rt, report, profile.name, name, digest)
        if profile.variants:
            await _plan_gained(rt, report, profile)
    return report


async def _plan_gained(rt: Runtime, report: Report, profile: Profile) -> None:
    """Plan the variants a profile gained for each of its assets that has variants."""
    for asset_id in await assets.lacking_variants(rt.pool, rt.schema, profile.name, list(profile.variants)):
        async with rt.db.transaction() as uow:
            # locked, so processes opening at once plan each variant once
            state = await assets.lock_state(uow.conn, rt.schema, asset_id)
            if state not in ASSET.group("rendered"):
                continue
            planned = await plan_variants(uow, rt, asset_id, profile.name)
            if planned and state != "processing":
                await transitions.transition(uow, ASSET, asset_id, state, "processing")
        report.count("planned", planned)


async def _repoint_pending(rt: Runtime, report: Report, profile: str, name: str, digest: str) -> None:
    """Renders not finished yet want the new recipe: re-point them (and re-stage one for a
    render in flight, whose old-recipe result will be dropped as stale work)."""
    async with rt.db.transaction() as uow:
        for variant_id, asset_id, state in await variants.repoint_pending(uow.conn, rt.schema, profile,
                                                                           name, digest):
            report.add("repointed", str(variant_id))
            if state == "processing":
                await stage_render(uow, asset_id)


async def regenerate_variants(rt: Runtime, *, profile: str | None = None,
                              variant: str | None = None,
                              states_: tuple[str, ...] = ("stale", "missing", "failed"),
                              asset_id: str | None = None, dry_run: bool = False,
                              progress: Progress | None = None) -> Report:
    """Re-queue variants (stale, missing, failed by default) with the current recipe.

    rt: the runtime of the opened Rindle.
    profile: only this profile.
    variant: only this variant name.
    states_: only variants in these states (any of stale, missing, failed, cancelled).
    asset_id: only this asset (``requeue``).
    dry_run: report without changing anything.
    progress: called with (done, total).
    """
    allowed = VARIANT.group("regenerable")
    bad = set(states_) - allowed
    if bad:
        raise ValidationError(f"cannot regenerate variants in states {sorted(bad)}; "
                              f"choose from {', '.join(sorted(allowed))}")
    report = Report("regenerate_variants", dry_run)
    rows = await variants.in_states(rt.pool, rt.schema, list(states_), profile=profile, name=variant,
                                    asset_id=asset_uuid(asset_id) if asset_id else None)
    done = 0
    for _, grouped in itertools.groupby(rows, key=lambda r: r.asset_id):
        group = list(grouped)
        await _regenerate_asset(rt, report, group)
        done += len(group)
        if progress:
            progress(done, len(rows))
    return await emit(rt, report)


async def _regenerate_asset(rt: Runtime, report: Report, group: list[VariantOfAsset]) -> None:
    """Re-queue one asset's variants in one transaction (one render job for all of them)."""
    wanted = []
    for row in group:
        config = rt.profiles.get(row.profile)
        if config is None or row.name not in config.variants:
            report.add("skipped_not_in_profile", str(row.id))
        else:
            report.add("requeued", str(row.id))
            wanted.append((row, config.recipe_digests()[row.name]))
    if wanted and not report.dry_run:
        async with rt.db.transaction() as uow:
            for row, digest in wanted:
                await _requeue_variant(uow, row, digest)


async def _requeue_variant(uow: UnitOfWork, row: VariantOfAsset, digest: str) -> None:
    """Point a variant at ``digest`` and queue its render; the asset goes back to processing.

    uow: the unit of work.
    row: the variant.
    digest: the recipe digest it must render.
    """
    changes: dict[str, Any] = {"recipe_digest": digest}
    if row.state == "missing":
        changes["storage_key"] = None  # its object is gone: nothing to serve meanwhile
    await queue_render(uow, row.id, row.asset_id, row.name, row.state, **changes)
    # read under lock: an earlier variant of the same asset may have moved it already
    asset_state = await assets.lock_state(uow.conn, uow.schema, row.asset_id)
    if asset_state in ASSET.group("settled"):
        await transitions.transition(uow, ASSET, row.asset_id, asset_state, "processing")


async def requeue_asset(rt: Runtime, asset_id: str, *, dry_run: bool = False) -> Report:
    """Re-run what one asset is missing: its promotion, or its unfinished variants.

    rt: the runtime of the opened Rindle.
    asset_id: the asset.
    dry_run: report without changing anything.
    """
    key = asset_uuid(asset_id)
    state = await assets.state_of(rt.pool, rt.schema, key)
    if state is None:
        raise NotFound(f"asset {asset_id} does not exist")
    if state in ASSET.group("promotable"):
        report = Report("requeue", dry_run)
        report.add("promotions", str(key))
        if not dry_run:
            async with rt.db.transaction() as uow:
                await stage_promote(uow, key)
        return await emit(rt, report)
    if state not in ASSET.group("rendered"):
        raise ValidationError(f"asset {asset_id} is {state}; only assets being promoted or with "
                              "variants can be requeued")
    report = await regenerate_variants(rt, asset_id=str(key), dry_run=dry_run,
                                       states_=tuple(VARIANT.array("regenerable")))
    report.worker = "requeue"
    return report
