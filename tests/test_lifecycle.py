"""The three state machines against a real PostgreSQL: every edge, the forbidden
ones, terminal states, concurrent writers, events only after commit."""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import re
import uuid

import pytest

from rindle_async import AssetStateChanged, InvalidTransition, NotFound, VariantStateChanged
from rindle_async.lifecycle import transitions
from rindle_async.lifecycle.machines import ASSET, MACHINES, UPLOAD_SESSION, VARIANT

EXPECTED_TERMINAL = {"asset": {"deleted"}, "variant": {"purged"},
                     "upload_session": {"completed", "failed", "aborted", "expired"}}


async def new_row(db, schema, machine, state):
    """Put a row of ``machine`` in ``state`` directly, as test set-up."""
    asset_id = uuid.uuid4()
    await db.execute(
        f"INSERT INTO {schema}.assets (id, profile, storage, storage_key, state)"
        " VALUES ($1, 'avatar', 'local', $2, $3)", asset_id, f"k/{asset_id}",
        state if machine is ASSET else "ready")
    if machine is ASSET:
        return asset_id
    row_id = uuid.uuid4()
    if machine is VARIANT:
        await db.execute(
            f"INSERT INTO {schema}.variants (id, asset_id, name, recipe_digest, state)"
            " VALUES ($1, $2, 'thumb', 'd1', $3)", row_id, asset_id, state)
    else:
        await db.execute(
            f"INSERT INTO {schema}.upload_sessions (id, asset_id, storage_key, expires_at, state)"
            " VALUES ($1, $2, $3, now() + interval '1 hour', $4)", row_id, asset_id,
            f"k/{asset_id}", state)
    return row_id


async def state_of(db, schema, machine, row_id):
    return await db.fetchval(f"SELECT state FROM {schema}.{machine.table} WHERE id = $1", row_id)


@pytest.fixture
async def rindle(make_rindle):
    return await make_rindle(relay=False)


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
async def test_every_allowed_edge_is_persisted(rindle, db, schema, machine):
    events = []
    rindle.subscribe(events.append)
    edges = [(a, b) for a, targets in machine.edges.items() for b in sorted(targets)]
    assert edges, "a machine without edges"
    for from_state, to_state in edges:
        row_id = await new_row(db, schema, machine, from_state)
        async with rindle.runtime.db.transaction() as uow:
            row = await transitions.transition(uow, machine, row_id, from_state, to_state)
        assert row["state"] == to_state
        assert await state_of(db, schema, machine, row_id) == to_state, (from_state, to_state)
    expected = {(a, b) for a, b in edges} if machine is not UPLOAD_SESSION else set()
    assert {(e.from_state, e.to_state) for e in events} == expected


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
async def test_every_forbidden_edge_is_refused_and_changes_nothing(rindle, db, schema, machine):
    forbidden = [(a, b) for a, b in itertools.product(sorted(machine.states), repeat=2)
                 if not machine.allows(a, b)]
    row_ids = {}
    for from_state in machine.states:
        row_ids[from_state] = await new_row(db, schema, machine, from_state)
    for from_state, to_state in forbidden:
        with pytest.raises(InvalidTransition) as info:
            async with rindle.runtime.db.transaction() as uow:
                await transitions.transition(uow, machine, row_ids[from_state], from_state, to_state)
        assert f"{from_state} -> {to_state} is not an allowed transition" in str(info.value)
        assert (info.value.from_state, info.value.to_state) == (from_state, to_state)
    for from_state, row_id in row_ids.items():
        assert await state_of(db, schema, machine, row_id) == from_state


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_terminal_states_have_no_exits(machine):
    assert machine.terminal == EXPECTED_TERMINAL[machine.name]
    for state in machine.terminal:
        assert not any(machine.allows(state, other) for other in machine.states)
    # every state is reachable from an initial state
    seen, todo = set(machine.initial), list(machine.initial)
    while todo:
        for nxt in machine.edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(machine.states)


def test_design_lifecycles_are_paths_of_the_machines():
    happy = ["staged", "validating", "analyzing", "promoting", "available", "processing", "ready"]
    assert all(ASSET.allows(a, b) for a, b in zip(happy, happy[1:]))
    assert ASSET.allows("processing", "degraded")
    for state in ASSET.states - {"deleted", "quarantined"}:
        assert ASSET.allows(state, "quarantined") and ASSET.allows(state, "deleted")
    for a, b in [("planned", "queued"), ("queued", "processing"), ("processing", "ready"),
                 ("processing", "failed"), ("ready", "stale"), ("ready", "missing"),
                 ("ready", "purged"), ("stale", "queued"), ("missing", "queued"),
                 ("failed", "queued"), ("processing", "cancelled")]:
        assert VARIANT.allows(a, b), (a, b)
    path = ["initialized", "signed", "uploading", "uploaded", "verifying", "completed"]
    assert all(UPLOAD_SESSION.allows(a, b) for a, b in zip(path, path[1:]))
    assert UPLOAD_SESSION.allows("verifying", "failed")
    for state in UPLOAD_SESSION.states - UPLOAD_SESSION.terminal:
        assert UPLOAD_SESSION.allows(state, "aborted") and UPLOAD_SESSION.allows(state, "expired")


