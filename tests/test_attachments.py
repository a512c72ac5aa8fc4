"""Attach, replace, detach: tombstones and purge jobs committed with the change,
never after a rollback; concurrent attaches; the purge job against real storage."""

from __future__ import annotations

import asyncio

import pytest

from rindle_async import NotFound, ValidationError

from .conftest import run_worker
from .media import jpeg, png


async def purge_jobs(db, schema):
    return sorted(r["a"] for r in await db.fetch(
        f"SELECT args->>'asset_id' AS a FROM {schema}.jobs WHERE kind = 'purge_storage'"))


async def state(rindle, asset_id):
    return (await rindle.get_asset(asset_id)).state


@pytest.fixture
async def rindle(media_rindle):
    return await media_rindle()


async def test_attach_and_read_back(rindle):
    asset = await rindle.upload("avatar", png(), filename="a.png")
    attached = await rindle.attach(asset.id, owner_type="user", owner_id=42, slot="avatar")
    assert (attached.asset_id, attached.owner_type, attached.owner_id, attached.slot) == (
        asset.id, "user", "42", "avatar")
    assert await rindle.attachment("user", "42", "avatar") == attached
    assert await rindle.attachment("user", "43", "avatar") is None
    assert await rindle.attachments("user", [42, 43], "avatar") == {"42": attached}
    again = await rindle.attach(asset.id, owner_type="user", owner_id="42", slot="avatar")
    assert again == attached  # same asset, same slot: nothing changes


async def test_replace_tombstones_the_old_asset_and_stages_its_purge(rindle, db, schema):
    old = await rindle.upload("avatar", png(), filename="old.png")
    new = await rindle.upload("avatar", jpeg(), filename="new.jpg")
    await rindle.attach(old.id, owner_type="user", owner_id="1", slot="avatar")
    await rindle.attach(new.id, owner_type="user", owner_id="1", slot="avatar")
    assert (await rindle.attachment("user", "1", "avatar")).asset_id == new.id
    assert await state(rindle, old.id) == "deleted"
    assert await purge_jobs(db, schema) == [old.id]


async def test_an_asset_held_elsewhere_survives_a_detach(rindle, db, schema):
    shared = await rindle.upload("avatar", png())
    await rindle.attach(shared.id, owner_type="user", owner_id="1", slot="avatar")
    await rindle.attach(shared.id, owner_type="team", owner_id="9", slot="logo")
    removed = await rindle.detach(owner_type="user", owner_id="1", slot="avatar")
    assert removed.asset_id == shared.id
    assert await state(rindle, shared.id) == "validating"
    assert await purge_jobs(db, schema) == []
    await rindle.detach(owner_type="team", owner_id="9", slot="logo")
    assert await state(rindle, shared.id) == "deleted"
    assert await purge_jobs(db, schema) == [shared.id]
    assert await rindle.detach(owner_type="team", owner_id="9", slot="logo") is None


async def test_attach_refuses_assets_that_cannot_be_held(rindle, db, schema):
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                          byte_size=10)
    with pytest.raises(ValidationError, match="is staged and cannot be attached; verify its upload first"):
        await rindle.attach(ticket.asset_id, owner_type="user", owner_id="1", slot="avatar")
    gone = await rindle.upload("avatar", png())
    await rindle.attach(gone.id, owner_type="user", owner_id="1", slot="avatar")
    await rindle.detach(owner_type="user", owner_id="1", slot="avatar")
    with pytest.raises(ValidationError, match="is deleted and cannot be attached"):
        await rindle.attach(gone.id, owner_type="user", owner_id="1", slot="avatar")
    with pytest.raises(NotFound, match="does not exist"):
        await rindle.attach("00000000-0000-0000-0000-000000000000", owner_type="user",
                            owner_id="1", slot="avatar")
    with pytest.raises(ValidationError, match="owner_type='' must be a non-empty string"):
        await rindle.attach(gone.id, owner_type="", owner_id="1", slot="avatar")
    with pytest.raises(ValidationError, match="asset_id 'x' is not a UUID"):
        await rindle.attach("x", owner_type="user", owner_id="1", slot="avatar")


async def test_purge_jobs_are_visible_only_after_commit_and_never_after_rollback(rindle, db, schema):
    first = await rindle.upload("avatar", png())
    second = await rindle.upload("avatar", png())
    await rindle.attach(first.id, owner_type="user", owner_id="7", slot="avatar")
    await db.execute(f"CREATE TABLE {schema}.users (id text PRIMARY KEY, name text)")
    with pytest.raises(RuntimeError):
        async with rindle.transaction() as conn:
            await conn.execute(f"INSERT INTO {schema}.users VALUES ('7', 'ann')")
            await rindle.attach(second.id, owner_type="user", owner_id="7", slot="avatar", conn=conn)
            # inside the open transaction another session sees nothing yet
            assert await purge_jobs(db, schema) == []
            raise RuntimeError("the host's handler failed")
    assert (await rindle.attachment("user", "7", "avatar")).asset_id == first.id
    assert await state(rindle, first.id) == "validating"
    assert await purge_jobs(db, schema) == []
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.users") == 0

    async with rindle.transaction() as conn:
        await conn.execute(f"INSERT INTO {schema}.users VALUES ('7', 'ann')")
        await rindle.attach(second.id, owner_type="user", owner_id="7", slot="avatar", conn=conn)
        assert await purge_jobs(db, schema) == []
    assert await purge_jobs(db, schema) == [first.id]
    assert (await rindle.attachment("user", "7", "avatar")).asset_id == second.id


