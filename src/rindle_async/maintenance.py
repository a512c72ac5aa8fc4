"""Day-2 work: abort, cleanup, stale detection, regeneration, storage checks, status.

Each verb is one service function that the CLI, the cron jobs and hosts call.
Destructive verbs take ``dry_run``: a dry run computes exactly the same plan as
a live run and changes nothing.  Every run emits ``CleanupRun`` with its counts.
Storage I/O happens between transactions, never inside one.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from . import states
from .assets import asset_uuid
from .db import migrate
from .errors import InvalidTransition, NotFound, ValidationError
from .events import CleanupRun
from .promotion import plan_variants, queue_render, stage_render
from .states import ASSET, UPLOAD_SESSION, VARIANT
from .uploads import OPEN_STATES

if TYPE_CHECKING:
    from .app import Rindle
    from .db.transaction import UnitOfWork
    from .jobs import JobRun

log = logging.getLogger("rindle_async.maintenance")
Progress = Callable[[int, int], None]
#: Every asset state but the tombstone: what cleanup may find unattached and old.
KEEPABLE = tuple(sorted(ASSET.states - {"deleted"}))


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Report:
    """What a maintenance run did (or, dry, would do): counts and the affected ids."""

    worker: str
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)
    items: dict[str, list[str]] = field(default_factory=dict)

    def add(self, what: str, item: str) -> None:
        self.items.setdefault(what, []).append(item)
        self.counts[what] = self.counts.get(what, 0) + 1

    def summary(self) -> str:
        mode = "dry run" if self.dry_run else "live"
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "nothing to do"
        return f"{self.worker} ({mode}): {parts}"


async def _emit(rindle: Rindle, report: Report) -> Report:
    await rindle.bus.deliver([CleanupRun(worker=report.worker, dry_run=report.dry_run,
                                         counts=dict(report.counts))])
    return report


async def _tombstone(uow: UnitOfWork, asset_id: uuid.UUID, reason: str, *,
                     only_from: tuple[str, ...] | None = None) -> bool:
    """Tombstone an asset and stage its purge, re-checked under lock; False when it no longer
    qualifies (attached, or moved on, since the run read it)."""
    schema = uow.ledger.schema
    state = await uow.conn.fetchval(f"SELECT state FROM {schema}.assets WHERE id = $1 FOR UPDATE",
                                    asset_id)
    if state is None or state == "deleted" or (only_from is not None and state not in only_from):
        return False
    if await uow.conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {schema}.attachments WHERE asset_id = $1)", asset_id):
        return False
    await states.transition(uow, ASSET, asset_id, state, "deleted", reason=reason)
    await uow.stage("purge_storage", {"asset_id": str(asset_id)}, dedupe_key=f"purge:{asset_id}")
    return True


# -- abort ------------------------------------------------------------------------------


async def abort_incomplete_uploads(rindle: Rindle, *, dry_run: bool = False,
                                   now: datetime | None = None,
                                   progress: Progress | None = None) -> Report:
    """Expire every open session past its deadline; tombstone its staged asset; abort multipart.

    rindle: the opened Rindle.
    dry_run: report without changing anything.
    now: the clock (tests).
    progress: called with (done, total) as sessions are handled.
    """
    report = Report("abort_incomplete_uploads", dry_run)
    rows = await rindle.pool.fetch(
        f"SELECT s.id, s.state, s.asset_id, s.storage_key, s.multipart_upload_id, a.storage,"
        f" a.state AS asset_state FROM {rindle.schema}.upload_sessions s"
        f" JOIN {rindle.schema}.assets a ON a.id = s.asset_id"
        f" WHERE s.state = ANY($1::text[]) AND s.expires_at < $2 ORDER BY s.expires_at",
        list(OPEN_STATES), now or _now())
    for done, row in enumerate(rows, 1):
        tombstoned = row["asset_state"] == "staged"
        if not dry_run:
            try:
                async with rindle.db.transaction() as uow:
                    await states.transition(uow, UPLOAD_SESSION, row["id"], row["state"], "expired",
                                            reason="the upload deadline passed")
                    tombstoned = await _tombstone(uow, row["asset_id"],
                                                  "its upload session expired before verification",
                                                  only_from=("staged",))
            except InvalidTransition:  # the session moved on since it was read (e.g. verified)
                report.add("skipped_changed", str(row["id"]))
                continue
            if row["multipart_upload_id"]:
                await rindle.storages[row["storage"]].abort_multipart(
                    row["storage_key"], row["multipart_upload_id"])
        report.add("sessions_expired", str(row["id"]))
        if tombstoned:
            report.add("assets_tombstoned", str(row["asset_id"]))
        if row["multipart_upload_id"]:
            report.add("multipart_aborted", row["multipart_upload_id"])
        if progress:
            progress(done, len(rows))
    return await _emit(rindle, report)


async def abort_incomplete_uploads_job(job: JobRun) -> None:
    """Ledger job: abort incomplete uploads (live unless ``dry_run`` is in the args)."""
    await abort_incomplete_uploads(job.rindle, dry_run=bool(job.args.get("dry_run", False)))


# -- cleanup ----------------------------------------------------------------------------


async def cleanup_orphans(rindle: Rindle, *, dry_run: bool = True,
                          grace: timedelta = timedelta(hours=24), now: datetime | None = None,
                          progress: Progress | None = None) -> Report:
    """Remove what nothing holds; a dry run reports exactly what a live run would do.

    rindle: the opened Rindle.
    dry_run: report without changing anything (the default).
    grace: how old unattached assets, stray objects and multipart uploads must be.
    now: the clock (tests).
    progress: called with (done, total) per step.
    Steps: assets of failed, aborted or expired sessions; unattached assets older
    than ``grace``; tombstoned assets whose purge is not pending (re-staged);
    stray objects no row refers to; abandoned multipart uploads.
    """
    schema, now = rindle.schema, now or _now()
    cutoff = now - grace
    report = Report("cleanup_orphans", dry_run)
    doomed = await rindle.pool.fetch(
        f"SELECT DISTINCT a.id, a.state, CASE WHEN s.id IS NOT NULL THEN 'session' ELSE 'unattached'"
        f" END AS why FROM {schema}.assets a"
        f" LEFT JOIN {schema}.upload_sessions s ON s.asset_id = a.id"
        f"   AND s.state IN ('failed', 'aborted', 'expired')"
        f" WHERE a.state = ANY($1::text[])"
        f"   AND NOT EXISTS (SELECT 1 FROM {schema}.attachments t WHERE t.asset_id = a.id)"
        f"   AND (s.id IS NOT NULL OR a.created_at < $2)"
        f"   AND NOT EXISTS (SELECT 1 FROM {schema}.upload_sessions o WHERE o.asset_id = a.id"
        f"     AND o.state = ANY($3::text[]) AND o.expires_at >= $4)"
        f" ORDER BY a.id", list(KEEPABLE), cutoff, list(OPEN_STATES), now)
    for row in doomed:
        what = "session_assets" if row["why"] == "session" else "unattached_assets"
        if not dry_run:
            async with rindle.db.transaction() as uow:
                done = await _tombstone(uow, row["id"],
                                        "cleanup: its upload failed" if what == "session_assets"
                                        else f"cleanup: unattached for longer than {grace}")
            if not done:  # attached (or gone) since the run read it
                report.add("skipped_changed", str(row["id"]))
                continue
        report.add(what, str(row["id"]))
    unpurged = await rindle.pool.fetch(
        f"SELECT a.id FROM {schema}.assets a WHERE a.state = 'deleted' AND NOT EXISTS ("
        f" SELECT 1 FROM {schema}.jobs j WHERE j.kind = 'purge_storage'"
        f" AND j.status IN ('pending', 'enqueued') AND j.args->>'asset_id' = a.id::text)"
        f" AND a.state_changed_at < $1 ORDER BY a.id", cutoff)
    for row in unpurged:
        report.add("purges_restaged", str(row["id"]))
        if not dry_run:
            async with rindle.db.transaction() as uow:
                await uow.stage("purge_storage", {"asset_id": str(row["id"])},
                                dedupe_key=f"purge:{row['id']}")
    await _stray_objects(rindle, report, cutoff, progress)
    await _abandoned_multipart(rindle, report, cutoff)
    return await _emit(rindle, report)


async def _stray_objects(rindle: Rindle, report: Report, cutoff: datetime,
                         progress: Progress | None) -> None:
    """Objects under a profile's prefix that no asset or variant row refers to."""
    schema = rindle.schema
    for profile in rindle.profiles.values():
        storage = rindle.storages[profile.storage]
        seen = 0
        async for info in storage.list(f"{profile.name}/"):
            seen += 1
            if info.last_modified is not None and info.last_modified >= cutoff:
                continue  # young: an upload or a render may be about to refer to it
            owner = await rindle.pool.fetchrow(
                f"SELECT a.state, a.storage_key = $2 OR EXISTS (SELECT 1 FROM {schema}.variants v"
                f" WHERE v.asset_id = a.id AND v.storage_key = $2) AS referenced"
                f" FROM {schema}.assets a WHERE a.id = $1 AND a.storage = $3",
                _asset_of(info.key), info.key, profile.storage)
            if owner is not None and (owner["referenced"] or owner["state"] == "deleted"):
                continue  # in use, or its purge job will delete it
            report.add("stray_objects", f"{profile.storage}:{info.key}")
            if not report.dry_run:
                await storage.delete(info.key)
            if progress:
                progress(seen, 0)


