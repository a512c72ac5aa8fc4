"""Row structs returned by the public API (msgspec, so they encode to JSON as they are)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import asyncpg
import msgspec

from .storage.base import StoredPart


class AssetVariant(msgspec.Struct, frozen=True, kw_only=True):
    """One rendition of an asset, as stored."""

    name: str
    state: str
    width: int | None
    height: int | None
    content_type: str | None
    byte_size: int | None
    reason: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> AssetVariant:
        return cls(name=row["name"], state=row["state"], width=row["width"], height=row["height"],
                   content_type=row["content_type"], byte_size=row["byte_size"], reason=row["reason"])


class Asset(msgspec.Struct, frozen=True, kw_only=True):
    """An uploaded file, its lifecycle state and its variants by name."""

    id: str
    profile: str
    state: str
    filename: str | None
    content_type: str | None
    byte_size: int | None
    width: int | None
    height: int | None
    reason: str | None
    created_at: datetime
    variants: dict[str, AssetVariant] = {}

    @classmethod
    def from_row(cls, row: asyncpg.Record, variants: Iterable[asyncpg.Record] = ()) -> Asset:
        return cls(id=str(row["id"]), profile=row["profile"], state=row["state"],
                   filename=row["filename"], content_type=row["content_type"],
                   byte_size=row["byte_size"], width=row["width"], height=row["height"],
                   reason=row["reason"], created_at=row["created_at"],
                   variants={v["name"]: AssetVariant.from_row(v) for v in variants})


class Attachment(msgspec.Struct, frozen=True, kw_only=True):
    """An asset held by a host record in a named slot."""

    asset_id: str
    owner_type: str
    owner_id: str
    slot: str
    created_at: datetime


class UploadTicket(msgspec.Struct, frozen=True, kw_only=True):
    """What a client needs to send the bytes of a direct upload.

    The client sends the file with ``method`` to ``url`` with exactly ``headers``
    before ``expires_at``, then the host calls ``verify_upload(session_id)``.
    Multipart tickets carry ``upload_id`` and ``part_size`` instead of a URL for the
    whole file; part URLs come from ``presign_part``.  A POST-policy ticket (``method``
    "POST") carries the form ``fields`` to send before the file.  ``storage_key`` is where
    the object lands (``find_upload`` finds the session from it).
    """

    session_id: str
    asset_id: str
    method: str
    url: str | None
    headers: dict[str, str]
    expires_at: datetime
    session_expires_at: datetime
    upload_id: str | None = None
    part_size: int | None = None
    fields: dict[str, str] | None = None
    storage_key: str | None = None


class UploadSession(msgspec.Struct, frozen=True, kw_only=True):
    """An upload session read back: its state, deadline and, for multipart, the parts stored.

    ``byte_size`` is the declared size, or None where the store or completion checks the limit;
    ``owner`` is who the host said the upload is for (``initiate_upload(owner=...)``);
    ``parts`` lists what the store holds for an open multipart session (None for other
    strategies, for closed sessions and where the store cannot list parts).
    """

    id: str
    asset_id: str
    profile: str
    state: str
    strategy: str
    storage_key: str
    filename: str | None
    content_type: str
    byte_size: int | None
    expires_at: datetime
    upload_id: str | None
    part_size: int | None
    reason: str | None
    owner: str | None = None
    parts: list[StoredPart] | None = None