async def test_concurrent_attaches_to_one_slot_leave_one_winner_and_no_orphan(rindle, db, schema):
    assets = [await rindle.upload("avatar", png()) for _ in range(8)]
    results = await asyncio.gather(*(
        rindle.attach(a.id, owner_type="user", owner_id="1", slot="avatar") for a in assets))
    winner = (await rindle.attachment("user", "1", "avatar")).asset_id
    assert winner in {r.asset_id for r in results}
    states = {a.id: await state(rindle, a.id) for a in assets}
    assert states.pop(winner) == "validating"
    assert set(states.values()) == {"deleted"}  # every loser is tombstoned: no orphan
    assert await purge_jobs(db, schema) == sorted(states)
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.attachments") == 1


async def test_the_purge_job_deletes_objects_then_rows(rindle, db, schema, redis_url, local_storage):
    asset = await rindle.upload("avatar", png())
    key = await db.fetchval(f"SELECT storage_key FROM {schema}.assets WHERE id = $1::uuid", asset.id)
    # a leftover under the asset's prefix (an interrupted render) goes too
    stray = key.rsplit("/", 1)[0] + "/variants/thumb-0123456789abcdef0123.webp"
    await local_storage.put(stray, b"partial")
    await rindle.attach(asset.id, owner_type="user", owner_id="1", slot="avatar")
    await rindle.detach(owner_type="user", owner_id="1", slot="avatar")
    await rindle.flush_jobs()
    await run_worker(rindle, redis_url)
    assert await local_storage.head(key) is None and await local_storage.head(stray) is None
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.assets") == 0
    with pytest.raises(NotFound):
        await rindle.get_asset(asset.id)
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.jobs") == 0


async def test_purge_leaves_an_asset_that_is_not_tombstoned(rindle, db, schema, local_storage):
    from rindle_async.ledger.runner import run_job

    asset = await rindle.upload("avatar", png())
    async with rindle.runtime.db.transaction() as uow:  # a purge job for a live asset (a stray duplicate)
        job_id = await uow.stage("purge_storage", {"asset_id": asset.id})
    assert await run_job(rindle.runtime, rindle.config.ledger.kinds["purge_storage"], job_id) == "succeeded"
    assert await state(rindle, asset.id) == "validating"
    key = await db.fetchval(f"SELECT storage_key FROM {schema}.assets")
    assert await local_storage.head(key) is not None


async def test_moving_assets_between_slots_in_one_transaction_keeps_them(rindle, db, schema):
    x = await rindle.upload("avatar", png())
    y = await rindle.upload("avatar", jpeg())
    await rindle.attach(x.id, owner_type="user", owner_id="1", slot="avatar")
    await rindle.attach(y.id, owner_type="user", owner_id="2", slot="avatar")
    async with rindle.transaction() as conn:  # swap the two avatars
        await rindle.attach(y.id, owner_type="user", owner_id="1", slot="avatar", conn=conn)
        await rindle.attach(x.id, owner_type="user", owner_id="2", slot="avatar", conn=conn)
    assert (await rindle.attachment("user", "1", "avatar")).asset_id == y.id
    assert (await rindle.attachment("user", "2", "avatar")).asset_id == x.id
    assert {await state(rindle, x.id), await state(rindle, y.id)} == {"validating"}
    assert await purge_jobs(db, schema) == []
    async with rindle.transaction() as conn:  # detach here, attach there: a move
        await rindle.detach(owner_type="user", owner_id="2", slot="avatar", conn=conn)
        await rindle.attach(x.id, owner_type="team", owner_id="9", slot="logo", conn=conn)
    assert await state(rindle, x.id) == "validating" and await purge_jobs(db, schema) == []


async def test_crossing_attaches_never_deadlock(rindle, db, schema):
    for round_ in range(5):
        x = await rindle.upload("avatar", png())
        y = await rindle.upload("avatar", jpeg())
        await rindle.attach(x.id, owner_type="user", owner_id=f"a{round_}", slot="avatar")
        await rindle.attach(y.id, owner_type="user", owner_id=f"b{round_}", slot="avatar")
        results = await asyncio.gather(
            rindle.attach(y.id, owner_type="user", owner_id=f"a{round_}", slot="avatar"),
            rindle.attach(x.id, owner_type="user", owner_id=f"b{round_}", slot="avatar"),
            return_exceptions=True)
        # as two separate requests, whichever commits first releases its old asset for good
        errors = [r for r in results if isinstance(r, Exception)]
        assert all(isinstance(e, ValidationError) and "is deleted" in str(e) for e in errors), errors
        assert len(errors) == 1
        held = {a.asset_id for a in (await rindle.attachments(
            "user", [f"a{round_}", f"b{round_}"], "avatar")).values()}
        for asset in (x, y):
            assert (asset.id in held) == (await state(rindle, asset.id) != "deleted")
