"""The one way an asset becomes ``deleted``: locked, re-checked, tombstoned, purge staged.

Every path that gives up on an asset (a detach or replacement that leaves it held by
nothing, an upload session that ends without a verified file, cleanup) calls
:func:`tombstone`.  Under the asset's row lock it skips assets that are gone, already
deleted, attached (an attach committed since the caller looked) or, with ``only_from``,
in another state than the caller expected; the others move to ``deleted`` and their
``purge_storage`` job is staged in the same transaction, so storage is cleaned after
commit and never forgotten.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING
from uuid import UUID

from ..db import assets, attachments
from ..ledger.stage import stage_purge
from . import transitions
from .machines import ASSET

if TYPE_CHECKING:
    from ..db.transaction import UnitOfWork


async def tombstone(uow: UnitOfWork, reasons: Mapping[UUID, str], *,
                    only_from: Collection[str] | None = None) -> set[UUID]:
    """Tombstone assets (id -> reason) and stage their purges; return those tombstoned.

    uow: the unit of work of the change that gives the assets up.
    reasons: asset id -> the reason stored on it.
    only_from: tombstone only assets in one of these states (e.g. {"staged"}).
    The others are left as they are: gone, already deleted, attached, or moved on since the
    caller read them.
    """
    if not reasons:
        return set()
    locked = await assets.lock_states(uow.conn, uow.schema, reasons)
    kept = await attachments.held(uow.conn, uow.schema, locked)  # read under the locks
    doomed: dict[tuple[str, str], list[UUID]] = {}
    for asset_id, state in locked.items():
        if state != "deleted" and asset_id not in kept and (only_from is None or state in only_from):
            doomed.setdefault((reasons[asset_id], state), []).append(asset_id)
    done = set()
    for (reason, state), ids in sorted(doomed.items()):
        for row in await transitions.transition_many(uow, ASSET, ids, state, "deleted", reason=reason):
            await stage_purge(uow, row["id"])
            done.add(row["id"])
    return done


def release_at_commit(uow: UnitOfWork, asset_id: UUID) -> None:
    """Tombstone an asset that lost an attachment, just before commit, unless still held then.

    Deciding at commit, not at once, lets one transaction move an asset between slots
    (detach it here, attach it there) without tombstoning it on the way.
    """
    async def release(uow: UnitOfWork) -> None:
        await tombstone(uow, {asset_id: "detached from its last owner"})

    uow.before_commit.append(release)
