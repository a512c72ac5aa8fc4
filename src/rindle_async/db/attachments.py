"""Reads of ``attachments`` that decide whether an asset is still held."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    from . import Connection


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
