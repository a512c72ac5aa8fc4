"""Promotion and rendering when the same job is delivered twice at once (a requeue
while the first is still running): the work is done once and nothing is refused."""

from __future__ import annotations

import asyncio

from rindle_async.ledger.runner import run_job

from .media import jpeg


async def stage(rindle, kind, args):
    async with rindle.runtime.db.transaction() as uow:
        return await uow.stage(kind, args)


async def test_duplicate_promotions_do_not_quarantine(media_rindle, db, schema):
    rindle = await media_rindle()
    asset = await rindle.upload("avatar", jpeg(90, 60))
    first = await db.fetchval(f"SELECT id FROM {schema}.jobs")
    await rindle.flush_jobs()  # sent: the dedupe key no longer blocks a second one
    second = await stage(rindle, "promote_asset", {"asset_id": asset.id})
    kind = rindle.config.ledger.kinds["promote_asset"]
    results = await asyncio.gather(run_job(rindle.runtime, kind, first), run_job(rindle.runtime, kind, second))
    assert set(results) == {"succeeded"}
    asset = await rindle.get_asset(asset.id)
    assert asset.state == "processing" and set(asset.variants) == {"thumb", "large"}
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.jobs WHERE kind = 'promote_asset'") == 0


async def test_duplicate_renders_end_ready_not_failed(media_rindle, db, schema):
    rindle = await media_rindle()
    asset = await rindle.upload("avatar", jpeg(90, 60))
    await run_job(rindle.runtime, rindle.config.ledger.kinds["promote_asset"],
                  await db.fetchval(f"SELECT id FROM {schema}.jobs"))
    first = await db.fetchval(f"SELECT id FROM {schema}.jobs WHERE kind = 'process_variant'")
    await rindle.flush_jobs()
    second = await stage(rindle, "process_variant", {"asset_id": asset.id})
    kind = rindle.config.ledger.kinds["process_variant"]
    results = await asyncio.gather(run_job(rindle.runtime, kind, first), run_job(rindle.runtime, kind, second))
    assert set(results) == {"succeeded"}
    asset = await rindle.get_asset(asset.id)
    assert asset.state == "ready"
    thumb = asset.variants["thumb"]
    assert (thumb.state, thumb.width, thumb.height) == ("ready", 32, 32)
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.jobs WHERE status = 'discarded'") == 0