async def test_stale_from_state_names_the_actual_state(rindle, db, schema):
    row_id = await new_row(db, schema, ASSET, "validating")
    with pytest.raises(InvalidTransition, match="is in state 'validating' now") as info:
        async with rindle.runtime.db.transaction() as uow:
            await transitions.transition(uow, ASSET, row_id, "staged", "validating")
    assert info.value.actual == "validating"


async def test_missing_row_and_unknown_state(rindle):
    with pytest.raises(NotFound, match="asset .* does not exist"):
        async with rindle.runtime.db.transaction() as uow:
            await transitions.transition(uow, ASSET, uuid.uuid4(), "staged", "validating")
    with pytest.raises(ValueError, match="'flying' is not a asset state"):
        async with rindle.runtime.db.transaction() as uow:
            await transitions.transition(uow, ASSET, uuid.uuid4(), "staged", "flying")


async def test_from_state_none_uses_the_locked_current_state(rindle, db, schema):
    row_id = await new_row(db, schema, VARIANT, "failed")
    async with rindle.runtime.db.transaction() as uow:
        row = await transitions.transition(uow, VARIANT, row_id, None, "queued", reason=None)
    assert row["state"] == "queued"
    with pytest.raises(InvalidTransition):
        async with rindle.runtime.db.transaction() as uow:
            await transitions.transition(uow, VARIANT, row_id, None, "ready")


async def test_changes_are_written_with_the_transition(rindle, db, schema):
    row_id = await new_row(db, schema, ASSET, "analyzing")
    async with rindle.runtime.db.transaction() as uow:
        await transitions.transition(uow, ASSET, row_id, "analyzing", "quarantined",
                                reason="declared image/jpeg, bytes are image/png")
    row = await db.fetchrow(f"SELECT state, reason, state_changed_at > created_at AS moved"
                            f" FROM {schema}.assets WHERE id = $1", row_id)
    assert tuple(row) == ("quarantined", "declared image/jpeg, bytes are image/png", True)
    with pytest.raises(ValueError, match="'state' cannot be written"):
        async with rindle.runtime.db.transaction() as uow:
            await transitions.transition(uow, ASSET, row_id, "quarantined", "deleted", state="ready")


async def test_concurrent_transitions_of_one_row_have_exactly_one_winner(rindle, db, schema):
    row_id = await new_row(db, schema, ASSET, "staged")
    entered = asyncio.Event()
    release = asyncio.Event()

    async def first():
        async with rindle.runtime.db.transaction() as uow:
            await transitions.transition(uow, ASSET, row_id, "staged", "validating")
            entered.set()
            await release.wait()  # hold the row lock while the second writer queues up

    async def second():
        await entered.wait()
        async with rindle.runtime.db.transaction() as uow:
            task = asyncio.ensure_future(transitions.transition(uow, ASSET, row_id, "staged", "deleted"))
            await asyncio.sleep(0.2)
            assert not task.done(), "the second writer should wait for the first one's row lock"
            release.set()
            await task

    results = await asyncio.gather(first(), second(), return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], InvalidTransition) and results[1].actual == "validating"
    assert await state_of(db, schema, ASSET, row_id) == "validating"


async def test_many_racing_writers_one_winner(rindle, db, schema):
    row_id = await new_row(db, schema, VARIANT, "queued")

    async def attempt():
        async with rindle.runtime.db.transaction() as uow:
            await transitions.transition(uow, VARIANT, row_id, "queued", "processing")

    results = await asyncio.gather(*(attempt() for _ in range(8)), return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, InvalidTransition) for r in results if r is not None)


async def test_events_only_after_commit(rindle, db, schema):
    seen = []
    rindle.subscribe(lambda e: seen.append((e, list(committed))))
    committed = []
    asset_id = await new_row(db, schema, ASSET, "staged")
    variant_id = await new_row(db, schema, VARIANT, "planned")
    async with rindle.runtime.db.transaction() as uow:
        await transitions.transition(uow, ASSET, asset_id, "staged", "validating")
        await transitions.transition(uow, VARIANT, variant_id, "planned", "queued")
        assert seen == []
        committed.append(True)
    assert [type(e) for e, _ in seen] == [AssetStateChanged, VariantStateChanged]
    assert all(was_committed for _, was_committed in seen)
    asset_event, variant_event = seen[0][0], seen[1][0]
    assert (asset_event.asset_id, asset_event.profile, asset_event.adapter) == (
        str(asset_id), "avatar", "local")
    assert (variant_event.variant, variant_event.variant_id, variant_event.to_state) == (
        "thumb", str(variant_id), "queued")

    seen.clear()
    with pytest.raises(RuntimeError):
        async with rindle.runtime.db.transaction() as uow:
            await transitions.transition(uow, ASSET, asset_id, "validating", "analyzing")
            raise RuntimeError("host code failed")
    assert seen == []
    assert await state_of(db, schema, ASSET, asset_id) == "validating"


