"""Cleanup: remove what nothing holds.  One pass over the assets in id order (assets of
failed, aborted or expired sessions, unattached assets older than the grace period,
tombstones whose purge is not pending), then stray objects no row refers to, then
abandoned multipart uploads.  A dry run reports exactly what a live run would do."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..db import assets, sessions
from ..db.assets import CleanupCandidate
from ..ledger.stage import stage_purge
from ..lifecycle.tombstone import tombstone
from ..storage import keys
from .paging import BATCH, FIRST_ID, in_pages, keyset_pages
from .report import Progress, Report, emit, now_utc

if TYPE_CHECKING:
    from ..ledger.runner import JobRun
    from ..runtime import Runtime


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
    clock = now or now_utc()
    cutoff = clock - grace
    report = Report("cleanup_orphans", dry_run, keep_items=keep_items)
    reasons = {"session": "cleanup: its upload failed",
               "unattached": f"cleanup: unattached for longer than {grace}"}
    checked = 0
    async for page in keyset_pages(lambda after: assets.cleanup_page(rt.pool, rt.schema, after, cutoff, clock,
                                                                     batch),
                                   lambda row: row.id, FIRST_ID, batch):
        await _clean_page(rt, report, page, reasons)
        checked += len(page)
        if progress:
            progress(checked, 0)
    await _stray_objects(rt, report, cutoff, batch, progress, checked)
    await _abandoned_multipart(rt, report, cutoff, batch)
    return await emit(rt, report)


async def _clean_page(rt: Runtime, report: Report, page: list[CleanupCandidate],
                      reasons: dict[str, str]) -> None:
    """Tombstone a page's doomed assets and re-stage its tombstones' purges, in one transaction."""
    doomed = {row.id: reasons[row.why] for row in page if row.why in reasons}
    unpurged = [row.id for row in page if row.why == "unpurged"]
    tombstoned = set(doomed)
    if not report.dry_run and (doomed or unpurged):
        async with rt.db.transaction() as uow:
            tombstoned = await tombstone(uow, doomed)
            for asset_id in unpurged:
                await stage_purge(uow, asset_id)
    for row in page:
        if row.why == "unpurged":
            report.add("purges_restaged", str(row.id))
        elif row.id in doomed and row.id not in tombstoned:  # attached (or gone) meanwhile
            report.add("skipped_changed", str(row.id))
        elif row.id in doomed:
            report.add(f"{row.why}_assets", str(row.id))


async def _stray_objects(rt: Runtime, report: Report, cutoff: datetime, batch: int,
                         progress: Progress | None, checked: int) -> None:
    """Objects under a profile's prefix that no asset or variant row refers to (``checked``:
    what the progress count starts from)."""
    for profile in rt.profiles.values():
        storage = rt.storages[profile.storage]
        async for page in in_pages(storage.list(f"{profile.name}/"), batch):
            # Young ones are left: an upload or a render may be about to refer to them.  Not
            # at a direct upload's key: its rows commit before its URL exists, so an object
            # there that no row refers to is a ticket replayed after promotion or purge.
            old = [(info.key, keys.asset_id_of(info.key)) for info in page
                   if info.last_modified is None or info.last_modified < cutoff
                   or (keys.is_upload_key(info.key) and keys.asset_id_of(info.key) is not None)]
            for key in await assets.unreferenced_keys(rt.pool, rt.schema, profile.storage, old):
                report.add("stray_objects", f"{profile.storage}:{key}")
                if not report.dry_run:
                    await storage.delete(key)
            checked += len(page)
            if progress:
                progress(checked, 0)


async def _abandoned_multipart(rt: Runtime, report: Report, cutoff: datetime, batch: int) -> None:
    """Multipart uploads older than ``cutoff`` that no open session owns."""
    for name in sorted({p.storage for p in rt.profiles.values()}):
        storage = rt.storages[name]
        if not storage.capabilities.multipart:
            continue
        for profile in (p for p in rt.profiles.values() if p.storage == name):
            async for page in in_pages(storage.list_multipart(f"{profile.name}/"), batch):
                old = [u for u in page if u.initiated is None or u.initiated < cutoff]
                owned = await sessions.open_multipart_ids(rt.pool, rt.schema, [u.upload_id for u in old])
                for upload in old:
                    if upload.upload_id in owned:
                        continue
                    report.add("multipart_aborted", f"{name}:{upload.key}:{upload.upload_id}")
                    if not report.dry_run:
                        await storage.abort_multipart(upload.key, upload.upload_id)


async def cleanup_orphans_job(job: JobRun) -> None:
    """Ledger job: cleanup (live unless ``dry_run`` is true in the args)."""
    await cleanup_orphans(job.runtime, dry_run=job.args.dry_run, keep_items=False)
