"""The SQL of ``attachments``, rows typed as ``AttachmentRow`` (the public ``Attachment`` plus
its id)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg
import msgspec

from ..models import Attachment
from . import fetch_as, fetch_one_as

if TYPE_CHECKING:
    from . import Connection


class AttachmentRow(msgspec.Struct, frozen=True, kw_only=True):
    """One attachment as stored."""

    id: UUID
    asset_id: UUID
    owner_type: str
    owner_id: str
    slot: str
    created_at: datetime

    def public(self) -> Attachment:
        """The attachment as the public API returns it."""
        return Attachment(asset_id=str(self.asset_id), owner_type=self.owner_type, owner_id=self.owner_id,
                          slot=self.slot, created_at=self.created_at)


_COLUMNS = "id, asset_id, owner_type, owner_id, slot, created_at"


async def held(conn: Connection, schema: str, ids: Iterable[UUID]) -> set[UUID]:
    """Those of ``ids`` that at least one attachment holds.

    One index probe per id: an IN or a join may be planned as a scan of every attachment.
    conn: a connection (inside the transaction that locked the assets, to see commits since).
    schema: rindle_async's schema.
    ids: the assets.
    """
    rows = await conn.fetch(
        f"SELECT ids.id FROM unnest($1::uuid[]) AS ids(id) WHERE (SELECT true"
        f" FROM {schema}.attachments t WHERE t.asset_id = ids.id LIMIT 1)", list(ids))
    return {row["id"] for row in rows}


async def in_slot(conn: Connection | asyncpg.Pool, schema: str, owner_type: str, owner_id: str,
                  slot: str) -> AttachmentRow | None:
    """The attachment in ``(owner_type, owner_id, slot)``; None when the slot is empty.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    owner_type: the host record's type.
    owner_id: the host record's id, as text.
    slot: the slot on the record.
    """
    return await fetch_one_as(
        AttachmentRow, conn,
        f"SELECT {_COLUMNS} FROM {schema}.attachments WHERE owner_type = $1 AND owner_id = $2 AND slot = $3",
        owner_type, owner_id, slot)


async def in_slots(conn: Connection | asyncpg.Pool, schema: str, owner_type: str, owner_ids: list[str],
                   slot: str) -> list[AttachmentRow]:
    """The attachments of many records' slot, in one query.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    owner_type: the host records' type.
    owner_ids: the host records' ids, as text.
    slot: the slot on each record.
    """
    return await fetch_as(
        AttachmentRow, conn,
        f"SELECT {_COLUMNS} FROM {schema}.attachments WHERE owner_type = $1 AND slot = $2"
        " AND owner_id = ANY($3::text[])", owner_type, slot, owner_ids)


async def insert(conn: Connection, schema: str, asset_id: UUID, owner_type: str, owner_id: str,
                 slot: str) -> AttachmentRow:
    """Attach ``asset_id`` in an empty slot; return the new row.

    conn: a connection inside the transaction that holds the slot's lock.
    schema: rindle_async's schema.
    asset_id: the asset.
    owner_type: the host record's type.
    owner_id: the host record's id, as text.
    slot: the slot on the record.
    """
    row = await fetch_one_as(
        AttachmentRow, conn,
        f"INSERT INTO {schema}.attachments (id, asset_id, owner_type, owner_id, slot)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}", uuid.uuid4(), asset_id, owner_type, owner_id,
        slot)
    assert row is not None  # INSERT ... RETURNING gives back the row it inserted
    return row


async def delete(conn: Connection, schema: str, attachment_id: UUID) -> None:
    """Delete one attachment.

    conn: a connection inside the transaction that holds the slot's lock.
    schema: rindle_async's schema.
    attachment_id: the attachment.
    """
    await conn.execute(f"DELETE FROM {schema}.attachments WHERE id = $1", attachment_id)


async def take(conn: Connection, schema: str, owner_type: str, owner_id: str,
               slot: str) -> AttachmentRow | None:
    """Delete the slot's attachment and return it; None when the slot was empty.

    conn: a connection inside the transaction that holds the slot's lock.
    schema: rindle_async's schema.
    owner_type: the host record's type.
    owner_id: the host record's id, as text.
    slot: the slot on the record.
    """
    return await fetch_one_as(
        AttachmentRow, conn,
        f"DELETE FROM {schema}.attachments WHERE owner_type = $1 AND owner_id = $2 AND slot = $3"
        f" RETURNING {_COLUMNS}", owner_type, owner_id, slot)


async def of_owner(conn: Connection | asyncpg.Pool, schema: str, owner_type: str,
                   owner_id: str) -> list[AttachmentRow]:
    """Every attachment of one host record, by slot.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    owner_type: the host record's type.
    owner_id: the host record's id, as text.
    """
    return await fetch_as(
        AttachmentRow, conn,
        f"SELECT {_COLUMNS} FROM {schema}.attachments WHERE owner_type = $1 AND owner_id = $2 ORDER BY slot",
        owner_type, owner_id)


async def held_by_others(conn: Connection | asyncpg.Pool, schema: str, ids: list[UUID], owner_type: str,
                         owner_id: str) -> set[UUID]:
    """Those of ``ids`` that an attachment of another record than ``(owner_type, owner_id)`` holds.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    ids: the assets.
    owner_type: the record's type.
    owner_id: the record's id, as text.
    """
    rows = await conn.fetch(
        f"SELECT ids.id FROM unnest($1::uuid[]) AS ids(id) WHERE (SELECT true FROM {schema}.attachments t"
        " WHERE t.asset_id = ids.id AND (t.owner_type, t.owner_id) <> ($2, $3) LIMIT 1)",
        ids, owner_type, owner_id)
    return {row["id"] for row in rows}
