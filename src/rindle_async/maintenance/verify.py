"""Storage verification: HEAD every stored variant and every promoted original; mark the
variants whose object is gone ``missing`` (a re-render brings them back)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..db import assets, variants
from ..db.variants import StoredVariant
from ..lifecycle import transitions
from ..lifecycle.machines import VARIANT
from .report import Progress, Report, emit

if TYPE_CHECKING:
    from ..runtime import Runtime


async def verify_storage(rt: Runtime, *, dry_run: bool = False,
                         progress: Progress | None = None) -> Report:
    """HEAD every ready variant and every promoted original; mark missing variants ``missing``.

    rt: the runtime of the opened Rindle.
    dry_run: report without changing anything.
    progress: called with (done, total).
    """
    report = Report("verify_storage", dry_run)
    stored = await variants.stored(rt.pool, rt.schema)
    originals = await assets.live_originals(rt.pool, rt.schema)
    total = len(stored) + len(originals)
    for done, variant in enumerate(stored, 1):
        report.count("checked")
        if await rt.storages[variant.storage].head(variant.storage_key) is None:
            await _missing(rt, report, variant)
        if progress:
            progress(done, total)
    for done, original in enumerate(originals, len(stored) + 1):
        report.count("checked")
        if await rt.storages[original.storage].head(original.storage_key) is None:
            report.add("originals_missing", str(original.id))
        if progress:
            progress(done, total)
    return await emit(rt, report)


async def _missing(rt: Runtime, report: Report, variant: StoredVariant) -> None:
    """Mark a variant whose object is gone ``missing``, unless it changed since it was read."""
    if not report.dry_run:
        async with rt.db.transaction() as uow:
            current = await variants.lock_key_state(uow.conn, rt.schema, variant.id)
            still = (current is not None and current[1] == variant.storage_key
                     and VARIANT.allows(current[0], "missing"))
            if still and current is not None:
                await transitions.transition(uow, VARIANT, variant.id, current[0], "missing",
                                             reason="verify-storage: the object is gone")
        if not still:  # re-rendered or purged since the run read it
            report.add("skipped_changed", str(variant.id))
            return
    report.add("variants_missing", str(variant.id))