def _asset_of(key: str) -> uuid.UUID | None:
    """The asset id in a key laid out as ``profile/xx/<asset id>/...``."""
    parts = key.split("/")
    try:
        return uuid.UUID(parts[2]) if len(parts) > 3 else None
    except ValueError:
        return None


async def _abandoned_multipart(rindle: Rindle, report: Report, cutoff: datetime) -> None:
    names = {p.storage for p in rindle.profiles.values()}
    for name in sorted(names):
        storage = rindle.storages[name]
        if not storage.capabilities.multipart:
            continue
        open_ids = {r["multipart_upload_id"] for r in await rindle.pool.fetch(
            f"SELECT multipart_upload_id FROM {rindle.schema}.upload_sessions"
            f" WHERE multipart_upload_id IS NOT NULL AND state = ANY($1::text[])",
            list(OPEN_STATES))}
        for profile in (p for p in rindle.profiles.values() if p.storage == name):
            async for upload in storage.list_multipart(f"{profile.name}/"):
                if upload.upload_id in open_ids:
                    continue
                if upload.initiated is not None and upload.initiated >= cutoff:
                    continue
                report.add("multipart_aborted", f"{name}:{upload.key}:{upload.upload_id}")
                if not report.dry_run:
                    await storage.abort_multipart(upload.key, upload.upload_id)


