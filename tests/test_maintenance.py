"""Maintenance on real services: stale work, abort and cleanup (dry run equals live),
storage verification, recipe changes and regeneration, queue routing."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from rindle_async import CleanupRun, ConfigurationError, Variant, VerificationFailed, maintenance, recipes
from rindle_async.db import assets as asset_rows, sessions as session_rows
from rindle_async.lifecycle import transitions
from rindle_async.lifecycle.machines import VARIANT
from rindle_async.dispatch import DISPATCHER
from rindle_async.ledger.runner import run_job
from rindle_async.errors import ValidationError

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
                async with rindle.runtime.db.transaction() as uow:
                    await transitions.transition(uow, VARIANT, variant_id, "processing", "ready",
                                            storage_key="newer/thumb.webp", recipe_digest="f" * 20)
            return info

    storage = NewerWorkFinishesFirst(local_storage._inner)
    rindle = await make_rindle(relay=False, storages={"media": storage},
                               profiles=[avatar_profile("media")])
    await rindle.upload("avatar", jpeg(120, 90))
    await run_job(rindle.runtime, rindle.config.ledger.kinds["promote_asset"],
                  await db.fetchval(f"SELECT id FROM {schema}.jobs WHERE kind = 'promote_asset'"))
    variant_id = await db.fetchval(f"SELECT id FROM {schema}.variants WHERE name = 'thumb'")
    job_id = await db.fetchval(f"SELECT id FROM {schema}.jobs WHERE kind = 'process_variant'")
    assert await run_job(rindle.runtime, rindle.config.ledger.kinds["process_variant"], job_id) == "succeeded"
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

    dry_abort = await maintenance.abort_incomplete_uploads(rindle.runtime, dry_run=True)
    assert dry_abort.counts == {"sessions_expired": 2, "assets_tombstoned": 2}
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.upload_sessions"
                             " WHERE state = 'expired'") == 0
    live_abort = await maintenance.abort_incomplete_uploads(rindle.runtime)
    assert live_abort.counts == dry_abort.counts and live_abort.items == dry_abort.items
    assert (await rindle.get_asset(expired.asset_id)).state == "deleted"
    assert (await rindle.get_asset(live.asset_id)).state == "staged"

    from datetime import timedelta
    dry = await maintenance.cleanup_orphans(rindle.runtime, grace=timedelta(seconds=0))
    assert dry.counts == {"session_assets": 1, "unattached_assets": 1, "stray_objects": 1}
    assert set(dry.items["unattached_assets"]) == {orphan.id}
    assert dry.items["session_assets"] == [failed.asset_id]
    assert dry.items["stray_objects"] == [f"media:{stray}"]
    assert stray in await keys(local_storage)
    wet = await maintenance.cleanup_orphans(rindle.runtime, dry_run=False, grace=timedelta(seconds=0))
    assert wet.counts == dry.counts and wet.items == dry.items
    assert stray not in await keys(local_storage)
    await drain(rindle, redis_url)  # the purge jobs
    remaining = {r["id"] for r in await db.fetch(f"SELECT id::text FROM {schema}.assets")}
    assert remaining == {kept.id, live.asset_id}
    again = await maintenance.cleanup_orphans(rindle.runtime, dry_run=False, grace=timedelta(seconds=0))
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
    dry = await maintenance.verify_storage(rindle.runtime, dry_run=True)
    assert dry.counts == {"checked": 3, "variants_missing": 1}
    assert (await rindle.get_asset(asset.id)).variants["thumb"].state == "ready"
    report = await maintenance.verify_storage(rindle.runtime)
    assert report.counts == dry.counts
    assert (await rindle.get_asset(asset.id)).variants["thumb"].state == "missing"
    regenerated = await recipes.regenerate_variants(rindle.runtime)
    assert regenerated.counts == {"requeued": 1}
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(asset.id)
    assert asset.state == "ready" and asset.variants["thumb"].state == "ready"
    assert await local_storage.head(key) is not None


async def test_cleanup_removes_what_a_ticket_replayed_on_s3_wrote(media_rindle, s3_storage, db, schema,
                                                                  redis_url):
    rindle = await media_rindle(s3_storage)
    body = jpeg(100, 80)
    promoted = await rindle.initiate_upload("avatar", filename="a.jpg", content_type="image/jpeg",
                                            byte_size=len(body))
    failed = await rindle.initiate_upload("avatar", filename="b.jpg", content_type="image/jpeg",
                                          byte_size=len(body) + 1)
    async with httpx.AsyncClient() as client:
        async def put(ticket, data):
            response = await client.put(ticket.url, headers=ticket.headers, content=data)
            assert response.status_code == 200  # S3 cannot revoke a presigned PUT (moto checks nothing)

        await put(promoted, body)
        await rindle.verify_upload(promoted.session_id)
        await put(failed, body)
        with pytest.raises(VerificationFailed):
            await rindle.verify_upload(failed.session_id)  # quarantined, kept until cleanup
        await drain(rindle, redis_url)
        assert (await rindle.get_asset(promoted.asset_id)).state == "ready"
        await put(promoted, jpeg(80, 100))  # the ticket replayed after promotion
        await put(failed, jpeg(80, 100))  # and after its verification failed
    upload_key, failed_key = [await db.fetchval(
        f"SELECT storage_key FROM {schema}.upload_sessions WHERE id = $1::uuid", ticket.session_id)
        for ticket in (promoted, failed)]
    original = await db.fetchval(f"SELECT storage_key FROM {schema}.assets WHERE id = $1::uuid",
                                 promoted.asset_id)
    report = await maintenance.cleanup_orphans(rindle.runtime, dry_run=False)  # default 24 h grace
    assert report.items["stray_objects"] == [f"media:{upload_key}"]
    assert report.items["session_assets"] == [failed.asset_id]  # its purge removes failed_key
    assert await s3_storage.head(upload_key) is None
    assert b"".join([c async for c in s3_storage.get(original)]) == body
    await drain(rindle, redis_url)
    assert await s3_storage.head(failed_key) is None
    assert (await rindle.get_asset(promoted.asset_id)).state == "ready"


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
    web = await make_rindle(relay=False, migrate=False, storages={"media": local_storage},
                            profiles=[changed])  # a web process: opening leaves the rows alone
    assert {n: v.state for n, v in (await web.get_asset(asset.id)).variants.items()} == {
        "thumb": "ready", "large": "ready"}
    after = await make_rindle(relay=False, migrate=False, storages={"media": local_storage},
                              profiles=[changed], detect_stale=True)  # opening detects the change
    asset = await after.get_asset(asset.id)
    assert asset.state == "processing"  # the new variant was planned
    assert {n: v.state for n, v in asset.variants.items()} == {
        "thumb": "stale", "large": "ready", "mini": "queued"}
    stale_url = await after.url(asset.id, variant="thumb")
    assert urlsplit(stale_url).path == urlsplit(old_url).path  # the stale object is still served
    report = await recipes.regenerate_variants(after.runtime, variant="thumb")
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
    cleanup = await maintenance.cleanup_orphans(after.runtime, dry_run=False, grace=timedelta(seconds=0))
    assert cleanup.items["stray_objects"] == [f"media:{old_key}"]
    assert await local_storage.head(old_key) is None


async def test_worker_settings_per_queue(make_rindle, local_storage):
    rindle = await make_rindle(relay=False, storages={"media": local_storage},
                               profiles=[avatar_profile("media")],
                               queues={"process_variant": "render"})
    default = rindle.worker_settings()
    render = rindle.worker_settings(queue="render", processes=3)
    assert default.queue_name == rindle.config.ledger.queue
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
    cron = {job.name: job for job in rindle.worker_settings().cron_jobs}
    assert sorted(cron) == ["rindle_abort_incomplete_uploads", "rindle_cleanup_orphans",
                            "rindle_relay_tick"]
    assert (cron["rindle_cleanup_orphans"].hour, cron["rindle_abort_incomplete_uploads"].hour) == (2, 1)
    cleanup = cron["rindle_cleanup_orphans"].coroutine
    assert (await cleanup(ctx)).startswith("staged cleanup_orphans as job")
    assert await cleanup(ctx) == "cleanup_orphans is already pending"
    await cron["rindle_abort_incomplete_uploads"].coroutine(ctx)
    rows = await db.fetch(f"SELECT kind, args::text, status FROM {schema}.jobs ORDER BY id")
    assert [tuple(r) for r in rows] == [("cleanup_orphans", '{"dry_run": false}', "pending"),
                                        ("abort_incomplete_uploads", '{"dry_run": false}', "pending")]
    assert await worker.relay_tick(ctx) == "sent 2, re-sent 0"


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

    deploy = [Rindle(database_url=before.config.database_url, redis_url=redis_url, schema=schema,
                     storages={"media": local_storage}, profiles=[changed], relay=False, detect_stale=True)
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
    """Cleanup reads a page of candidates first and acts later: an attach in between wins."""
    from datetime import timedelta

    rindle = await media_rindle()
    asset = await rindle.upload("avatar", jpeg(80, 60))
    await drain(rindle, redis_url)
    await db.execute(f"UPDATE {schema}.assets SET created_at = now() - interval '2 days'")
    read_page = asset_rows.cleanup_page

    async def attach_after_reading(*args, **options):
        page = await read_page(*args, **options)
        # another request attaches the asset (and commits) between the read and the tombstone
        await rindle.attach(asset.id, owner_type="user", owner_id="1", slot="avatar")
        return page

    monkeypatch.setattr(asset_rows, "cleanup_page", attach_after_reading)
    report = await maintenance.cleanup_orphans(rindle.runtime, dry_run=False, grace=timedelta(hours=1))
    assert report.counts == {"skipped_changed": 1}
    assert (await rindle.get_asset(asset.id)).state == "ready"
    assert await rindle.url(asset.id, variant="thumb")


async def test_renders_not_done_at_a_recipe_change_use_the_new_recipe(make_rindle, local_storage,
                                                                       db, schema, redis_url):
    before = await make_rindle(relay=False, storages={"media": local_storage},
                               profiles=[avatar_profile("media")])
    asset = await before.upload("avatar", jpeg(80, 60))
    await run_job(before.runtime, before.config.ledger.kinds["promote_asset"],
                  await db.fetchval(f"SELECT id FROM {schema}.jobs"))  # variants queued, not rendered
    changed = avatar_profile("media", variants={
        "thumb": Variant(width=20, height=20, fit="cover", format="png"),
        "large": Variant(width=48, fit="inside", format="jpeg", quality=85)})
    after = await make_rindle(relay=False, migrate=False, storages={"media": local_storage},
                              profiles=[changed], detect_stale=True)
    wanted = await db.fetchval(f"SELECT recipe_digest FROM {schema}.variants WHERE name = 'thumb'")
    assert wanted == changed.recipe_digests()["thumb"]
    await drain(after, redis_url)
    thumb = (await after.get_asset(asset.id)).variants["thumb"]
    assert (thumb.state, thumb.width, thumb.content_type) == ("ready", 20, "image/png")


# -- abort and cleanup in pages ------------------------------------------------------------


async def expired_sessions(rindle, db, schema, n: int) -> list[str]:
    """``n`` direct uploads never verified, all past one deadline (their order is the ids')."""
    tickets = [await rindle.initiate_upload("avatar", filename=f"{i}.png", content_type="image/png",
                                            byte_size=100) for i in range(n)]
    await db.execute(f"UPDATE {schema}.upload_sessions SET expires_at = now() - interval '1 minute'")
    return sorted(t.session_id for t in tickets)


def page_sizes(monkeypatch, module, reader: str) -> list[int]:
    """The number of rows of each page ``module.<reader>`` (a db/ read) returns from now on."""
    sizes: list[int] = []
    read = getattr(module, reader)

    async def counted(*args, **options):
        page = await read(*args, **options)
        sizes.append(len(page))
        return page

    monkeypatch.setattr(module, reader, counted)
    return sizes


async def test_abort_in_pages_of_two_does_what_one_page_does(media_rindle, db, schema, monkeypatch):
    rindle = await media_rindle()
    sessions = await expired_sessions(rindle, db, schema, 7)
    whole = await maintenance.abort_incomplete_uploads(rindle.runtime, dry_run=True)
    assert whole.counts == {"sessions_expired": 7, "assets_tombstoned": 7}
    assert whole.items["sessions_expired"] == sessions  # one deadline: in id order

    sizes, drawn = page_sizes(monkeypatch, session_rows, "expired_page"), []
    dry = await maintenance.abort_incomplete_uploads(rindle.runtime, dry_run=True, batch=2,
                                                     progress=lambda *done: drawn.append(done))
    assert (dry.counts, dry.items) == (whole.counts, whole.items)
    assert sizes == [2, 2, 2, 1]  # never more than a page of rows at once
    assert drawn == [(2, 7), (4, 7), (6, 7), (7, 7)]
    counted = await maintenance.abort_incomplete_uploads(rindle.runtime, dry_run=True, batch=2,
                                                         keep_items=False)
    assert (counted.counts, counted.items) == (whole.counts, {})

    sizes.clear()
    live = await maintenance.abort_incomplete_uploads(rindle.runtime, batch=2)
    assert (live.counts, live.items) == (whole.counts, whole.items)
    assert sizes == [2, 2, 2, 1]
    assert {r["state"] for r in await db.fetch(f"SELECT state FROM {schema}.upload_sessions")} == {
        "expired"}
    assert {r["state"] for r in await db.fetch(f"SELECT state FROM {schema}.assets")} == {"deleted"}
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.jobs WHERE kind = 'purge_storage'") == 7
    assert (await maintenance.abort_incomplete_uploads(rindle.runtime, batch=2)).counts == {}
    with pytest.raises(ValidationError, match="batch=0 must be a positive int"):
        await maintenance.abort_incomplete_uploads(rindle.runtime, batch=0)


async def test_abort_skips_a_session_that_changed_after_its_page_was_read(media_rindle, db, schema,
                                                                        monkeypatch):
    """A live run acts on a page in one transaction after reading it: a session that changed in
    between is left alone (skipped_changed); one that changed before its page was read is
    simply not among the rows any more."""
    rindle = await media_rindle()
    sessions = await expired_sessions(rindle, db, schema, 7)
    read_page = session_rows.expired_page

    async def host_aborts_two(*args, **options):
        rows = await read_page(*args, **options)
        if rows and str(rows[0].id) == sessions[2]:  # the second page
            await rindle.abort_upload(sessions[2])  # on this page, already read
            await rindle.abort_upload(sessions[5])  # on the third page, not read yet
        return rows

    monkeypatch.setattr(session_rows, "expired_page", host_aborts_two)
    live = await maintenance.abort_incomplete_uploads(rindle.runtime, batch=2)
    assert live.counts == {"sessions_expired": 5, "assets_tombstoned": 5, "skipped_changed": 1}
    assert live.items["skipped_changed"] == [sessions[2]]
    assert live.items["sessions_expired"] == [s for s in sessions if s not in (sessions[2], sessions[5])]
    states_ = {str(r["id"]): r["state"] for r in await db.fetch(
        f"SELECT id, state FROM {schema}.upload_sessions")}
    assert states_[sessions[2]] == states_[sessions[5]] == "aborted"


async def test_cleanup_in_pages_of_two_does_what_one_page_does(media_rindle, db, schema,
                                                              local_storage, monkeypatch):
    import os
    import time
    from datetime import timedelta

    rindle = await media_rindle()
    unattached = [(await rindle.upload("avatar", png())).id for _ in range(3)]
    held = await rindle.upload("avatar", png())
    await rindle.attach(held.id, owner_type="user", owner_id="1", slot="avatar")
    failed = []
    for _ in range(2):  # the stored bytes do not match the declared size: quarantined
        ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                              byte_size=1000)
        await local_storage.put(await db.fetchval(f"SELECT storage_key FROM {schema}.assets"
                                                  " WHERE id = $1::uuid", ticket.asset_id), b"x")
        with pytest.raises(Exception, match="declared"):
            await rindle.verify_upload(ticket.session_id)
        failed.append(ticket.asset_id)
    lost = [(await rindle.upload("avatar", png())).id for _ in range(2)]  # tombstones, no purge
    async with rindle.transaction() as conn:
        await conn.execute(f"UPDATE {schema}.assets SET state = 'deleted' WHERE id = ANY($1::uuid[])",
                           lost)
    await db.execute(f"DELETE FROM {schema}.jobs")
    await db.execute(f"UPDATE {schema}.assets SET created_at = now() - interval '2 days',"
                     " state_changed_at = now() - interval '2 days'")
    strays = sorted(f"avatar/ab/{uuid.uuid4()}/original.png" for _ in range(3))
    two_days_ago = time.time() - 2 * 86400
    for key in strays:
        await local_storage.put(key, b"stray")
        os.utime(local_storage.root / key, (two_days_ago, two_days_ago))

    grace = timedelta(hours=1)
    whole = await maintenance.cleanup_orphans(rindle.runtime, grace=grace)
    assert whole.counts == {"unattached_assets": 3, "session_assets": 2, "purges_restaged": 2,
                            "stray_objects": 3}
    assert whole.items["unattached_assets"] == sorted(unattached)
    assert whole.items["stray_objects"] == [f"media:{key}" for key in strays]
    sizes, drawn = page_sizes(monkeypatch, asset_rows, "cleanup_page"), []
    dry = await maintenance.cleanup_orphans(rindle.runtime, grace=grace, batch=2,
                                            progress=lambda *done: drawn.append(done))
    assert (dry.counts, dry.items) == (whole.counts, whole.items)
    assert sizes == [2, 2, 2, 2, 0]  # 8 assets, never more than a page at once
    checked, files = [done for done, _ in drawn], len(await keys(local_storage))
    assert checked[:4] == [2, 4, 6, 8] and checked[-1] == 8 + files  # assets, then objects
    assert all(0 < b - a <= 2 for a, b in zip(checked, checked[1:]))  # a page at a time
    assert {total for _, total in drawn} == {0}  # a running count: the total is unknown

    sizes.clear()
    live = await maintenance.cleanup_orphans(rindle.runtime, dry_run=False, grace=grace, batch=2)
    assert (live.counts, live.items) == (whole.counts, whole.items)
    assert sizes == [2, 2, 2, 2, 0]
    states_ = {str(r["id"]): r["state"] for r in await db.fetch(f"SELECT id, state FROM {schema}.assets")}
    assert {a for a, state in states_.items() if state != "deleted"} == {held.id}
    purges = {r["a"] for r in await db.fetch(f"SELECT args->>'asset_id' AS a FROM {schema}.jobs")}
    assert purges == {*unattached, *failed, *lost}
    assert not set(strays) & set(await keys(local_storage))


