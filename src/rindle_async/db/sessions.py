"""The SQL of ``upload_sessions``, reads as typed rows (state changes go through ``lifecycle``)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg
import msgspec

from ..lifecycle.machines import UPLOAD_SESSION
from ..storage.base import Part
from . import fetch_as, fetch_one_as

if TYPE_CHECKING:
    from . import Connection


class SessionRow(msgspec.Struct, frozen=True, kw_only=True):
    """An upload session with its asset's profile, storage and state."""

    id: UUID
    asset_id: UUID
    state: str
    strategy: str
    storage_key: str
    filename: str | None
    content_type: str  # declared at initiate_upload
    byte_size: int | None  # None where the store (POST policy) or completion (multipart) checks the limit
    checksum: str | None
    multipart_upload_id: str | None
    part_size: int | None
    expires_at: datetime
    reason: str | None
    owner: str | None  # who the host said the upload is for, if it said
    profile: str
    storage: str
    asset_state: str

    @property
    def length(self) -> int:
        """The declared size, for a session that must have one (a presigned PUT, tus)."""
        if self.byte_size is None:
            raise ValueError(f"upload session {self.id} declared no size")
        return self.byte_size

    @property
    def multipart(self) -> bool:
        return self.strategy == "multipart"


_COLUMNS = ("s.id, s.asset_id, s.state, s.strategy, s.storage_key, s.filename, s.content_type,"
            " s.byte_size, s.checksum, s.multipart_upload_id, s.part_size, s.expires_at, s.reason, s.owner,"
            " a.profile, a.storage, a.state AS asset_state")


async def get(conn: asyncpg.Connection | asyncpg.Pool, schema: str, session_id: UUID) -> SessionRow | None:
    """The session ``session_id``; None when it does not exist.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    session_id: the session.
    """
    return await fetch_one_as(
        SessionRow, conn,
        f"SELECT {_COLUMNS} FROM {schema}.upload_sessions s JOIN {schema}.assets a"
        " ON a.id = s.asset_id WHERE s.id = $1", session_id)


async def latest_for_key(conn: asyncpg.Connection | asyncpg.Pool, schema: str, storage: str,
                         key: str) -> SessionRow | None:
    """The newest session whose upload URL writes ``key`` in ``storage``; None if there is none.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    storage: the storage's name.
    key: the storage key.
    """
    return await fetch_one_as(
        SessionRow, conn,
        f"SELECT {_COLUMNS} FROM {schema}.upload_sessions s JOIN {schema}.assets a"
        " ON a.id = s.asset_id WHERE s.storage_key = $1 AND a.storage = $2"
        " ORDER BY s.created_at DESC LIMIT 1", key, storage)


class ExpiredSession(msgspec.Struct, frozen=True, kw_only=True):
    """An open session past its deadline, as abort reads it."""

    id: UUID
    state: str
    expires_at: datetime
    asset_id: UUID
    storage_key: str
    multipart_upload_id: str | None
    storage: str
    asset_state: str


# literals, not parameters: the planner matches a partial index's predicate only then
_OPEN = UPLOAD_SESSION.literal("open")


async def expired_page(conn: Connection | asyncpg.Pool, schema: str, now: datetime,
                       after: tuple[datetime, UUID], limit: int) -> list[ExpiredSession]:
    """The next page of open sessions past their deadline at ``now``, in (deadline, id) order.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    now: the clock.
    after: the (deadline, id) of the last session of the page before.
    limit: sessions per page.
    """
    return await fetch_as(
        ExpiredSession, conn,
        f"SELECT s.id, s.state, s.expires_at, s.asset_id, s.storage_key, s.multipart_upload_id,"
        f" a.storage, a.state AS asset_state FROM {schema}.upload_sessions s"
        f" JOIN {schema}.assets a ON a.id = s.asset_id"
        f" WHERE s.state IN {_OPEN} AND s.expires_at < $1 AND (s.expires_at, s.id) > ($2, $3)"
        f" ORDER BY s.expires_at, s.id LIMIT $4", now, *after, limit)


async def count_expired(conn: Connection | asyncpg.Pool, schema: str, now: datetime) -> int:
    """How many open sessions are past their deadline at ``now``.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    now: the clock.
    """
    return int(await conn.fetchval(
        f"SELECT count(*) FROM {schema}.upload_sessions WHERE state IN {_OPEN} AND expires_at < $1", now))


async def open_multipart_ids(conn: Connection | asyncpg.Pool, schema: str,
                             upload_ids: list[str]) -> set[str]:
    """Those of ``upload_ids`` (a store's multipart uploads) that an open session owns.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    upload_ids: multipart upload ids.
    """
    if not upload_ids:
        return set()
    rows = await conn.fetch(
        f"SELECT multipart_upload_id FROM {schema}.upload_sessions"
        f" WHERE multipart_upload_id = ANY($1::text[]) AND state IN {_OPEN}", upload_ids)
    return {row["multipart_upload_id"] for row in rows}


async def unfinished_multipart(conn: Connection | asyncpg.Pool, schema: str,
                               asset_id: UUID) -> list[tuple[str, str]]:
    """(storage key, multipart upload id) of the asset's multipart uploads not completed.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    rows = await conn.fetch(
        f"SELECT storage_key, multipart_upload_id FROM {schema}.upload_sessions"
        " WHERE asset_id = $1 AND multipart_upload_id IS NOT NULL AND state <> 'completed'", asset_id)
    return [(r["storage_key"], r["multipart_upload_id"]) for r in rows]


async def add_part(conn: Connection | asyncpg.Pool, schema: str, session_id: UUID, part: Part,
                   size: int) -> bool:
    """Record a part a resumable upload flushed to the store, unless another writer recorded that
    part number first; True if recorded.

    conn: a connection or the pool (one statement).
    schema: rindle_async's schema.
    session_id: the upload session.
    part: the part the store accepted.
    size: its size in bytes.
    """
    entry = msgspec.json.encode([{"part_number": part.part_number, "etag": part.etag, "size": size}])
    status = await conn.execute(
        f"UPDATE {schema}.upload_sessions SET parts = parts || $2::jsonb, updated_at = now()"
        " WHERE id = $1 AND jsonb_array_length(parts) = $3", session_id, entry.decode(),
        part.part_number - 1)
    return bool(status == "UPDATE 1")