async def cleanup_orphans_job(job: JobRun) -> None:
    """Ledger job: cleanup (live unless ``dry_run`` is true in the args)."""
    await cleanup_orphans(job.rindle, dry_run=bool(job.args.get("dry_run", False)))


# -- stale detection and regeneration ---------------------------------------------------


async def reconcile_profiles(rindle: Rindle) -> Report:
    """Mark ready variants whose recipe changed as stale; plan variants a profile gained.

    rindle: the opened Rindle.
    """
    schema, report = rindle.schema, Report("reconcile_profiles", False)
    for profile in rindle.profiles.values():
        for name, digest in profile.recipe_digests().items():
            rows = await rindle.pool.fetch(
                f"SELECT v.id FROM {schema}.variants v JOIN {schema}.assets a ON a.id = v.asset_id"
                f" WHERE a.profile = $1 AND v.name = $2 AND v.state = 'ready'"
                f" AND v.recipe_digest <> $3", profile.name, name, digest)
            for row in rows:
                try:
                    async with rindle.db.transaction() as uow:
                        await states.transition(uow, VARIANT, row["id"], "ready", "stale",
                                                reason="the profile's recipe changed")
                except InvalidTransition:
                    continue  # another process (opening at the same deploy) got there first
                report.add("stale", str(row["id"]))
            await _repoint_pending(rindle, report, profile.name, name, digest)
        if not profile.variants:
            continue
        lacking = await rindle.pool.fetch(
            f"SELECT a.id, a.state FROM {schema}.assets a WHERE a.profile = $1"
            f" AND a.state IN ('ready', 'degraded', 'processing') AND (SELECT count(*) FROM"
            f" {schema}.variants v WHERE v.asset_id = a.id AND v.name = ANY($2::text[])) < $3",
            profile.name, list(profile.variants), len(profile.variants))
        for row in lacking:
            async with rindle.db.transaction() as uow:
                # locked, so processes opening at once plan each variant once
                state = await uow.conn.fetchval(
                    f"SELECT state FROM {schema}.assets WHERE id = $1 FOR UPDATE", row["id"])
                if state not in ("ready", "degraded", "processing"):
                    continue
                planned = await plan_variants(uow, rindle, row["id"], profile.name)
                if planned and state != "processing":
                    await states.transition(uow, ASSET, row["id"], state, "processing")
            report.counts["planned"] = report.counts.get("planned", 0) + planned
    return report


