"""Day-2 work: abort, cleanup, stale detection, regeneration, storage checks, status.

Each verb is one service function that the CLI, the cron jobs and hosts call.
Destructive verbs take ``dry_run``: a dry run computes exactly the same plan as
a live run and changes nothing.  Every run emits ``CleanupRun`` with its counts.
Storage I/O happens between transactions, never inside one.  Abort and cleanup
read their rows in keyset pages of ``batch`` rows and act on each page in one
transaction, so their memory does not grow with the tables.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from . import security
from .assets import asset_uuid
from .db import assets, migrate
from .errors import InvalidTransition, NotFound, ValidationError
from .events import CleanupRun
from .ledger.kinds import PURGE
from .ledger.stage import stage_promote, stage_purge, stage_render
from .lifecycle import transitions
from .lifecycle.machines import ASSET, JOB, UPLOAD_SESSION, VARIANT
from .lifecycle.tombstone import tombstone
from .promotion import plan_variants, queue_render

if TYPE_CHECKING:
    from .db.transaction import UnitOfWork
    from .ledger.runner import JobRun
    from .runtime import Runtime

log = logging.getLogger("rindle_async.maintenance")
Progress = Callable[[int, int], None]
T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Report:
    """What a maintenance run did (or, dry, would do): counts and, kept unless asked not to,
    the affected ids (``items`` grows with the rows; ``counts`` does not)."""

    worker: str
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)
    items: dict[str, list[str]] = field(default_factory=dict)
    keep_items: bool = True

    def add(self, what: str, item: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        if self.keep_items:
            self.items.setdefault(what, []).append(item)

    def summary(self) -> str:
        mode = "dry run" if self.dry_run else "live"
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "nothing to do"
        return f"{self.worker} ({mode}): {parts}"


async def _emit(rt: Runtime, report: Report) -> Report:
    await rt.events.deliver([CleanupRun(worker=report.worker, dry_run=report.dry_run,
                                         counts=dict(report.counts))])
    return report


#: Rows per page read and per transaction of abort and cleanup: bounds their memory and how
#: long they hold row locks, whatever the size of the tables.
BATCH = 200
_FIRST_ID = uuid.UUID(int=0)  # below every uuid4, where keyset pages start
_FIRST_DEADLINE = datetime.min.replace(tzinfo=timezone.utc)


# literals, not parameters: the planner matches a partial index's predicate only then
_OPEN = UPLOAD_SESSION.literal("open")
_CLOSED_BADLY = UPLOAD_SESSION.literal("closed_badly")


async def _keyset_pages(read: Callable[[Any], Awaitable[list[Any]]], key: Callable[[Any], Any],
                        start: Any, size: int) -> AsyncIterator[list[Any]]:
    """Pages ``read(after)`` of up to ``size`` rows, each after the ``key`` of the last row
    before it, until a short page."""
    if not isinstance(size, int) or size < 1:
        raise ValidationError(f"batch={size!r} must be a positive int (rows per page)")
    after = start
    while True:
        page = await read(after)
        if page:
            yield page
        if len(page) < size:
            return
        after = key(page[-1])


async def _in_pages(items: AsyncIterator[T], size: int) -> AsyncIterator[list[T]]:
    """A stream in lists of ``size`` (the last may be shorter): one query per list."""
    page: list[T] = []
    async for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


# -- abort ------------------------------------------------------------------------------


async def abort_incomplete_uploads(rt: Runtime, *, dry_run: bool = False,
                                   now: datetime | None = None, progress: Progress | None = None,
                                   batch: int = BATCH, keep_items: bool = True) -> Report:
    """Expire every open session past its deadline; tombstone its staged asset; abort multipart.

    rt: the runtime of the opened Rindle.
    dry_run: report without changing anything.
    now: the clock (tests).
    progress: called with (done, total) after each page of sessions.
    batch: sessions per page and per transaction.
    keep_items: list every affected id in ``report.items`` (memory grows with them).
    """
    report = Report("abort_incomplete_uploads", dry_run, keep_items=keep_items)
    now = now or _now()
    total = await _count_expired_sessions(rt, now) if progress else 0
    done = 0
    async for rows in _keyset_pages(lambda after: _expired_sessions(rt, now, after, batch),
                                    lambda row: (row["expires_at"], row["id"]),
                                    (_FIRST_DEADLINE, _FIRST_ID), batch):
        expired = ({row["id"]: row["asset_state"] == "staged" for row in rows} if dry_run
                   else await _expire(rt, rows))
        for row in rows:
            if row["id"] not in expired:  # the session moved on since it was read (e.g. verified)
                report.add("skipped_changed", str(row["id"]))
                continue
            if row["multipart_upload_id"] and not dry_run:
                await rt.storages[row["storage"]].abort_multipart(
                    row["storage_key"], row["multipart_upload_id"])
            report.add("sessions_expired", str(row["id"]))
            if expired[row["id"]]:
                report.add("assets_tombstoned", str(row["asset_id"]))
            if row["multipart_upload_id"]:
                report.add("multipart_aborted", row["multipart_upload_id"])
        done += len(rows)
        if progress:
            progress(done, max(done, total))
    if progress and done < total:  # sessions that closed meanwhile: the bar ends where we are
        progress(done, done)
    return await _emit(rt, report)


async def _expired_sessions(rt: Runtime, now: datetime, after: tuple[datetime, uuid.UUID],
                            limit: int) -> list[Any]:
    """The next page of open sessions past their deadline, in (deadline, id) order."""
    schema = rt.schema
    return await rt.pool.fetch(
        f"SELECT s.id, s.state, s.expires_at, s.asset_id, s.storage_key, s.multipart_upload_id,"
        f" a.storage, a.state AS asset_state FROM {schema}.upload_sessions s"
        f" JOIN {schema}.assets a ON a.id = s.asset_id"
        f" WHERE s.state IN {_OPEN} AND s.expires_at < $1 AND (s.expires_at, s.id) > ($2, $3)"
        f" ORDER BY s.expires_at, s.id LIMIT $4", now, *after, limit)


async def _count_expired_sessions(rt: Runtime, now: datetime) -> int:
    return int(await rt.pool.fetchval(
        f"SELECT count(*) FROM {rt.schema}.upload_sessions"
        f" WHERE state IN {_OPEN} AND expires_at < $1", now))


async def _expire(rt: Runtime, rows: list[Any]) -> dict[uuid.UUID, bool]:
    """Expire a page of sessions and tombstone their staged assets in one transaction; return,
    for each session still open, whether its asset was tombstoned."""
    seen: dict[str, list[uuid.UUID]] = {}
    for row in rows:
        seen.setdefault(row["state"], []).append(row["id"])
    async with rt.db.transaction() as uow:
        expired = {}
        for state, session_ids in sorted(seen.items()):
            # sessions verified, aborted or purged since the page was read do not move
            for row in await transitions.transition_many(uow, UPLOAD_SESSION, session_ids, state,
                                                    "expired", reason="the upload deadline passed"):
                expired[row["id"]] = row["asset_id"]
        tombstoned = await tombstone(
            uow, {asset_id: "its upload session expired before verification"
                  for asset_id in expired.values()}, only_from={"staged"})
    return {session_id: asset_id in tombstoned for session_id, asset_id in expired.items()}


async def abort_incomplete_uploads_job(job: JobRun) -> None:
    """Ledger job: abort incomplete uploads (live unless ``dry_run`` is in the args)."""
    await abort_incomplete_uploads(job.runtime, dry_run=job.args.dry_run,
                                   keep_items=False)


# -- cleanup ----------------------------------------------------------------------------


async def cleanup_orphans(rt: Runtime, *, dry_run: bool = True,
                          grace: timedelta = timedelta(hours=24), now: datetime | None = None,
                          progress: Progress | None = None, batch: int = BATCH,
                          keep_items: bool = True) -> Report:
    """Remove what nothing holds; a dry run reports exactly what a live run would do.

    rt: the runtime of the opened Rindle.
    dry_run: report without changing anything (the default).
    grace: how old unattached assets, stray objects and multipart uploads must be.
    now: the clock (tests).
    progress: called with (rows and objects checked so far, 0) after each page.
    batch: assets, objects or uploads per page (and assets per transaction).
    keep_items: list every affected id in ``report.items`` (memory grows with them).
    Steps: one pass over the assets in id order for assets of failed, aborted or
    expired sessions, unattached assets older than ``grace``, and tombstoned assets
    whose purge is not pending (re-staged); then stray objects no row refers to (at a
    direct upload's key whatever their age: what a replayed upload URL wrote); then
    abandoned multipart uploads.
    """
    now = now or _now()
    cutoff = now - grace
    report = Report("cleanup_orphans", dry_run, keep_items=keep_items)
    reasons = {"session": "cleanup: its upload failed",
               "unattached": f"cleanup: unattached for longer than {grace}"}
    checked = 0
    async for page in _keyset_pages(lambda after: _asset_page(rt, after, cutoff, now, batch),
                                    lambda row: row["id"], _FIRST_ID, batch):
        doomed = {row["id"]: reasons[row["why"]] for row in page if row["why"] in reasons}
        unpurged = [row["id"] for row in page if row["why"] == "unpurged"]
        tombstoned = set(doomed)
        if not dry_run and (doomed or unpurged):
            async with rt.db.transaction() as uow:
                tombstoned = await tombstone(uow, doomed)
                for asset_id in unpurged:
                    await stage_purge(uow, asset_id)
        for row in page:
            if row["why"] == "unpurged":
                report.add("purges_restaged", str(row["id"]))
            elif row["id"] in doomed and row["id"] not in tombstoned:  # attached (or gone) meanwhile
                report.add("skipped_changed", str(row["id"]))
            elif row["id"] in doomed:
                report.add(f"{row['why']}_assets", str(row["id"]))
        checked += len(page)
        if progress:
            progress(checked, 0)
    await _stray_objects(rt, report, cutoff, batch, progress, checked)
    await _abandoned_multipart(rt, report, cutoff, batch)
    return await _emit(rt, report)


async def _asset_page(rt: Runtime, after: uuid.UUID, cutoff: datetime, now: datetime,
                      limit: int) -> list[Any]:
    """The next page of assets in id order, each with ``why`` cleanup wants it: ``session``
    (its upload failed), ``unattached`` (held by nothing since before ``cutoff``),
    ``unpurged`` (a tombstone without a purge on its way) or NULL (it does not)."""
    schema = rt.schema
    # Subqueries the planner can only answer with one index probe per asset: an EXISTS may
    # become a hashed scan of a whole table for every page, and a state filter may steer a
    # probe to a partial index on state that holds no asset_id.
    return await rt.pool.fetch(
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


async def _stray_objects(rt: Runtime, report: Report, cutoff: datetime, batch: int,
                         progress: Progress | None, checked: int) -> None:
    """Objects under a profile's prefix that no asset or variant row refers to (``checked``:
    what the progress count starts from)."""
    for profile in rt.profiles.values():
        storage = rt.storages[profile.storage]
        async for page in _in_pages(storage.list(f"{profile.name}/"), batch):
            # Young ones are left: an upload or a render may be about to refer to them.  Not
            # at a direct upload's key: its rows commit before its URL exists, so an object
            # there that no row refers to is a ticket replayed after promotion or purge.
            old = [info.key for info in page
                   if info.last_modified is None or info.last_modified < cutoff
                   or (security.is_upload_key(info.key) and _asset_of(info.key) is not None)]
            for key in await _unreferenced(rt, profile.storage, old):
                report.add("stray_objects", f"{profile.storage}:{key}")
                if not report.dry_run:
                    await storage.delete(key)
            checked += len(page)
            if progress:
                progress(checked, 0)


async def _unreferenced(rt: Runtime, storage: str, keys: list[str]) -> list[str]:
    """Those of ``keys`` (in order) that no row refers to and no pending purge will delete.
    A staged asset's resumable-upload scratch objects are its session's: its deadline decides."""
    if not keys:
        return []
    schema = rt.schema
    rows = await rt.pool.fetch(
        f"SELECT o.key FROM unnest($1::text[], $2::uuid[], $4::bool[]) WITH ORDINALITY"
        f" AS o(key, asset_id, scratch, n)"
        f" LEFT JOIN {schema}.assets a ON a.id = o.asset_id AND a.storage = $3"
        f" WHERE a.id IS NULL OR (a.state <> 'deleted' AND a.storage_key <> o.key"
        f"   AND NOT (o.scratch AND a.state = 'staged') AND (SELECT true"
        f"   FROM {schema}.variants v WHERE v.asset_id = a.id AND v.storage_key = o.key LIMIT 1)"
        f"   IS NULL)"
        f" ORDER BY o.n", keys, [_asset_of(key) for key in keys], storage,
        [security.is_resumable_scratch(key) for key in keys])
    return [row["key"] for row in rows]


def _asset_of(key: str) -> uuid.UUID | None:
    """The asset id in a key laid out as ``profile/xx/<asset id>/...``."""
    parts = key.split("/")
    try:
        return uuid.UUID(parts[2]) if len(parts) > 3 else None
    except ValueError:
        return None


async def _abandoned_multipart(rt: Runtime, report: Report, cutoff: datetime,
                               batch: int) -> None:
    """Multipart uploads older than ``cutoff`` that no open session owns."""
    for name in sorted({p.storage for p in rt.profiles.values()}):
        storage = rt.storages[name]
        if not storage.capabilities.multipart:
            continue
        for profile in (p for p in rt.profiles.values() if p.storage == name):
            async for page in _in_pages(storage.list_multipart(f"{profile.name}/"), batch):
                old = [u for u in page if u.initiated is None or u.initiated < cutoff]
                owned = {r["multipart_upload_id"] for r in await rt.pool.fetch(
                    f"SELECT multipart_upload_id FROM {rt.schema}.upload_sessions"
                    f" WHERE multipart_upload_id = ANY($1::text[]) AND state IN {_OPEN}",
                    [u.upload_id for u in old])} if old else set()
                for upload in old:
                    if upload.upload_id in owned:
                        continue
                    report.add("multipart_aborted", f"{name}:{upload.key}:{upload.upload_id}")
                    if not report.dry_run:
                        await storage.abort_multipart(upload.key, upload.upload_id)


async def cleanup_orphans_job(job: JobRun) -> None:
    """Ledger job: cleanup (live unless ``dry_run`` is true in the args)."""
    await cleanup_orphans(job.runtime, dry_run=job.args.dry_run,
                          keep_items=False)


# -- stale detection and regeneration ---------------------------------------------------


async def reconcile_profiles(rt: Runtime) -> Report:
    """Mark ready variants whose recipe changed as stale; plan variants a profile gained.

    rt: the runtime of the opened Rindle.
    """
    schema, report = rt.schema, Report("reconcile_profiles", False)
    for profile in rt.profiles.values():
        for name, digest in profile.recipe_digests().items():
            rows = await rt.pool.fetch(
                f"SELECT v.id FROM {schema}.variants v JOIN {schema}.assets a ON a.id = v.asset_id"
                f" WHERE a.profile = $1 AND v.name = $2 AND v.state = 'ready'"
                f" AND v.recipe_digest <> $3", profile.name, name, digest)
            for row in rows:
                try:
                    async with rt.db.transaction() as uow:
                        await transitions.transition(uow, VARIANT, row["id"], "ready", "stale",
                                                reason="the profile's recipe changed")
                except InvalidTransition:
                    continue  # another process (opening at the same deploy) got there first
                report.add("stale", str(row["id"]))
            await _repoint_pending(rt, report, profile.name, name, digest)
        if not profile.variants:
            continue
        lacking = await rt.pool.fetch(
            f"SELECT a.id, a.state FROM {schema}.assets a WHERE a.profile = $1"
            f" AND a.state = ANY($4::text[]) AND (SELECT count(*) FROM"
            f" {schema}.variants v WHERE v.asset_id = a.id AND v.name = ANY($2::text[])) < $3",
            profile.name, list(profile.variants), len(profile.variants), ASSET.array("rendered"))
        for row in lacking:
            async with rt.db.transaction() as uow:
                # locked, so processes opening at once plan each variant once
                state = await assets.lock_state(uow.conn, schema, row["id"])
                if state not in ASSET.group("rendered"):
                    continue
                planned = await plan_variants(uow, rt, row["id"], profile.name)
                if planned and state != "processing":
                    await transitions.transition(uow, ASSET, row["id"], state, "processing")
            report.counts["planned"] = report.counts.get("planned", 0) + planned
    return report


async def _repoint_pending(rt: Runtime, report: Report, profile: str, name: str,
                           digest: str) -> None:
    """Renders not finished yet want the new recipe: re-point them (and re-stage one for a
    render in flight, whose old-recipe result will be dropped as stale work)."""
    schema = rt.schema
    async with rt.db.transaction() as uow:
        rows = await uow.conn.fetch(
            f"UPDATE {schema}.variants v SET recipe_digest = $3, updated_at = now()"
            f" FROM {schema}.assets a WHERE a.id = v.asset_id AND a.profile = $1 AND v.name = $2"
            f" AND v.state = ANY($4::text[]) AND v.recipe_digest <> $3"
            f" RETURNING v.id, v.asset_id, v.state", profile, name, digest, VARIANT.array("pending"))
        for row in rows:
            report.add("repointed", str(row["id"]))
            if row["state"] == "processing":
                await stage_render(uow, row["asset_id"])


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
    schema, report = rt.schema, Report("regenerate_variants", dry_run)
    rows = await rt.pool.fetch(
        f"SELECT v.id, v.name, v.state, v.asset_id, a.profile, a.state AS asset_state"
        f" FROM {schema}.variants v JOIN {schema}.assets a ON a.id = v.asset_id"
        f" WHERE v.state = ANY($1::text[]) AND a.state = ANY($5::text[])"
        f" AND ($2::text IS NULL OR a.profile = $2) AND ($3::text IS NULL OR v.name = $3)"
        f" AND ($4::uuid IS NULL OR a.id = $4) ORDER BY v.asset_id, v.name",
        list(states_), profile, variant, uuid.UUID(asset_id) if asset_id else None,
        ASSET.array("rendered"))
    done = 0
    for _, grouped in itertools.groupby(rows, key=lambda r: r["asset_id"]):
        group, wanted = list(grouped), []
        for row in group:
            config = rt.profiles.get(row["profile"])
            if config is None or row["name"] not in config.variants:
                report.add("skipped_not_in_profile", str(row["id"]))
            else:
                report.add("requeued", str(row["id"]))
                wanted.append((row, config.recipe_digests()[row["name"]]))
        if wanted and not dry_run:
            async with rt.db.transaction() as uow:  # one render job for the asset's variants
                for row, digest in wanted:
                    await requeue_variant(uow, row, digest)
        done += len(group)
        if progress:
            progress(done, len(rows))
    return await _emit(rt, report)


async def requeue_variant(uow: UnitOfWork, row: Any, digest: str) -> None:
    """Point a variant at ``digest`` and queue its render; the asset goes back to processing."""
    changes: dict[str, Any] = {"recipe_digest": digest}
    if row["state"] == "missing":
        changes["storage_key"] = None  # its object is gone: nothing to serve meanwhile
    await queue_render(uow, row["id"], row["asset_id"], row["name"], row["state"], **changes)
    # read under lock: an earlier variant of the same asset may have moved it already
    asset_state = await assets.lock_state(uow.conn, uow.schema, row["asset_id"])
    if asset_state in ASSET.group("settled"):
        await transitions.transition(uow, ASSET, row["asset_id"], asset_state, "processing")


# -- storage verification ---------------------------------------------------------------


async def verify_storage(rt: Runtime, *, dry_run: bool = False,
                         progress: Progress | None = None) -> Report:
    """HEAD every ready variant and every promoted original; mark missing variants ``missing``.

    rt: the runtime of the opened Rindle.
    dry_run: report without changing anything.
    progress: called with (done, total).
    """
    schema, report = rt.schema, Report("verify_storage", dry_run)
    variants = await rt.pool.fetch(
        f"SELECT v.id, v.storage_key, a.storage FROM {schema}.variants v JOIN {schema}.assets a"
        f" ON a.id = v.asset_id WHERE v.state = ANY($1::text[]) AND v.storage_key IS NOT NULL"
        f" ORDER BY v.id", VARIANT.array("stored"))
    originals = await rt.pool.fetch(
        f"SELECT id, storage, storage_key FROM {schema}.assets"
        f" WHERE state = ANY($1::text[]) ORDER BY id", ASSET.array("live"))
    total = len(variants) + len(originals)
    for done, row in enumerate(variants, 1):
        report.counts["checked"] = report.counts.get("checked", 0) + 1
        if await rt.storages[row["storage"]].head(row["storage_key"]) is None:
            if not dry_run:
                async with rt.db.transaction() as uow:
                    current = await uow.conn.fetchrow(
                        f"SELECT state, storage_key FROM {schema}.variants WHERE id = $1 FOR UPDATE",
                        row["id"])
                    still = (current is not None and current["storage_key"] == row["storage_key"]
                             and VARIANT.allows(current["state"], "missing"))
                    if still and current is not None:
                        await transitions.transition(uow, VARIANT, row["id"], current["state"], "missing",
                                                reason="verify-storage: the object is gone")
                if not still:  # re-rendered or purged since the run read it
                    report.add("skipped_changed", str(row["id"]))
                    continue
            report.add("variants_missing", str(row["id"]))
        if progress:
            progress(done, total)
    for done, row in enumerate(originals, len(variants) + 1):
        report.counts["checked"] = report.counts.get("checked", 0) + 1
        if await rt.storages[row["storage"]].head(row["storage_key"]) is None:
            report.add("originals_missing", str(row["id"]))
        if progress:
            progress(done, total)
    return await _emit(rt, report)


# -- status -----------------------------------------------------------------------------


async def status(rt: Runtime, *, stuck_after: timedelta = timedelta(hours=1)) -> dict[str, Any]:
    """Counts by state, work stuck longer than ``stuck_after``, and the ledger.

    rt: the runtime of the opened Rindle.
    stuck_after: how long a transient state may last before it counts as stuck.
    """
    schema = rt.schema

    async def by_state(table: str) -> dict[str, int]:
        return {r["state"]: r["n"] for r in await rt.pool.fetch(
            f"SELECT state, count(*) AS n FROM {schema}.{table} GROUP BY state ORDER BY state")}

    cutoff = _now() - stuck_after
    stuck = {
        "assets": await rt.pool.fetchval(
            f"SELECT count(*) FROM {schema}.assets WHERE state = ANY($2::text[])"
            f" AND state_changed_at < $1", cutoff, ASSET.array("transient")),
        "variants": await rt.pool.fetchval(
            f"SELECT count(*) FROM {schema}.variants WHERE state = ANY($2::text[])"
            f" AND state_changed_at < $1", cutoff, VARIANT.array("pending")),
        "upload_sessions": await rt.pool.fetchval(
            f"SELECT count(*) FROM {schema}.upload_sessions WHERE state = 'verifying'"
            f" AND state_changed_at < $1", cutoff),
    }
    ledger = await rt.ledger.summary(rt.pool)
    running = {r["worker"] or "(unknown)": r["n"] for r in await rt.pool.fetch(
        f"SELECT worker, count(*) AS n FROM {schema}.processing_runs WHERE outcome = 'running'"
        " GROUP BY worker ORDER BY worker")}
    try:
        from .liveness import live_workers

        fleets = await live_workers(rt.arq)
        workers: dict[str, Any] = {
            queue: [{"id": w.id, "host": w.host, "pid": w.pid, "processes": w.processes,
                     "running": running.get(w.id, 0)} for w in fleets.get(queue, [])]
            for queue in rt.ledger.queues}
    except Exception as exc:  # Redis away: the database's part of the picture still helps
        workers = {"error": f"{type(exc).__name__}: {exc}"}
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
        "workers": workers,
        "attempts_running": running,
    }


async def requeue_asset(rt: Runtime, asset_id: str, *, dry_run: bool = False) -> Report:
    """Re-run what one asset is missing: its promotion, or its unfinished variants.

    rt: the runtime of the opened Rindle.
    asset_id: the asset.
    dry_run: report without changing anything.
    """
    key = asset_uuid(asset_id)
    state = await rt.pool.fetchval(f"SELECT state FROM {rt.schema}.assets WHERE id = $1", key)
    if state is None:
        raise NotFound(f"asset {asset_id} does not exist")
    if state in ASSET.group("promotable"):
        report = Report("requeue", dry_run)
        report.add("promotions", str(key))
        if not dry_run:
            async with rt.db.transaction() as uow:
                await stage_promote(uow, key)
        return await _emit(rt, report)
    if state not in ASSET.group("rendered"):
        raise ValidationError(f"asset {asset_id} is {state}; only assets being promoted or with "
                              "variants can be requeued")
    report = await regenerate_variants(rt, asset_id=str(key), dry_run=dry_run,
                                       states_=tuple(VARIANT.array("regenerable")))
    report.worker = "requeue"
    return report


# -- doctor -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One line of ``doctor``: what was checked, whether it is fine, and why."""

    name: str
    ok: bool
    detail: str


