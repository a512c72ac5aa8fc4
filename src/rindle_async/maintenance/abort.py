"""Abort: expire every open upload session past its deadline, tombstone its staged asset
and abort its multipart upload."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from ..db import sessions
from ..db.sessions import ExpiredSession
from ..errors import StorageError, Unsupported
from ..lifecycle import transitions
from ..lifecycle.machines import UPLOAD_SESSION
from ..lifecycle.tombstone import tombstone
from .paging import BATCH, FIRST_DEADLINE, FIRST_ID, keyset_pages
from .report import Progress, Report, emit, now_utc

if TYPE_CHECKING:
    from ..ledger.runner import JobRun
    from ..runtime import Runtime

EXPIRED = "its upload session expired before verification"
log = logging.getLogger("rindle_async.maintenance.abort")


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
    clock = now or now_utc()
    total = await sessions.count_expired(rt.pool, rt.schema, clock) if progress else 0
    done = 0
    async for rows in keyset_pages(lambda after: sessions.expired_page(rt.pool, rt.schema, clock, after, batch),
                                   lambda row: (row.expires_at, row.id), (FIRST_DEADLINE, FIRST_ID), batch):
        expired = ({row.id: row.asset_state == "staged" for row in rows} if dry_run
                   else await _expire(rt, rows))
        for row in rows:
            await _report_session(rt, report, row, expired)
        done += len(rows)
        if progress:
            progress(done, max(done, total))
    if progress and done < total:  # sessions that closed meanwhile: the bar ends where we are
        progress(done, done)
    return await emit(rt, report)


async def _report_session(rt: Runtime, report: Report, row: ExpiredSession,
                          expired: dict[uuid.UUID, bool]) -> None:
    """Count one session of a page, and abort its multipart upload once it is expired."""
    if row.id not in expired:  # the session moved on since it was read (e.g. verified)
        report.add("skipped_changed", str(row.id))
        return
    aborted = True
    if row.multipart_upload_id and not report.dry_run:
        try:
            await rt.storages[row.storage].abort_multipart(row.storage_key, row.multipart_upload_id)
        except (StorageError, Unsupported) as exc:  # the session is expired: the purge and cleanup retry
            log.warning("upload session %s expired, but its multipart upload %s was not aborted: %s",
                        row.id, row.multipart_upload_id, exc)
            aborted = False
    report.add("sessions_expired", str(row.id))
    if expired[row.id]:
        report.add("assets_tombstoned", str(row.asset_id))
    if row.multipart_upload_id:
        report.add("multipart_aborted" if aborted else "multipart_abort_failed", row.multipart_upload_id)


async def _expire(rt: Runtime, rows: list[ExpiredSession]) -> dict[uuid.UUID, bool]:
    """Expire a page of sessions and tombstone their staged assets in one transaction; return,
    for each session still open, whether its asset was tombstoned."""
    seen: dict[str, list[uuid.UUID]] = {}
    for row in rows:
        seen.setdefault(row.state, []).append(row.id)
    async with rt.db.transaction() as uow:
        expired = {}
        for state, session_ids in sorted(seen.items()):
            # sessions verified, aborted or purged since the page was read do not move
            for moved in await transitions.transition_many(uow, UPLOAD_SESSION, session_ids, state,
                                                           "expired", reason="the upload deadline passed"):
                expired[moved["id"]] = moved["asset_id"]
        tombstoned = await tombstone(uow, dict.fromkeys(expired.values(), EXPIRED), only_from={"staged"})
    return {session_id: asset_id in tombstoned for session_id, asset_id in expired.items()}


async def abort_incomplete_uploads_job(job: JobRun) -> None:
    """Ledger job: abort incomplete uploads (live unless ``dry_run`` is in the args)."""
    await abort_incomplete_uploads(job.runtime, dry_run=job.args.dry_run, keep_items=False)