BIG_TABLES = {"upload_sessions", "assets", "variants", "attachments", "jobs"}


async def bulk_rows(db, schema: str, n: int) -> None:
    """Rows shaped as the library writes them, ``n`` of each kind: open direct uploads past
    their deadline (staged assets), completed uploads attached to a user, unattached ready
    assets three days old (each rendered asset with two variants), lost tombstones."""
    def assets(state: str, role: str, age: str) -> str:
        return (f"INSERT INTO {schema}.assets (id, profile, storage, storage_key, state, filename,"
                " content_type, byte_size, created_at, updated_at, state_changed_at)"
                " SELECT id, 'avatar', 'media', 'avatar/' || left(id::text, 2) || '/' || id"
                f" || '/{role}.png', '{state}', 'a.png', 'image/png', 5000, t, t, t FROM (SELECT"
                f" gen_random_uuid() AS id, now() - interval '{age}' - n * interval '1 second' AS t"
                f" FROM generate_series(1, {n}) n) g RETURNING id, created_at")

    async def sessions(rows, state: str, expires: str) -> None:
        await db.execute(
            f"INSERT INTO {schema}.upload_sessions (id, asset_id, state, storage_key, filename,"
            " content_type, byte_size, expires_at, created_at, updated_at, state_changed_at)"
            f" SELECT gen_random_uuid(), id, '{state}', storage_key, filename, content_type,"
            f" byte_size, created_at + interval '{expires}', created_at, created_at, created_at"
            f" FROM {schema}.assets WHERE id = ANY($1::uuid[])", [r["id"] for r in rows])

    async def variants(rows) -> None:
        await db.execute(
            f"INSERT INTO {schema}.variants (id, asset_id, name, state, recipe_digest, storage_key,"
            " content_type, created_at, updated_at, state_changed_at)"
            " SELECT gen_random_uuid(), a.id, v.name, 'ready', 'ab12cd34ef56', replace(a.storage_key,"
            " 'original.png', 'variants/' || v.name || '-ab12cd34ef56.webp'), 'image/webp',"
            f" a.created_at, a.created_at, a.created_at FROM {schema}.assets a,"
            " (VALUES ('thumb'), ('large')) v(name) WHERE a.id = ANY($1::uuid[])",
            [r["id"] for r in rows])

    await sessions(await db.fetch(assets("staged", "upload", "2 hours")), "signed", "1 hour")
    attached = await db.fetch(assets("ready", "original", "30 days"))
    await sessions(attached, "completed", "1 hour")
    await variants(attached)
    await db.execute(f"INSERT INTO {schema}.attachments (id, asset_id, owner_type, owner_id, slot)"
                     " SELECT gen_random_uuid(), id, 'user', id::text, 'avatar'"
                     f" FROM {schema}.assets WHERE state = 'ready'")
    await variants(await db.fetch(assets("ready", "original", "3 days")))
    await db.fetch(assets("deleted", "original", "3 days"))
    for table in sorted(BIG_TABLES):  # as autovacuum would: statistics, visibility map
        await db.execute(f"VACUUM ANALYZE {schema}.{table}")