async def doctor(rt: Runtime) -> list[Check]:
    """Check everything rindle_async depends on; each failure says what to do.

    rt: the runtime of the opened Rindle.
    """
    from .liveness import live_workers
    from .profiles import _libvips_can_save, _libvips_version

    checks = []
    try:
        version = await rt.pool.fetchval("SHOW server_version")
        checks.append(Check("database", True, f"PostgreSQL {version}"))
        async with rt.pool.acquire() as conn:
            pending = await migrate.pending(conn, rt.schema)
        checks.append(Check("migrations", not pending,
                            f"schema {rt.schema} is up to date" if not pending else
                            f"migrations {pending} are not applied; run `rindle-async migrate`"))
    except Exception as exc:
        checks.append(Check("database", False, f"{type(exc).__name__}: {exc}"))
    try:
        await rt.arq.ping()
        try:
            policy = (await rt.arq.config_get("maxmemory-policy")).get("maxmemory-policy")
            checks.append(Check("redis", policy == "noeviction",
                                "reachable, maxmemory-policy noeviction" if policy == "noeviction" else
                                f"maxmemory-policy is {policy}: Redis may evict queued jobs; "
                                "set maxmemory-policy noeviction"))
        except Exception as exc:  # CONFIG disabled on some managed Redis
            checks.append(Check("redis", True, f"reachable; cannot read maxmemory-policy ({exc})"))
        queues = rt.ledger.queues
        fleets = await live_workers(rt.arq)
        missing = [q for q in queues if not fleets.get(q)]
        seen = ", ".join(f"{q}: {len(fleets.get(q, []))}" for q in queues)
        checks.append(Check("workers", not missing,
                            f"workers holding a lease: {seen}" if not missing else
                            f"no live worker on {', '.join(missing)} (workers holding a lease: {seen}); "
                            "is `arq rindle_async.WorkerSettings` running"
                            + (" with RINDLE_QUEUE set for each routed queue?" if len(queues) > 1 else "?")))
    except Exception as exc:
        checks.append(Check("redis", False, f"{type(exc).__name__}: {exc}"))
    for name, storage in sorted(rt.storages.items()):
        try:
            async for _ in storage.list("", page_size=1):
                break
            checks.append(Check(f"storage {name}", True, f"{storage.adapter} reachable"))
        except Exception as exc:
            checks.append(Check(f"storage {name}", False, f"{type(exc).__name__}: {exc}"))
    formats = sorted({v.format for p in rt.profiles.values() for v in p.variants.values()})
    cannot = [f for f in formats if not _libvips_can_save(f)]
    checks.append(Check("libvips", not cannot,
                        f"{_libvips_version()} saves {', '.join(formats) or 'no formats needed'}"
                        if not cannot else f"{_libvips_version()} cannot save {', '.join(cannot)}"))
    try:
        summary = await rt.ledger.summary(rt.pool)
        checks.append(Check("ledger", True, f"pending={summary.pending} enqueued={summary.enqueued} "
                                            f"discarded={summary.discarded}"))
    except Exception as exc:
        checks.append(Check("ledger", False, f"{type(exc).__name__}: {exc}"))
    return checks
