"""Rows of ``tus_uploads``: what a resumable (tus) session carries beyond its upload session."""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg
import msgspec

from ..storage.base import Part

if TYPE_CHECKING:
    from . import Connection


class ResumableRow(msgspec.Struct, frozen=True, kw_only=True):
    """What a resumable (tus) session carries beyond its upload session."""

    owner: str | None
    metadata: dict[str, str]
    parts: list[tuple[Part, int]]  # each flushed part and its size, in part-number order


async def insert(conn: Connection, schema: str, session_id: UUID, *, owner: str | None,
                 metadata: dict[str, str]) -> None:
    """Record the owner and client metadata of a new resumable session.

    conn: the connection of the transaction that inserts the session.
    schema: rindle_async's schema.
    session_id: the upload session.
    owner: who the host's authorization named, or None.
    metadata: the client's Upload-Metadata, decoded.
    """
    await conn.execute(f"INSERT INTO {schema}.tus_uploads (session_id, owner, metadata)"
                       " VALUES ($1, $2, $3::jsonb)", session_id, owner,
                       msgspec.json.encode(metadata).decode())


async def get(conn: asyncpg.Connection | asyncpg.Pool, schema: str, session_id: UUID) -> ResumableRow | None:
    """The resumable side of session ``session_id``; None when it is not a resumable session.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    session_id: the upload session.
    """
    record = await conn.fetchrow(
        f"SELECT t.owner, t.metadata::text AS metadata, s.parts::text AS parts FROM {schema}.tus_uploads t"
        f" JOIN {schema}.upload_sessions s ON s.id = t.session_id WHERE t.session_id = $1", session_id)
    if record is None:
        return None
    parts = [(Part(part_number=p["part_number"], etag=p["etag"]), p["size"])
             for p in msgspec.json.decode(record["parts"])]
    return ResumableRow(owner=record["owner"], metadata=msgspec.json.decode(record["metadata"]),
                        parts=sorted(parts, key=lambda item: item[0].part_number))