async def _repoint_pending(rindle: Rindle, report: Report, profile: str, name: str,
                           digest: str) -> None:
    """Renders not finished yet want the new recipe: re-point them (and re-stage one for a
    render in flight, whose old-recipe result will be dropped as stale work)."""
    schema = rindle.schema
    async with rindle.db.transaction() as uow:
        rows = await uow.conn.fetch(
            f"UPDATE {schema}.variants v SET recipe_digest = $3, updated_at = now()"
            f" FROM {schema}.assets a WHERE a.id = v.asset_id AND a.profile = $1 AND v.name = $2"
            f" AND v.state IN ('planned', 'queued', 'processing') AND v.recipe_digest <> $3"
            f" RETURNING v.id, v.asset_id, v.state", profile, name, digest)
        for row in rows:
            report.add("repointed", str(row["id"]))
            if row["state"] == "processing":
                await stage_render(uow, row["asset_id"])


async def regenerate_variants(rindle: Rindle, *, profile: str | None = None,
                              variant: str | None = None,
                              states_: tuple[str, ...] = ("stale", "missing", "failed"),
                              asset_id: str | None = None, dry_run: bool = False,
                              progress: Progress | None = None) -> Report:
    """Re-queue variants (stale, missing, failed by default) with the current recipe.

    rindle: the opened Rindle.
    profile: only this profile.
    variant: only this variant name.
    states_: only variants in these states (any of stale, missing, failed, cancelled).
    asset_id: only this asset (``requeue``).
    dry_run: report without changing anything.
    progress: called with (done, total).
    """
    allowed = {"stale", "missing", "failed", "cancelled"}
    bad = set(states_) - allowed
    if bad:
        raise ValidationError(f"cannot regenerate variants in states {sorted(bad)}; "
                              f"choose from {', '.join(sorted(allowed))}")
    schema, report = rindle.schema, Report("regenerate_variants", dry_run)
    rows = await rindle.pool.fetch(
        f"SELECT v.id, v.name, v.state, v.asset_id, a.profile, a.state AS asset_state"
        f" FROM {schema}.variants v JOIN {schema}.assets a ON a.id = v.asset_id"
        f" WHERE v.state = ANY($1::text[]) AND a.state IN ('ready', 'degraded', 'processing')"
        f" AND ($2::text IS NULL OR a.profile = $2) AND ($3::text IS NULL OR v.name = $3)"
        f" AND ($4::uuid IS NULL OR a.id = $4) ORDER BY v.asset_id, v.name",
        list(states_), profile, variant, uuid.UUID(asset_id) if asset_id else None)
    done = 0
    for _, grouped in itertools.groupby(rows, key=lambda r: r["asset_id"]):
        group, wanted = list(grouped), []
        for row in group:
            config = rindle.profiles.get(row["profile"])
            if config is None or row["name"] not in config.variants:
                report.add("skipped_not_in_profile", str(row["id"]))
            else:
                report.add("requeued", str(row["id"]))
                wanted.append((row, config.recipe_digests()[row["name"]]))
        if wanted and not dry_run:
            async with rindle.db.transaction() as uow:  # one render job for the asset's variants
                for row, digest in wanted:
                    await requeue_variant(uow, row, digest)
        done += len(group)
        if progress:
            progress(done, len(rows))
    return await _emit(rindle, report)


async def requeue_variant(uow: UnitOfWork, row: Any, digest: str) -> None:
    """Point a variant at ``digest`` and queue its render; the asset goes back to processing."""
    changes: dict[str, Any] = {"recipe_digest": digest}
    if row["state"] == "missing":
        changes["storage_key"] = None  # its object is gone: nothing to serve meanwhile
    await queue_render(uow, row["id"], row["asset_id"], row["name"], row["state"], **changes)
    # read under lock: an earlier variant of the same asset may have moved it already
    asset_state = await uow.conn.fetchval(
        f"SELECT state FROM {uow.ledger.schema}.assets WHERE id = $1 FOR UPDATE", row["asset_id"])
    if asset_state in ("ready", "degraded"):
        await states.transition(uow, ASSET, row["asset_id"], asset_state, "processing")


