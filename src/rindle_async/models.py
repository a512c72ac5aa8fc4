"""Row structs returned by the public API (msgspec, so they encode to JSON as they are)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from .placeholders import Placeholder
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


class ImageMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """What an image says about itself, the documented subset promotion reads (never GPS or
    any other EXIF field; docs/security.md lists what leaves the system).

    captured_at: when it was taken (EXIF DateTimeOriginal, ISO 8601, with its offset if given).
    camera_make: the camera's maker (EXIF Make).
    camera_model: the camera's model (EXIF Model).
    orientation: the EXIF orientation, 1..8 (1: upright); variants are rendered upright.
    color_space: libvips' interpretation, e.g. "srgb", "b-w", "cmyk".
    icc_profile: whether it embeds an ICC colour profile.
    has_alpha: whether it has an alpha channel.
    animated: whether it is an animation (GIF, WebP) of more than one frame.
    frames: its frame count (pages), 1 for a still image.
    """

    captured_at: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    orientation: int = 1
    color_space: str | None = None
    icc_profile: bool = False
    has_alpha: bool = False
    animated: bool = False
    frames: int = 1


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
    #: what a page paints before the image loads; set by the first render (at promotion for a
    #: profile that renders nothing then); None before, and for files that are not images
    placeholder: Placeholder | None = None
    #: what the image says about itself, read at promotion (None before, and for other files)
    image: ImageMetadata | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record, variants: Iterable[asyncpg.Record] = ()) -> Asset:
        return cls(id=str(row["id"]), profile=row["profile"], state=row["state"],
                   filename=row["filename"], content_type=row["content_type"],
                   byte_size=row["byte_size"], width=row["width"], height=row["height"],
                   reason=row["reason"], created_at=row["created_at"],
                   variants={v["name"]: AssetVariant.from_row(v) for v in variants},
                   **_from_metadata(row["metadata"]))


class _Metadata(msgspec.Struct):
    placeholder: Placeholder | None = None
    image: ImageMetadata | None = None


def _from_metadata(metadata: str | None) -> dict[str, Any]:
    """The placeholder and image metadata promotion stored in an asset's ``metadata`` (JSON text)."""
    if not metadata:
        return {}
    found = msgspec.json.decode(metadata, type=_Metadata)
    return {"placeholder": found.placeholder, "image": found.image}


def placeholder_value(value: str | None) -> Placeholder | None:
    """The placeholder from its own JSON text (``metadata->>'placeholder'``), if any.

    value: the JSON text, or None.
    """
    return msgspec.json.decode(value, type=Placeholder) if value else None


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


class Delivered(msgspec.Struct, frozen=True, kw_only=True):
    """One asset's entry of ``urls(..., placeholders=True)``.

    url: the URL of ``variant=`` (or of the original), None when it cannot be served.
    urls: with ``variants=``, variant name -> URL or None.
    placeholder: what to paint before the image loads (None before promotion).
    """

    url: str | None = None
    urls: dict[str, str | None] | None = None
    placeholder: Placeholder | None = None


class PictureSource(msgspec.Struct, frozen=True, kw_only=True):
    """One ``<source>`` of a ``<picture>``: a format and its ``srcset``."""

    type: str
    srcset: str


class Picture(msgspec.Struct, frozen=True, kw_only=True):
    """What a ``<picture>`` element needs: ``sources`` in the order a browser should try them
    (AVIF, WebP, ...), then the ``<img>`` in the most widely readable format.

    sources: the ``<source type=... srcset=...>`` elements, best format first.
    src: the ``<img>``'s URL, its widest rendition.
    srcset: the ``<img>``'s ``srcset`` (its format's renditions with width descriptors).
    type: the ``<img>``'s content type.
    width: the width of ``src`` in pixels (for ``width=``, which keeps the layout still).
    height: the height of ``src`` in pixels.
    placeholder: what to paint before the image loads.
    """

    sources: list[PictureSource]
    src: str
    srcset: str
    type: str
    width: int
    height: int
    placeholder: Placeholder | None = None
