"""Maintenance on real services: stale work, abort and cleanup (dry run equals live),
storage verification, recipe changes and regeneration, queue routing."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest

from rindle_async import CleanupRun, ConfigurationError, Variant, maintenance, states
from rindle_async.dispatch import DISPATCHER
from rindle_async.jobs import run_job

from .conftest import drain
from .media import GuardedStorage, avatar_profile, jpeg, png


async def keys(storage) -> list[str]:
    return sorted([info.key async for info in storage.list("")])


async def test_a_stale_job_cannot_overwrite_newer_work(make_rindle, local_storage, db, schema):
    class NewerWorkFinishesFirst(GuardedStorage):
        """While this job uploads, another render of the variant completes."""

        async def put(self, key, data, **options):
            info = await self._inner.put(key, data, **options)
            if "/variants/thumb-" in key:
                async with rindle.db.transaction() as uow:
                    await states.transition(uow, states.VARIANT, variant_id, "processing", "ready",
                                            storage_key="newer/thumb.webp", recipe_digest="f" * 20)
            return info

    storage = NewerWorkFinishesFirst(local_storage._inner)
    rindle = await make_rindle(relay=False, storages={"media": storage},
                               profiles=[avatar_profile("media")])
    await rindle.upload("avatar", jpeg(120, 90))
    await run_job(rindle, rindle.ledger.kinds["promote_asset"],
                  await db.fetchval(f"SELECT id FROM {schema}.jobs WHERE kind = 'promote_asset'"))
    variant_id = await db.fetchval(f"SELECT id FROM {schema}.variants WHERE name = 'thumb'")
    job_id = await db.fetchval(f"SELECT id FROM {schema}.jobs WHERE kind = 'process_variant'")
    assert await run_job(rindle, rindle.ledger.kinds["process_variant"], job_id) == "succeeded"
    row = await db.fetchrow(f"SELECT state, storage_key, recipe_digest FROM {schema}.variants"
                            " WHERE id = $1", variant_id)
    assert tuple(row) == ("ready", "newer/thumb.webp", "f" * 20)  # the newer work stands
    assert not [k for k in await keys(storage) if "/variants/thumb-" in k]  # the stale object is gone
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.jobs WHERE id = $1", job_id) == 0


async def test_abort_and_cleanup_over_a_mix_of_sessions(media_rindle, db, schema, redis_url,
                                                        local_storage):
    rindle = await media_rindle()
    events = []
    rindle.subscribe(events.append, CleanupRun)
    body = png()

    async def session(name):
        ticket = await rindle.initiate_upload("avatar", filename=f"{name}.png",
                                              content_type="image/png", byte_size=len(body))
        return ticket

    expired = await session("expired")             # past its deadline, bytes sent
    await local_storage.put(await db.fetchval(
        f"SELECT storage_key FROM {schema}.assets WHERE id = $1::uuid", expired.asset_id), body)
    never_signed = await session("never-signed")   # presign "failed": still initialized
    await db.execute(f"UPDATE {schema}.upload_sessions SET state = 'initialized'"
                     " WHERE id = $1::uuid", never_signed.session_id)
    live = await session("live")                   # open, within its deadline: left alone
    failed = await session("failed")               # verification failed: asset quarantined
    await local_storage.put(await db.fetchval(
        f"SELECT storage_key FROM {schema}.assets WHERE id = $1::uuid", failed.asset_id), body + b"x")
    with pytest.raises(Exception):
        await rindle.verify_upload(failed.session_id)
    await db.execute(f"UPDATE {schema}.upload_sessions SET expires_at = now() - interval '1 minute'"
                     " WHERE id = ANY($1::uuid[])", [expired.session_id, never_signed.session_id])
    kept = await rindle.upload("avatar", png())    # attached: kept
    await rindle.attach(kept.id, owner_type="user", owner_id="1", slot="avatar")
    orphan = await rindle.upload("avatar", png())  # unattached, older than the grace period
    await db.execute(f"UPDATE {schema}.assets SET created_at = now() - interval '2 days'"
                     " WHERE id = $1::uuid", orphan.id)
    stray = f"avatar/ab/{uuid.uuid4()}/original.png"  # an object no row refers to
    await local_storage.put(stray, body)

    dry_abort = await maintenance.abort_incomplete_uploads(rindle, dry_run=True)
    assert dry_abort.counts == {"sessions_expired": 2, "assets_tombstoned": 2}
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.upload_sessions"
                             " WHERE state = 'expired'") == 0
    live_abort = await maintenance.abort_incomplete_uploads(rindle)
    assert live_abort.counts == dry_abort.counts and live_abort.items == dry_abort.items
    assert (await rindle.get_asset(expired.asset_id)).state == "deleted"
    assert (await rindle.get_asset(live.asset_id)).state == "staged"

    from datetime import timedelta
    dry = await maintenance.cleanup_orphans(rindle, grace=timedelta(seconds=0))
    assert dry.counts == {"session_assets": 1, "unattached_assets": 1, "stray_objects": 1}
    assert set(dry.items["unattached_assets"]) == {orphan.id}
    assert dry.items["session_assets"] == [failed.asset_id]
    assert dry.items["stray_objects"] == [f"media:{stray}"]
    assert stray in await keys(local_storage)
    wet = await maintenance.cleanup_orphans(rindle, dry_run=False, grace=timedelta(seconds=0))
    assert wet.counts == dry.counts and wet.items == dry.items
    assert stray not in await keys(local_storage)
    await drain(rindle, redis_url)  # the purge jobs
    remaining = {r["id"] for r in await db.fetch(f"SELECT id::text FROM {schema}.assets")}
    assert remaining == {kept.id, live.asset_id}
    again = await maintenance.cleanup_orphans(rindle, dry_run=False, grace=timedelta(seconds=0))
    assert again.counts == {}  # idempotent
    assert [(e.worker, e.dry_run, e.counts) for e in events] == [
        ("abort_incomplete_uploads", True, dry_abort.counts),
        ("abort_incomplete_uploads", False, live_abort.counts),
        ("cleanup_orphans", True, dry.counts), ("cleanup_orphans", False, wet.counts),
        ("cleanup_orphans", False, {})]


async def test_verify_storage_marks_a_deleted_object_missing(media_rindle, db, schema, redis_url,
                                                             local_storage):
    rindle = await media_rindle()
    asset = await rindle.upload("avatar", jpeg(100, 80))
    await drain(rindle, redis_url)
    key = await db.fetchval(f"SELECT storage_key FROM {schema}.variants WHERE name = 'thumb'")
    await local_storage.delete(key)  # lost behind our back
    dry = await maintenance.verify_storage(rindle, dry_run=True)
    assert dry.counts == {"checked": 3, "variants_missing": 1}
    assert (await rindle.get_asset(asset.id)).variants["thumb"].state == "ready"
    report = await maintenance.verify_storage(rindle)
    assert report.counts == dry.counts
    assert (await rindle.get_asset(asset.id)).variants["thumb"].state == "missing"
    regenerated = await maintenance.regenerate_variants(rindle)
    assert regenerated.counts == {"requeued": 1}
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(asset.id)
    assert asset.state == "ready" and asset.variants["thumb"].state == "ready"
    assert await local_storage.head(key) is not None


async def test_a_recipe_change_marks_stale_and_regenerates(make_rindle, local_storage, db, schema,
                                                           redis_url):
    before = await make_rindle(relay=False, storages={"media": local_storage},
                               profiles=[avatar_profile("media")])
    asset = await before.upload("avatar", jpeg(200, 100))
    await before.attach(asset.id, owner_type="user", owner_id="1", slot="avatar")
    await drain(before, redis_url)
    old_key = await db.fetchval(f"SELECT storage_key FROM {schema}.variants WHERE name = 'thumb'")
    old_url = await before.url(asset.id, variant="thumb")

    changed = avatar_profile("media", variants={
        "thumb": Variant(width=20, height=20, fit="cover", format="png"),  # new recipe
        "large": Variant(width=48, fit="inside", format="jpeg", quality=85),  # unchanged
        "mini": Variant(width=10, height=10, fit="fill", format="webp"),   # a new variant
    })
    after = await make_rindle(relay=False, migrate=False, storages={"media": local_storage},
                              profiles=[changed])  # opening detects the change
    asset = await after.get_asset(asset.id)
    assert asset.state == "processing"  # the new variant was planned
    assert {n: v.state for n, v in asset.variants.items()} == {
        "thumb": "stale", "large": "ready", "mini": "queued"}
    stale_url = await after.url(asset.id, variant="thumb")
    assert urlsplit(stale_url).path == urlsplit(old_url).path  # the stale object is still served
    report = await maintenance.regenerate_variants(after, variant="thumb")
    assert report.counts == {"requeued": 1}
    assert (await after.get_asset(asset.id)).variants["thumb"].state == "queued"
    rerendering = await after.url(asset.id, variant="thumb")  # still the previous object
    assert urlsplit(rerendering).path == urlsplit(old_url).path
    assert (await after.urls([asset.id], variant="thumb"))[asset.id] is not None
    await drain(after, redis_url)
    asset = await after.get_asset(asset.id)
    assert asset.state == "ready"
    thumb = asset.variants["thumb"]
    assert (thumb.state, thumb.width, thumb.height, thumb.content_type) == ("ready", 20, 20, "image/png")
    new_key, digest = await db.fetchrow(
        f"SELECT storage_key, recipe_digest FROM {schema}.variants WHERE name = 'thumb'")
    assert digest == changed.recipe_digests()["thumb"] and digest in new_key and new_key != old_key
    assert await local_storage.head(old_key) is not None  # live URLs to the old object keep working
    from datetime import timedelta
    cleanup = await maintenance.cleanup_orphans(after, dry_run=False, grace=timedelta(seconds=0))
    assert cleanup.items["stray_objects"] == [f"media:{old_key}"]
    assert await local_storage.head(old_key) is None


async def test_worker_settings_per_queue(make_rindle, local_storage):
    rindle = await make_rindle(relay=False, storages={"media": local_storage},
                               profiles=[avatar_profile("media")],
                               queues={"process_variant": "render"})
    default = rindle.worker_settings()
    render = rindle.worker_settings(queue="render", processes=3)
    assert default.queue_name == rindle.ledger.queue
    assert {f.name for f in default.functions} == {
        "promote_asset", "purge_storage", "cleanup_orphans", "abort_incomplete_uploads"}
    assert {c.name for c in default.cron_jobs} == {
        "rindle_relay_tick", "rindle_abort_incomplete_uploads", "rindle_cleanup_orphans"}
    assert [f.name for f in render.functions] == ["process_variant"] and render.cron_jobs == []
    assert render.job_timeout == 305
    lanes = render.ctx[DISPATCHER].lanes
    assert lanes["render"].capacity == 6  # two per render process: each has its next job ready
    assert render.max_jobs > sum(lane.capacity for lane in lanes.values())  # the lanes decide
    with pytest.raises(ConfigurationError, match="queue 'paint' serves no job kind"):
        rindle.worker_settings(queue="paint")


async def test_cron_functions_stage_ledger_jobs_and_the_tick_relays(media_rindle, db, schema, redis):
    from rindle_async import worker

    rindle = await media_rindle()
    ctx = {"rindle": rindle}
    assert (await worker.cron_cleanup_orphans(ctx)).startswith("staged cleanup_orphans as job")
    assert await worker.cron_cleanup_orphans(ctx) == "cleanup_orphans is already pending"
    await worker.cron_abort_incomplete_uploads(ctx)
    rows = await db.fetch(f"SELECT kind, args::text, status FROM {schema}.jobs ORDER BY id")
    assert [tuple(r) for r in rows] == [("cleanup_orphans", '{"dry_run": false}', "pending"),
                                        ("abort_incomplete_uploads", "{}", "pending")]
    assert await worker.relay_tick(ctx) == "sent 2, re-sent 0"
    assert await redis.exists(worker.HEARTBEAT_KEY.format(queue=rindle.ledger.queue))


async def test_processes_opening_at_once_after_a_recipe_change_agree(make_rindle, local_storage,
                                                                     db, schema, redis_url):
    import asyncio

    before = await make_rindle(relay=False, storages={"media": local_storage},
                               profiles=[avatar_profile("media")])
    assets = [await before.upload("avatar", jpeg(60, 40)) for _ in range(6)]
    await drain(before, redis_url)
    changed = avatar_profile("media", variants={
        "thumb": Variant(width=20, height=20, fit="cover", format="png"),
        "large": Variant(width=48, fit="inside", format="jpeg", quality=85),
        "mini": Variant(width=10, height=10, fit="fill", format="webp")})
    from rindle_async import Rindle

    deploy = [Rindle(database_url=before.database_url, redis_url=redis_url, schema=schema,
                     storages={"media": local_storage}, profiles=[changed], relay=False)
              for _ in range(4)]
    try:
        await asyncio.gather(*(r.open() for r in deploy))  # a deploy: four processes start at once
    finally:
        for r in deploy:
            await r.close()
    rows = await db.fetch(f"SELECT name, state, count(*) AS n FROM {schema}.variants"
                          " GROUP BY name, state ORDER BY name")
    assert [tuple(r) for r in rows] == [("large", "ready", 6), ("mini", "queued", 6),
                                        ("thumb", "stale", 6)]
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.jobs WHERE kind = 'process_variant'"
                             " AND status = 'pending'") == 6
    assert {(await before.get_asset(a.id)).state for a in assets} == {"processing"}


async def test_cleanup_leaves_an_asset_attached_after_the_run_read_it(media_rindle, db, schema,
                                                                     redis_url, monkeypatch):
    """Cleanup reads its candidates first and acts later: an attach in between wins."""
    from datetime import timedelta

    rindle = await media_rindle()
    asset = await rindle.upload("avatar", jpeg(80, 60))
    await drain(rindle, redis_url)
    await db.execute(f"UPDATE {schema}.assets SET created_at = now() - interval '2 days'")
    real_tombstone = maintenance._tombstone

    async def attach_first(uow, asset_id, reason, **options):
        # another request attaches the asset (and commits) between the read and the tombstone
        await rindle.attach(str(asset_id), owner_type="user", owner_id="1", slot="avatar")
        return await real_tombstone(uow, asset_id, reason, **options)

    monkeypatch.setattr(maintenance, "_tombstone", attach_first)
    report = await maintenance.cleanup_orphans(rindle, dry_run=False, grace=timedelta(hours=1))
    assert report.counts == {"skipped_changed": 1}
    assert (await rindle.get_asset(asset.id)).state == "ready"
    assert await rindle.url(asset.id, variant="thumb")


async def test_renders_not_done_at_a_recipe_change_use_the_new_recipe(make_rindle, local_storage,
                                                                       db, schema, redis_url):
    before = await make_rindle(relay=False, storages={"media": local_storage},
                               profiles=[avatar_profile("media")])
    asset = await before.upload("avatar", jpeg(80, 60))
    await run_job(before, before.ledger.kinds["promote_asset"],
                  await db.fetchval(f"SELECT id FROM {schema}.jobs"))  # variants queued, not rendered
    changed = avatar_profile("media", variants={
        "thumb": Variant(width=20, height=20, fit="cover", format="png"),
        "large": Variant(width=48, fit="inside", format="jpeg", quality=85)})
    after = await make_rindle(relay=False, migrate=False, storages={"media": local_storage},
                              profiles=[changed])
    wanted = await db.fetchval(f"SELECT recipe_digest FROM {schema}.variants WHERE name = 'thumb'")
    assert wanted == changed.recipe_digests()["thumb"]
    await drain(after, redis_url)
    thumb = (await after.get_asset(asset.id)).variants["thumb"]
    assert (thumb.state, thumb.width, thumb.content_type) == ("ready", 20, "image/png")
