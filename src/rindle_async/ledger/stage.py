"""Staging the built-in jobs: the one place that knows their kinds, arguments and dedupe keys.

A dedupe key is the ledger's idempotency contract: the partial unique index
``jobs_pending_dedupe_idx`` admits one *pending* job per key, so a second stage of the
same work in any transaction is a no-op (:meth:`Ledger.stage` returns None).  The keys:

- ``promote:<asset>``: one pending promotion per asset;
- ``render:<asset>``: one pending render per asset (it renders every variant queued when
  it runs, from one decode);
- ``purge:<asset>``: one pending purge per asset;
- ``cron:<kind>``: one pending run of each scheduled maintenance job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

import msgspec

from .kinds import PROMOTE, PURGE, RENDER, AssetArgs, JobKind

if TYPE_CHECKING:
    from ..db.transaction import UnitOfWork


def promote_key(asset_id: UUID) -> str:
    return f"promote:{asset_id}"


def render_key(asset_id: UUID) -> str:
    return f"render:{asset_id}"


def purge_key(asset_id: UUID) -> str:
    return f"purge:{asset_id}"


def scheduled_key(kind: JobKind) -> str:
    return f"cron:{kind.name}"


async def stage_promote(uow: UnitOfWork, asset_id: UUID) -> int | None:
    """Stage the promotion of an asset whose bytes are stored; None if one is pending."""
    return await uow.stage(PROMOTE.name, AssetArgs(asset_id), dedupe_key=promote_key(asset_id))


async def stage_render(uow: UnitOfWork, asset_id: UUID) -> int | None:
    """Stage the render of an asset's queued variants; None if one is pending."""
    return await uow.stage(RENDER.name, AssetArgs(asset_id), dedupe_key=render_key(asset_id))


async def stage_purge(uow: UnitOfWork, asset_id: UUID) -> int | None:
    """Stage the purge of a tombstoned asset's objects and rows; None if one is pending."""
    return await uow.stage(PURGE.name, AssetArgs(asset_id), dedupe_key=purge_key(asset_id))


async def stage_scheduled(uow: UnitOfWork, kind: JobKind, args: msgspec.Struct) -> int | None:
    """Stage a scheduled maintenance job; None if one of that kind is pending."""
    return await uow.stage(kind.name, args, dedupe_key=scheduled_key(kind))
