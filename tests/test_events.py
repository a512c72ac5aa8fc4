"""Events: the locked contract, JSON round trips, the hook bus, after-commit delivery."""

from __future__ import annotations

import asyncio
import logging
import uuid

import msgspec
import pytest

from rindle_async import (
    AssetStateChanged,
    CleanupRun,
    DeliverySigned,
    Event,
    OwnerErased,
    UploadCompleted,
    UploadStarted,
    VariantStateChanged,
)
from rindle_async.events import EVENT_TYPES, EventBus
from rindle_async.lifecycle.machines import ASSET
from rindle_async.lifecycle.transitions import transition

# The public contract: changing a name or a field here is a breaking change.
CONTRACT = {
    "UploadStarted": {"session_id", "asset_id", "profile", "adapter"},
    "UploadCompleted": {"session_id", "asset_id", "profile", "adapter", "byte_size"},
    "AssetStateChanged": {"asset_id", "profile", "adapter", "from_state", "to_state"},
    "VariantStateChanged": {"asset_id", "variant_id", "profile", "adapter", "variant",
                            "from_state", "to_state"},
    "DeliverySigned": {"asset_id", "profile", "adapter", "variant", "mode"},
    "OwnerErased": {"owner_type", "owner_id", "slots", "assets_erased", "assets_retained"},
    "CleanupRun": {"worker", "dry_run", "counts"},
}

SAMPLES = [
    UploadStarted(session_id="s1", asset_id="a1", profile="avatar", adapter="local"),
    UploadCompleted(session_id="s1", asset_id="a1", profile="avatar", adapter="local", byte_size=10),
    AssetStateChanged(asset_id="a1", profile="avatar", adapter="s3", from_state="staged",
                      to_state="validating"),
    VariantStateChanged(asset_id="a1", variant_id="v1", profile="avatar", adapter="s3",
                        variant="thumb", from_state="queued", to_state="processing"),
    DeliverySigned(asset_id="a1", profile="avatar", adapter="s3", variant=None, mode="signed"),
    OwnerErased(owner_type="user", owner_id="42", slots=2, assets_erased=1, assets_retained=1),
    CleanupRun(worker="cleanup_orphans", dry_run=True, counts={"sessions": 2, "objects": 3}),
]


def test_contract_pins_the_seven_events_and_their_fields():
    assert {t.__name__ for t in EVENT_TYPES} == set(CONTRACT)
    for event_type in EVENT_TYPES:
        fields = {f.name for f in msgspec.structs.fields(event_type)}
        assert fields == CONTRACT[event_type.__name__] | {"occurred_at"}, event_type.__name__


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_events_round_trip_through_json(event):
    data = msgspec.json.encode(event)
    decoded = msgspec.json.decode(data, type=Event)
    assert decoded == event
    assert msgspec.json.decode(data)["type"] == type(event).__name__


async def test_sync_and_async_hooks_with_filters_and_a_failing_hook(caplog):
    bus = EventBus()
    everything, assets, async_seen = [], [], []

    def broken(event):
        raise RuntimeError("hook bug")

    async def slow(event):
        await asyncio.sleep(0)
        async_seen.append(type(event).__name__)

    bus.subscribe(broken)
    bus.subscribe(everything.append)
    unsubscribe = bus.subscribe(assets.append, AssetStateChanged)
    bus.subscribe(slow, DeliverySigned, CleanupRun)
    with caplog.at_level(logging.ERROR, logger="rindle_async.events"):
        await bus.deliver(SAMPLES)
    assert everything == SAMPLES
    assert assets == [SAMPLES[2]]
    assert async_seen == ["DeliverySigned", "CleanupRun"]
    assert [r.exc_info[1].args for r in caplog.records] == [("hook bug",)] * len(SAMPLES)
    unsubscribe()
    await bus.deliver(SAMPLES[2:3])
    assert assets == [SAMPLES[2]]


def test_subscribe_refuses_what_is_not_an_event_type():
    bus = EventBus()
    with pytest.raises(TypeError, match="is not a rindle_async event type"):
        bus.subscribe(print, dict)
    with pytest.raises(TypeError, match="needs a callable handler"):
        bus.subscribe("print")


async def test_events_wait_for_the_outermost_commit_and_die_with_a_rollback(make_rindle, db, schema):
    rindle = await make_rindle(relay=False)
    seen = []
    rindle.subscribe(seen.append, AssetStateChanged)
    ids = [uuid.uuid4() for _ in range(2)]
    for asset_id in ids:
        await db.execute(f"INSERT INTO {schema}.assets (id, profile, storage, storage_key, state)"
                         " VALUES ($1, 'avatar', 'local', $2, 'staged')", asset_id, str(asset_id))
    async with rindle.transaction() as conn:
        async with rindle.runtime.db.transaction(conn) as uow:
            await transition(uow, ASSET, ids[0], "staged", "validating")
        with pytest.raises(RuntimeError):
            async with rindle.runtime.db.transaction(conn) as uow:  # a savepoint that rolls back
                await transition(uow, ASSET, ids[1], "staged", "validating")
                raise RuntimeError("inner failure")
        assert seen == []
    assert [(e.asset_id, e.to_state) for e in seen] == [(str(ids[0]), "validating")]
    states = {r["id"]: r["state"] for r in await db.fetch(f"SELECT id, state FROM {schema}.assets")}
    assert states == {ids[0]: "validating", ids[1]: "staged"}


async def test_a_hook_may_call_rindle_even_with_a_one_connection_pool(media_rindle, make_rindle,
                                                                      local_storage):
    from .media import avatar_profile, png

    rindle = await make_rindle(relay=False, pool_size=1, storages={"media": local_storage},
                               profiles=[avatar_profile("media")])
    seen = []

    async def look_up(event):  # needs a connection of its own
        seen.append((await rindle.get_asset(event.asset_id)).state)

    rindle.subscribe(look_up, UploadCompleted)
    async with asyncio.timeout(10):
        await rindle.upload("avatar", png())
    assert seen == ["validating"]