# -- storage verification ---------------------------------------------------------------


async def verify_storage(rindle: Rindle, *, dry_run: bool = False,
                         progress: Progress | None = None) -> Report:
    """HEAD every ready variant and every promoted original; mark missing variants ``missing``.

    rindle: the opened Rindle.
    dry_run: report without changing anything.
    progress: called with (done, total).
    """
    schema, report = rindle.schema, Report("verify_storage", dry_run)
    variants = await rindle.pool.fetch(
        f"SELECT v.id, v.storage_key, a.storage FROM {schema}.variants v JOIN {schema}.assets a"
        f" ON a.id = v.asset_id WHERE v.state IN ('ready', 'stale') AND v.storage_key IS NOT NULL"
        f" ORDER BY v.id")
    originals = await rindle.pool.fetch(
        f"SELECT id, storage, storage_key FROM {schema}.assets"
        f" WHERE state IN ('available', 'processing', 'ready', 'degraded') ORDER BY id")
    total = len(variants) + len(originals)
    for done, row in enumerate(variants, 1):
        report.counts["checked"] = report.counts.get("checked", 0) + 1
        if await rindle.storages[row["storage"]].head(row["storage_key"]) is None:
            if not dry_run:
                async with rindle.db.transaction() as uow:
                    current = await uow.conn.fetchrow(
                        f"SELECT state, storage_key FROM {schema}.variants WHERE id = $1 FOR UPDATE",
                        row["id"])
                    still = (current is not None and current["storage_key"] == row["storage_key"]
                             and VARIANT.allows(current["state"], "missing"))
                    if still:
                        await states.transition(uow, VARIANT, row["id"], current["state"], "missing",
                                                reason="verify-storage: the object is gone")
                if not still:  # re-rendered or purged since the run read it
                    report.add("skipped_changed", str(row["id"]))
                    continue
            report.add("variants_missing", str(row["id"]))
        if progress:
            progress(done, total)
    for done, row in enumerate(originals, len(variants) + 1):
        report.counts["checked"] = report.counts.get("checked", 0) + 1
        if await rindle.storages[row["storage"]].head(row["storage_key"]) is None:
            report.add("originals_missing", str(row["id"]))
        if progress:
            progress(done, total)
    return await _emit(rindle, report)


# -- status -----------------------------------------------------------------------------


async def status(rindle: Rindle, *, stuck_after: timedelta = timedelta(hours=1)) -> dict[str, Any]:
    """Counts by state, work stuck longer than ``stuck_after``, and the ledger.

    rindle: the opened Rindle.
    stuck_after: how long a transient state may last before it counts as stuck.
    """
    schema = rindle.schema

    async def by_state(table: str) -> dict[str, int]:
        return {r["state"]: r["n"] for r in await rindle.pool.fetch(
            f"SELECT state, count(*) AS n FROM {schema}.{table} GROUP BY state ORDER BY state")}

    cutoff = _now() - stuck_after
    stuck = {
        "assets": await rindle.pool.fetchval(
            f"SELECT count(*) FROM {schema}.assets WHERE state IN"
            f" ('validating', 'analyzing', 'promoting', 'processing') AND state_changed_at < $1", cutoff),
        "variants": await rindle.pool.fetchval(
            f"SELECT count(*) FROM {schema}.variants WHERE state IN ('planned', 'queued', 'processing')"
            f" AND state_changed_at < $1", cutoff),
        "upload_sessions": await rindle.pool.fetchval(
            f"SELECT count(*) FROM {schema}.upload_sessions WHERE state = 'verifying'"
            f" AND state_changed_at < $1", cutoff),
    }
    ledger = await rindle.ledger_summary()
    return {
        "assets": await by_state("assets"),
        "variants": await by_state("variants"),
        "upload_sessions": await by_state("upload_sessions"),
        "stuck": stuck,
        "stuck_after_seconds": int(stuck_after.total_seconds()),
        "ledger": {"pending": ledger.pending, "enqueued": ledger.enqueued,
                   "discarded": ledger.discarded,
                   "oldest_pending_seconds": ledger.oldest_pending_age,
                   "oldest_enqueued_seconds": ledger.oldest_enqueued_age},
    }


