"""Reads of ``upload_sessions``, as typed rows (state changes go through ``lifecycle``)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec


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
    profile: str
    storage: str
    asset_state: str

    @property
    def multipart(self) -> bool:
        return self.strategy == "multipart"


_COLUMNS = ("s.id, s.asset_id, s.state, s.strategy, s.storage_key, s.filename, s.content_type,"
            " s.byte_size, s.checksum, s.multipart_upload_id, s.part_size, s.expires_at, s.reason,"
            " a.profile, a.storage, a.state AS asset_state")


def _row(record: asyncpg.Record | None) -> SessionRow | None:
    return None if record is None else SessionRow(**dict(record))


async def get(conn: asyncpg.Connection | asyncpg.Pool, schema: str, session_id: UUID) -> SessionRow | None:
    """The session ``session_id``; None when it does not exist.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    session_id: the session.
    """
    return _row(await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM {schema}.upload_sessions s JOIN {schema}.assets a"
        " ON a.id = s.asset_id WHERE s.id = $1", session_id))


async def latest_for_key(conn: asyncpg.Connection | asyncpg.Pool, schema: str, storage: str,
                         key: str) -> SessionRow | None:
    """The newest session whose upload URL writes ``key`` in ``storage``; None if there is none.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    storage: the storage's name.
    key: the storage key.
    """
    return _row(await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM {schema}.upload_sessions s JOIN {schema}.assets a"
        " ON a.id = s.asset_id WHERE s.storage_key = $1 AND a.storage = $2"
        " ORDER BY s.created_at DESC LIMIT 1", key, storage))
