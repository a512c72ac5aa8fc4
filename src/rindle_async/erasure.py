"""Owner erasure: everything of one host record goes, in one transaction.

``erase_owner`` detaches every slot of the record and tombstones every asset that no
other record holds, with their purges staged in that same transaction (the purge jobs
delete the objects after commit, then the rows).  Assets another record also holds stay
as they are.  A dry run reports the same plan and changes nothing.  Erasing an owner
twice is harmless (the second finds nothing), which is what makes a batch resumable: run
it again and the owners done already report nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .attachments import check_owner, lock_slot
from .db import attachments as held
from .events import OwnerErased
from .lifecycle.tombstone import tombstone
from .maintenance.report import Report

if TYPE_CHECKING:
    from .db import Connection
    from .db.attachments import AttachmentRow
    from .db.transaction import UnitOfWork
    from .runtime import Runtime

ERASED = "its owner was erased"


async def erase_owner(rt: Runtime, owner_type: str, owner_id: object, *, dry_run: bool = False,
                      conn: Connection | None = None) -> Report:
    """Detach every slot of ``(owner_type, owner_id)`` and tombstone the assets only it held.

    rt: the runtime of the opened Rindle.
    owner_type: the host record's type, e.g. ``"user"``.
    owner_id: the host record's id.
    dry_run: report the plan without changing anything.
    conn: a connection from ``rindle.transaction()`` to erase inside the host's transaction
        (e.g. with the deletion of the record itself).
    Returns a Report: ``attachments_detached`` (slots), ``assets_erased`` (tombstoned, purges
    staged) and ``assets_retained`` (held by another record too), each listing ids.  Every live
    erasure emits ``OwnerErased`` after its transaction commits, one that found nothing too
    (an audit trail shows the request was carried out).
    """
    owner = check_owner(owner_type, owner_id)
    report = Report("erase_owner", dry_run)
    async with rt.db.transaction(conn) as uow:
        rows = await held.of_owner(uow.conn, uow.schema, owner_type, owner)
        if not dry_run and rows:
            rows = await _detach_all(uow, owner_type, owner, [row.slot for row in rows])
        assets = sorted({row.asset_id for row in rows})
        if dry_run:
            erased = set(assets) - await held.held_by_others(uow.conn, uow.schema, assets, owner_type, owner)
        else:  # tombstone decides under the assets' locks: held by another record, or not
            erased = await tombstone(uow, dict.fromkeys(assets, ERASED))
        for row in rows:
            report.add("attachments_detached", f"{owner_type}:{owner}:{row.slot}")
        for asset_id in assets:
            report.add("assets_erased" if asset_id in erased else "assets_retained", str(asset_id))
        if not dry_run:
            uow.emit(OwnerErased(owner_type=owner_type, owner_id=owner, slots=len(rows),
                                 assets_erased=len(erased), assets_retained=len(assets) - len(erased)))
    return report


async def _detach_all(uow: UnitOfWork, owner_type: str, owner: str, slots: list[str]) -> list[AttachmentRow]:
    """Lock the record's slots (in slot order), then detach whatever they hold now (an attach
    may have committed since they were read); return the attachments removed."""
    for slot in slots:
        await lock_slot(uow, owner_type, owner, slot)
    removed = []
    for row in await held.of_owner(uow.conn, uow.schema, owner_type, owner):
        if row.slot in slots:
            await held.delete(uow.conn, uow.schema, row.id)
            removed.append(row)
    return removed
