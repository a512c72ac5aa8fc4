"""Reading assets with their variants."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import asyncpg

from .db import assets
from .errors import NotFound, ValidationError
from .models import Asset

if TYPE_CHECKING:
    from .db import Connection


def asset_uuid(asset_id: object, what: str = "asset_id") -> uuid.UUID:
    """``asset_id`` as a UUID, or a ValidationError naming the bad value.

    asset_id: a UUID or its string form.
    what: the argument's name in the error message.
    """
    try:
        return uuid.UUID(str(asset_id))
    except ValueError:
        raise ValidationError(f"{what} {asset_id!r} is not a UUID") from None


async def get_asset(conn: Connection | asyncpg.Pool, schema: str, asset_id: object) -> Asset:
    """The asset with its variants by name; NotFound when it does not exist.

    conn: a connection or the pool.
    schema: rindle_async's schema.
    asset_id: the asset.
    """
    found = await assets.with_variants(conn, schema, asset_uuid(asset_id))
    if found is None:
        raise NotFound(f"asset {asset_id} does not exist")
    return Asset.from_row(*found)