async def test_insert_accepts_only_initial_states(rindle, schema, db):
    asset_id = uuid.uuid4()
    async with rindle.runtime.db.transaction() as uow:
        row = await transitions.insert(uow, ASSET, "staged", id=asset_id, profile="avatar",
                                  storage="local", storage_key=f"k/{asset_id}")
    assert row["state"] == "staged"
    with pytest.raises(ValueError, match="a new asset starts in one of staged, validating"):
        async with rindle.runtime.db.transaction() as uow:
            await transitions.insert(uow, ASSET, "ready", id=uuid.uuid4(), profile="avatar",
                                storage="local", storage_key="k/x")


def test_no_module_writes_a_state_column_around_the_machines():
    source = pathlib.Path(transitions.__file__).parent.parent  # the package
    # "SET state =", "..., state = ..." in an UPDATE, or a state column in an INSERT list
    writes = re.compile(r"\bSET\s+state\s*=|,\s*state\s*=\s*[$']|INSERT\s+INTO\s+\S+\s*\([^)]*\bstate\b",
                        re.IGNORECASE)
    assert writes.search(pathlib.Path(transitions.__file__).read_text()), "the pattern must see real writes"
    offenders = [str(path.relative_to(source)) for path in source.rglob("*.py")
                 if path.name != "transitions.py" and writes.search(path.read_text())]
    assert offenders == []


async def test_a_walk_stores_the_last_state_and_announces_every_step(rindle, db, schema):
    events = []
    rindle.subscribe(events.append)
    asset_id = await new_row(db, schema, ASSET, "analyzing")
    async with rindle.runtime.db.transaction() as uow:
        row = await transitions.walk(uow, ASSET, asset_id, ("analyzing", "promoting", "available", "ready"),
                                width=7)
    assert (row["state"], row["width"]) == ("ready", 7)
    assert await state_of(db, schema, ASSET, asset_id) == "ready"
    assert [(e.from_state, e.to_state) for e in events] == [
        ("analyzing", "promoting"), ("promoting", "available"), ("available", "ready")]
    other = await new_row(db, schema, ASSET, "analyzing")
    with pytest.raises(InvalidTransition):  # analyzing -> ready skips the edges in between
        async with rindle.runtime.db.transaction() as uow:
            await transitions.walk(uow, ASSET, other, ("analyzing", "ready"))
    with pytest.raises(InvalidTransition):  # the row is not where the walk starts
        async with rindle.runtime.db.transaction() as uow:
            await transitions.walk(uow, ASSET, other, ("promoting", "available"))
    assert await state_of(db, schema, ASSET, other) == "analyzing"


async def test_transition_many_moves_only_rows_still_in_the_state(rindle, db, schema):
    events = []
    rindle.subscribe(events.append, VariantStateChanged)
    queued = [await new_row(db, schema, VARIANT, "queued") for _ in range(3)]
    moved_on = await new_row(db, schema, VARIANT, "failed")
    async with rindle.runtime.db.transaction() as uow:
        rows = await transitions.transition_many(uow, VARIANT, [*queued, moved_on], "queued", "processing")
    assert sorted(r["id"] for r in rows) == sorted(queued)
    assert [await state_of(db, schema, VARIANT, i) for i in queued] == ["processing"] * 3
    assert await state_of(db, schema, VARIANT, moved_on) == "failed"
    assert sorted(e.variant_id for e in events) == sorted(str(i) for i in queued)


async def test_insert_many_creates_rows_walked_from_an_initial_state(rindle, db, schema):
    events = []
    rindle.subscribe(events.append, VariantStateChanged)
    asset_id = await new_row(db, schema, ASSET, "processing")
    rows = [{"id": uuid.uuid4(), "asset_id": asset_id, "name": name, "recipe_digest": "d"}
            for name in ("a", "b")]
    async with rindle.runtime.db.transaction() as uow:
        created = await transitions.insert_many(uow, VARIANT, rows, ("planned", "queued"))
    assert {r["state"] for r in created} == {"queued"}
    assert [(e.variant, e.from_state, e.to_state) for e in events] == [
        ("a", "planned", "queued"), ("b", "planned", "queued")]
    with pytest.raises(ValueError, match="starts in one of planned"):
        async with rindle.runtime.db.transaction() as uow:
            await transitions.insert_many(uow, VARIANT, rows, ("queued", "processing"))
