"""Attachments: an asset held by a host record in a named slot.

Attaching to a taken slot replaces what was there; an asset that is held by no
attachment when the transaction commits (after a replacement or a detach) is
tombstoned (``lifecycle.tombstone``: ``deleted``, its purge staged in that same
transaction); moving an asset between slots inside one transaction does not
tombstone it.  Changes to one slot are
serialised with a transaction-scoped advisory lock, and the assets involved are
locked in id order, so concurrent attaches end with one attachment per slot, no
orphan and no deadlock.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

import asyncpg

from .assets import asset_uuid as to_uuid
from .db import assets
from .db import attachments as held
from .db.transaction import UnitOfWork
from .errors import NotFound, ValidationError
from .lifecycle.machines import ASSET
from .lifecycle.tombstone import release_at_commit
from .models import Attachment

if TYPE_CHECKING:
    from .db import Connection


def check_owner(owner_type: str, owner_id: object, slot: str | None = None) -> str:
    """The owner id as text; ValidationError naming a bad owner type, id or slot.

    owner_type: the host record's type.
    owner_id: the host record's id (a string, int or UUID).
    slot: the slot on the record; None when no slot is named (erasure).
    """
    for name, value in (("owner_type", owner_type), ("slot", slot if slot is not None else "-")):
        if not isinstance(value, str) or not value or len(value) > 255:
            raise ValidationError(f"{name}={value!r} must be a non-empty string of at most 255 characters")
    if isinstance(owner_id, bool) or not isinstance(owner_id, (str, int, uuid.UUID)):
        raise ValidationError(f"owner_id={owner_id!r} must be a string, int or UUID")
    owner = str(owner_id)
    if not owner or len(owner) > 255:
        raise ValidationError(f"owner_id={owner_id!r} must be 1..255 characters as text")
    return owner


async def lock_slot(uow: UnitOfWork, owner_type: str, owner_id: str, slot: str) -> None:
    """Serialise the changes to one slot until the transaction ends (an advisory lock).

    uow: the unit of work.
    owner_type: the host record's type.
    owner_id: the host record's id, as text.
    slot: the slot on the record.
    """
    name = f"{uow.schema}\x00{owner_type}\x00{owner_id}\x00{slot}".encode()
    key = int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)
    await uow.conn.execute("SELECT pg_advisory_xact_lock($1)", key)


async def attach(uow: UnitOfWork, asset_id: object, *, owner_type: str, owner_id: object,
                 slot: str) -> Attachment:
    """Attach an asset to ``(owner_type, owner_id, slot)``, replacing what the slot held.

    uow: the unit of work (the host's transaction when it passed ``conn=``).
    asset_id: the asset to attach; it must be verified and not quarantined or deleted.
    owner_type: the host record's type, e.g. ``"user"``.
    owner_id: the host record's id (stored as text).
    slot: the slot on the record, e.g. ``"avatar"``.
    """
    owner = check_owner(owner_type, owner_id, slot)
    asset_uuid = to_uuid(asset_id)
    await lock_slot(uow, owner_type, owner, slot)
    current = await held.in_slot(uow.conn, uow.schema, owner_type, owner, slot)
    # Lock the incoming and the outgoing asset in id order, so attaches that cross
    # (X into A's slot while Y goes into B's) wait for each other instead of deadlocking.
    involved = {asset_uuid} | ({current.asset_id} if current is not None else set())
    state = (await assets.lock_states(uow.conn, uow.schema, involved)).get(asset_uuid)
    if state is None:
        raise NotFound(f"asset {asset_id} does not exist")
    if state not in ASSET.group("attachable"):
        hint = {"staged": "verify its upload first",
                "quarantined": "it was refused; see its reason",
                "deleted": "it was detached and is being purged"}.get(state, "")
        raise ValidationError(f"asset {asset_id} is {state} and cannot be attached; {hint}")
    if current is not None and current.asset_id == asset_uuid:
        return current.public()
    if current is not None:
        await held.delete(uow.conn, uow.schema, current.id)
    row = await held.insert(uow.conn, uow.schema, asset_uuid, owner_type, owner, slot)
    if current is not None:
        release_at_commit(uow, current.asset_id)
    return row.public()


async def detach(uow: UnitOfWork, *, owner_type: str, owner_id: object, slot: str) -> Attachment | None:
    """Remove the slot's attachment; return it, or None when the slot was empty.

    uow: the unit of work (the host's transaction when it passed ``conn=``).
    owner_type: the host record's type.
    owner_id: the host record's id.
    slot: the slot on the record.
    """
    owner = check_owner(owner_type, owner_id, slot)
    await lock_slot(uow, owner_type, owner, slot)
    row = await held.take(uow.conn, uow.schema, owner_type, owner, slot)
    if row is None:
        return None
    release_at_commit(uow, row.asset_id)
    return row.public()


async def attachment(conn: Connection | asyncpg.Pool, schema: str, *, owner_type: str,
                     owner_id: object, slot: str) -> Attachment | None:
    """The attachment in ``(owner_type, owner_id, slot)``, or None.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    owner_type: the host record's type.
    owner_id: the host record's id.
    slot: the slot on the record.
    """
    owner = check_owner(owner_type, owner_id, slot)
    row = await held.in_slot(conn, schema, owner_type, owner, slot)
    return None if row is None else row.public()


async def attachments(conn: Connection | asyncpg.Pool, schema: str, *, owner_type: str,
                      owner_ids: Iterable[object], slot: str) -> dict[str, Attachment]:
    """The attachments of many records' slot in one query, by owner id (text).

    conn: a connection or the pool.
    schema: rindle_async's schema.
    owner_type: the host records' type.
    owner_ids: the host records' ids; those with an empty slot are absent from the result.
    slot: the slot on each record.
    """
    owners = [check_owner(owner_type, owner_id, slot) for owner_id in owner_ids]
    rows = await held.in_slots(conn, schema, owner_type, owners, slot)
    return {row.owner_id: row.public() for row in rows}