async def requeue_asset(rindle: Rindle, asset_id: str, *, dry_run: bool = False) -> Report:
    """Re-run what one asset is missing: its promotion, or its unfinished variants.

    rindle: the opened Rindle.
    asset_id: the asset.
    dry_run: report without changing anything.
    """
    key = asset_uuid(asset_id)
    state = await rindle.pool.fetchval(f"SELECT state FROM {rindle.schema}.assets WHERE id = $1", key)
    if state is None:
        raise NotFound(f"asset {asset_id} does not exist")
    if state in ("validating", "analyzing"):
        report = Report("requeue", dry_run)
        report.add("promotions", str(key))
        if not dry_run:
            async with rindle.db.transaction() as uow:
                await uow.stage("promote_asset", {"asset_id": str(key)}, dedupe_key=f"promote:{key}")
        return await _emit(rindle, report)
    if state not in ("processing", "ready", "degraded"):
        raise ValidationError(f"asset {asset_id} is {state}; only assets being promoted or with "
                              "variants can be requeued")
    report = await regenerate_variants(rindle, asset_id=str(key), dry_run=dry_run,
                                       states_=("stale", "missing", "failed", "cancelled"))
    report.worker = "requeue"
    return report


# -- doctor -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One line of ``doctor``: what was checked, whether it is fine, and why."""

    name: str
    ok: bool
    detail: str


async def doctor(rindle: Rindle) -> list[Check]:
    """Check everything rindle_async depends on; each failure says what to do.

    rindle: the opened Rindle.
    """
    from .profiles import _libvips_can_save, _libvips_version
    from .worker import HEARTBEAT_KEY

    checks = []
    try:
        version = await rindle.pool.fetchval("SHOW server_version")
        checks.append(Check("database", True, f"PostgreSQL {version}"))
        async with rindle.pool.acquire() as conn:
            pending = await migrate.pending(conn, rindle.schema)
        checks.append(Check("migrations", not pending,
                            f"schema {rindle.schema} is up to date" if not pending else
                            f"migrations {pending} are not applied; run `rindle-async migrate`"))
    except Exception as exc:
        checks.append(Check("database", False, f"{type(exc).__name__}: {exc}"))
    try:
        await rindle.arq.ping()
        try:
            policy = (await rindle.arq.config_get("maxmemory-policy")).get("maxmemory-policy")
            checks.append(Check("redis", policy == "noeviction",
                                "reachable, maxmemory-policy noeviction" if policy == "noeviction" else
                                f"maxmemory-policy is {policy}: Redis may evict queued jobs; "
                                "set maxmemory-policy noeviction"))
        except Exception as exc:  # CONFIG disabled on some managed Redis
            checks.append(Check("redis", True, f"reachable; cannot read maxmemory-policy ({exc})"))
        queues = sorted({rindle.ledger.queue_for(kind) for kind in rindle.ledger.kinds})
        missing = [q for q in queues if not await rindle.arq.exists(HEARTBEAT_KEY.format(queue=q))]
        checks.append(Check("workers", not missing,
                            f"heartbeat seen on {', '.join(queues)}" if not missing else
                            f"no worker heartbeat in the last 3 minutes on {', '.join(missing)}; "
                            "is `arq rindle_async.WorkerSettings` running?"))
    except Exception as exc:
        checks.append(Check("redis", False, f"{type(exc).__name__}: {exc}"))
    for name, storage in sorted(rindle.storages.items()):
        try:
            async for _ in storage.list("", page_size=1):
                break
            checks.append(Check(f"storage {name}", True, f"{storage.adapter} reachable"))
        except Exception as exc:
            checks.append(Check(f"storage {name}", False, f"{type(exc).__name__}: {exc}"))
    formats = sorted({v.format for p in rindle.profiles.values() for v in p.variants.values()})
    cannot = [f for f in formats if not _libvips_can_save(f)]
    checks.append(Check("libvips", not cannot,
                        f"{_libvips_version()} saves {', '.join(formats) or 'no formats needed'}"
                        if not cannot else f"{_libvips_version()} cannot save {', '.join(cannot)}"))
    try:
        summary = await rindle.ledger_summary()
        checks.append(Check("ledger", True, f"pending={summary.pending} enqueued={summary.enqueued} "
                                            f"discarded={summary.discarded}"))
    except Exception as exc:
        checks.append(Check("ledger", False, f"{type(exc).__name__}: {exc}"))
    return checks