def seq_scanned(plan: dict) -> set[str]:
    """The big tables a plan (or any of its subplans) reads with a Seq Scan."""
    found = {plan["Relation Name"]} if plan["Node Type"] == "Seq Scan" else set()
    for child in plan.get("Plans", ()):
        found |= seq_scanned(child)
    return found & BIG_TABLES


async def test_every_statement_of_abort_and_cleanup_reads_through_an_index(
        make_rindle, database_url, db, schema, s3_storage):
    """Every statement a live abort and a live cleanup send, captured from the real runs (the
    pool's query logger) and EXPLAINed with its own arguments, reads the big tables through an
    index under the planner's default settings, with the statistics from before the runs
    (as stale as autovacuum may leave them) and from after.

    Why this proves index use at scale: the runs page 8 rows at a time over tables of a few
    thousand rows, the same share of a table (0.2%) as the default page of 200 is of 100,000
    rows.  That share is what decides between reading a page's rows through an index and a
    Seq Scan (the one's cost grows with the page, the other's with the table), so a plan that
    takes the index here takes it at 100,000 rows and more; the per-row probes of a page take
    an index at any size.  bench/maintenance.py checks the same at 100,000 rows.  Capturing
    the statements instead of listing them covers what other modules send on the verbs'
    behalf (state transitions, the ledger).  That an index exists would prove nothing: a
    partial index whose predicate a query does not imply, a correlated EXISTS turned into a
    hashed scan of a whole table, a probe steered to a partial index lacking its key: each
    of these was caught here or in the bench while writing these queries."""
    import json
    from datetime import datetime, timedelta, timezone

    import asyncpg

    sent: dict[str, tuple] = {}

    def record(query) -> None:
        if f"{schema}." in query.query:  # not BEGIN, COMMIT or the pool's resets
            sent.setdefault(query.query, tuple(query.args or ()))

    async def log_queries(conn) -> None:
        conn.add_query_logger(record)

    async def seq_scans() -> dict[str, set[str]]:
        plans = {}
        for query, args in sent.items():
            [explained] = json.loads(await db.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *args))
            plans[query] = seq_scanned(explained["Plan"])
        return {query: tables for query, tables in plans.items() if tables}

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4, init=log_queries)
    try:  # the Rindle (closed by make_rindle) does not close a pool it was given
        rindle = await make_rindle(database_url=None, pool=pool, relay=False,
                                   storages={"media": s3_storage}, profiles=[avatar_profile("media")])
        await bulk_rows(db, schema, 1000)
        stray = f"avatar/cd/{uuid.uuid4()}/original.png"
        await s3_storage.put(stray, b"left behind")
        await s3_storage.create_multipart(f"avatar/ef/{uuid.uuid4()}/upload.png",
                                          content_type="image/png")
        sent.clear()
        aborted = await maintenance.abort_incomplete_uploads(rindle.runtime, batch=8,
                                                             progress=lambda *done: None)
        later = datetime.now(timezone.utc) + timedelta(seconds=5)  # the store's objects are old
        cleaned = await maintenance.cleanup_orphans(rindle.runtime, dry_run=False, batch=8, now=later,
                                                    grace=timedelta(0), progress=lambda *done: None)
        await asyncio.sleep(0)  # query loggers run soon after each query
    finally:
        await pool.close()
    assert aborted.counts == {"sessions_expired": 1000, "assets_tombstoned": 1000}
    assert cleaned.counts == {"unattached_assets": 1000, "purges_restaged": 1000,
                              "stray_objects": 1, "multipart_aborted": 1}
    # the two pages and the count, lock and attachment check, two transitions, the ledger,
    # the stray-object and multipart lookups
    assert len(sent) >= 10, list(sent)
    assert await seq_scans() == {}  # with the statistics of before the runs
    for table in sorted(BIG_TABLES):
        await db.execute(f"ANALYZE {schema}.{table}")
    assert await seq_scans() == {}


async def test_abort_expires_a_multipart_session_a_store_cannot_abort(media_rindle, s3_storage, db, schema,
                                                                       caplog):
    from datetime import datetime, timedelta, timezone

    from rindle_async import Unsupported

    class NoAbort(type(s3_storage)):  # what s3rver does: no AbortMultipartUpload
        async def abort_multipart(self, key, upload_id):
            raise Unsupported("the S3 endpoint does not implement abort multipart (NotImplemented)")

    rindle = await media_rindle(NoAbort(s3_storage._inner))
    first, second = [await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                                  multipart=True) for _ in range(2)]
    later = datetime.now(timezone.utc) + timedelta(days=1)
    report = await maintenance.abort_incomplete_uploads(rindle.runtime, now=later)
    assert report.counts == {"sessions_expired": 2, "assets_tombstoned": 2, "multipart_abort_failed": 2}
    assert {(await rindle.get_upload(t.session_id)).state for t in (first, second)} == {"expired"}
    assert "was not aborted" in caplog.text
