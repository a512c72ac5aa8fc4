"""The only code that writes a state column (machines in ``machines.py``).

A transition is a conditional UPDATE (``... WHERE id = $1 AND state = $2``): it
fails with :class:`InvalidTransition` when the edge is not in the table or when
the row moved on first, so two racing writers can never both win.  Every
persisted transition queues its event on the unit of work, delivered after
commit.  Rows are created through :func:`insert`, which accepts only a
machine's initial states.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any, cast

import asyncpg

from ..errors import InvalidTransition, NotFound
from .machines import StateMachine

if TYPE_CHECKING:
    from ..db.transaction import UnitOfWork

_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")


def _columns(values: Mapping[str, Any]) -> list[str]:
    names = list(values)
    for name in names:
        if not _COLUMN.match(name) or name in ("state", "state_changed_at", "updated_at"):
            raise ValueError(f"{name!r} cannot be written alongside a transition")
    return names


async def transition(uow: UnitOfWork, machine: StateMachine, row_id: object, from_state: str | None,
                     to_state: str, **changes: Any) -> asyncpg.Record:
    """Move one row from ``from_state`` to ``to_state`` and queue its event.

    uow: the unit of work whose transaction persists the change.
    machine: ASSET, VARIANT or UPLOAD_SESSION.
    row_id: the row's id.
    from_state: the state the caller saw; None locks the row and uses its current state.
    to_state: the target state.
    changes: other columns written in the same UPDATE (e.g. ``reason=``).
    Returns the updated row.
    """
    if from_state is None:
        from_state = await uow.conn.fetchval(
            f"SELECT state FROM {uow.schema}.{machine.table} WHERE id = $1 FOR UPDATE", row_id)
        if from_state is None:
            raise NotFound(f"{machine.name} {row_id} does not exist")
    return await walk(uow, machine, row_id, (from_state, to_state), **changes)


async def walk(uow: UnitOfWork, machine: StateMachine, row_id: object, path: Sequence[str],
               **changes: Any) -> asyncpg.Record:
    """Move one row along ``path`` (each step an edge) in one UPDATE; queue an event per step.

    The states in between are passed through, not stored: nothing can read the row
    between two steps of one transaction anyway.
    uow: the unit of work whose transaction persists the change.
    machine: ASSET, VARIANT or UPLOAD_SESSION.
    row_id: the row's id.
    path: the state the caller saw, then each state it moves through, the last one stored.
    changes: other columns written in the same UPDATE.
    Returns the updated row.
    """
    if len(path) < 2:
        raise ValueError(f"a walk needs at least two states, got {list(path)}")
    steps = list(pairwise(path))
    for from_state, to_state in steps:
        machine.check(row_id, from_state, to_state)
    rows = await _update(uow, machine, "t.id = $1", row_id, path[0], path[-1], changes)
    if not rows:
        actual = await uow.conn.fetchval(
            f"SELECT state FROM {uow.schema}.{machine.table} WHERE id = $1", row_id)
        if actual is None:
            raise NotFound(f"{machine.name} {row_id} does not exist")
        raise InvalidTransition(machine.name, row_id, path[0], path[1], actual=actual)
    for from_state, to_state in steps:
        _emit(uow, machine, rows[0], from_state, to_state)
    return rows[0]


async def transition_many(uow: UnitOfWork, machine: StateMachine, row_ids: Sequence[object],
                          from_state: str, to_state: str, **changes: Any) -> list[asyncpg.Record]:
    """Move every row of ``row_ids`` still in ``from_state`` to ``to_state``, in one UPDATE.

    Rows that moved on first are left alone and not returned (their writer won).
    Returns the updated rows; one event is queued for each.
    """
    machine.check(row_ids[0] if row_ids else None, from_state, to_state)
    if not row_ids:
        return []
    rows = await _update(uow, machine, "t.id = ANY($1)", list(row_ids), from_state, to_state, changes)
    for row in rows:
        _emit(uow, machine, row, from_state, to_state)
    return rows


async def _update(uow: UnitOfWork, machine: StateMachine, where: str, ids: object, from_state: str,
                  to_state: str, changes: Mapping[str, Any]) -> list[asyncpg.Record]:
    schema = uow.schema
    names = _columns(changes)
    sets = "".join(f", {name} = ${i}" for i, name in enumerate(names, start=4))
    join, returning = " WHERE", "t.*"
    if machine.join:
        join = f" FROM {schema}.{machine.join} j WHERE j.id = t.asset_id AND"
        returning = "t.*, j.profile AS asset_profile, j.storage AS asset_storage"
    return await uow.conn.fetch(
        f"UPDATE {schema}.{machine.table} t SET state = $3, updated_at = now(),"
        f" state_changed_at = now(){sets}{join} {where} AND t.state = $2 RETURNING {returning}",
        ids, from_state, to_state, *changes.values())


def _emit(uow: UnitOfWork, machine: StateMachine, row: asyncpg.Record, from_state: str,
          to_state: str) -> None:
    # a Record reads like a Mapping (row["name"]), which is all the event factories do
    event = machine.event(cast("Mapping[str, Any]", row), from_state, to_state)
    if event is not None:
        uow.emit(event)


async def insert(uow: UnitOfWork, machine: StateMachine, state: str, **values: Any) -> asyncpg.Record:
    """Create a row of ``machine``'s table in one of its initial states; return it.

    uow: the unit of work whose transaction persists the row.
    machine: ASSET, VARIANT or UPLOAD_SESSION.
    state: an initial state of the machine.
    values: the row's other columns (``id`` included).
    """
    if state not in machine.initial:
        raise ValueError(f"a new {machine.name} starts in one of {', '.join(sorted(machine.initial))},"
                         f" not {state!r}")
    names = _columns(values)
    placeholders = ", ".join(f"${i}" for i in range(2, len(names) + 2))
    row = await uow.conn.fetchrow(
        f"INSERT INTO {uow.schema}.{machine.table} (state, {', '.join(names)})"
        f" VALUES ($1, {placeholders}) RETURNING *", state, *values.values())
    assert row is not None  # INSERT ... RETURNING gives back the row it inserted
    return row


async def insert_many(uow: UnitOfWork, machine: StateMachine, rows: Sequence[Mapping[str, Any]],
                      path: Sequence[str]) -> list[asyncpg.Record]:
    """Create ``rows`` in one INSERT, each in ``path[0]`` (an initial state) walked to ``path[-1]``.

    An event is queued for every step of every row, as if each had been inserted and then
    moved along ``path`` in the same transaction.
    uow: the unit of work whose transaction persists the rows.
    machine: ASSET, VARIANT or UPLOAD_SESSION.
    rows: the rows' columns (the same names in every row, ``id`` included).
    path: an initial state, then each state the rows move through; the last is stored.
    Returns the inserted rows, in the order given.
    """
    if path[0] not in machine.initial:
        raise ValueError(f"a new {machine.name} starts in one of {', '.join(sorted(machine.initial))},"
                         f" not {path[0]!r}")
    steps = list(pairwise(path))
    for from_state, to_state in steps:
        machine.check(None, from_state, to_state)
    if not rows:
        return []
    names = _columns(rows[0])
    width = len(names)
    values = ", ".join(
        "($1, " + ", ".join(f"${2 + r * width + c}" for c in range(width)) + ")" for r in range(len(rows)))
    params = [row[name] for row in rows for name in names]
    schema = uow.schema
    insert = (f"INSERT INTO {schema}.{machine.table} (state, {', '.join(names)}) VALUES {values}"
              " RETURNING *")
    if machine.join:
        insert = (f"WITH t AS ({insert}) SELECT t.*, j.profile AS asset_profile,"
                  f" j.storage AS asset_storage FROM t JOIN {schema}.{machine.join} j ON j.id = t.asset_id")
    order = {row["id"]: i for i, row in enumerate(rows)}
    created = sorted(await uow.conn.fetch(insert, path[-1], *params), key=lambda r: order[r["id"]])
    for row in created:
        for from_state, to_state in steps:
            _emit(uow, machine, row, from_state, to_state)
    return created
