"""The host's avatar feature, independent of the web framework: app.py's routes call these.

Each function takes the current user's id and returns ``(HTTP status, JSON-able dict)``.
The browser sends the file straight to storage with the ticket; the server only
signs, verifies and attaches, and a worker renders the variants.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from rindle_async import (Asset, DeliveryForbidden, NotFound, NotReady, RindleError, StorageError, TooLarge,
                          ValidationError, VerificationFailed)

from media import SHOWN, avatar, rindle

OWNER_TYPE = "user"
SLOT = "avatar"
Reply = tuple[int, dict[str, Any]]
#: The first match wins: TooLarge is a ValidationError.
STATUS = ((TooLarge, 413), (ValidationError, 422), (VerificationFailed, 422), (NotFound, 404),
          (DeliveryForbidden, 403), (StorageError, 503), (RindleError, 409))


class UploadRequest(msgspec.Struct):
    """What the page sends to start an upload: the picked file's name, type and size."""

    filename: str
    content_type: str
    byte_size: int


class AttachRequest(msgspec.Struct):
    """What the Uppy page sends once Uppy finished an upload: the object's storage key."""

    key: str


def replies(call: Callable[..., Awaitable[Reply]]) -> Callable[..., Awaitable[Reply]]:
    """Turn refused input into a JSON error with a fitting status; other errors stay 500s."""

    @functools.wraps(call)
    async def reply(*args: Any) -> Reply:
        try:
            return await call(*args)
        except msgspec.MsgspecError as exc:
            return 400, {"error": f"bad request body: {exc}"}
        except RindleError as exc:
            return next(status for kind, status in STATUS if isinstance(exc, kind)), {"error": str(exc)}
    return reply


@replies
async def show(user_id: str) -> Reply:
    """The user's avatar: its state, its placeholder, per variant its state, size and a URL (the
    original until rendered), and the responsive <picture> once its renditions are rendered."""
    attachment = await rindle.attachment(OWNER_TYPE, user_id, SLOT)
    if attachment is None:
        return 200, {"user": user_id, "asset": None}
    asset = await rindle.get_asset(attachment.asset_id)
    variants = []
    for name in SHOWN:
        row = asset.variants.get(name)  # None until promotion plans the variant
        try:
            url = await rindle.url(asset.id, variant=name, fallback="original")
        except (NotReady, DeliveryForbidden):
            url = None  # not promoted yet, or quarantined
        variants.append({"name": name, "state": row and row.state, "width": row and row.width,
                         "height": row and row.height, "url": url})
    return 200, {"user": user_id, "asset": {
        "id": asset.id, "state": asset.state, "filename": asset.filename,
        "content_type": asset.content_type, "byte_size": asset.byte_size, "width": asset.width,
        "height": asset.height, "reason": asset.reason, "variants": variants,
        "placeholder": msgspec.to_builtins(asset.placeholder),
        "picture": msgspec.to_builtins((await rindle.pictures([asset.id]))[asset.id])}}


@replies
async def start_upload(user_id: str, body: bytes) -> Reply:
    """Open an upload session; the page PUTs the file to ``url`` with exactly ``headers``."""
    wanted = msgspec.json.decode(body, type=UploadRequest)
    ticket = await rindle.initiate_upload(avatar.name, filename=wanted.filename,
                                          content_type=wanted.content_type, byte_size=wanted.byte_size)
    # A real host records (ticket.session_id, user_id) here and checks it in complete_upload.
    return 201, msgspec.to_builtins(ticket)


@replies
async def complete_upload(user_id: str, session_id: str) -> Reply:
    """Verify the stored file and make it the user's avatar (the previous one is purged)."""
    asset = await rindle.verify_upload(session_id)
    await rindle.attach(asset.id, owner_type=OWNER_TYPE, owner_id=user_id, slot=SLOT)
    return await show(user_id)


async def attach_tus_upload(asset: Asset, user_id: str | None) -> None:
    """A finished tus upload (``/files/``) becomes the user's avatar, as complete_upload does."""
    await rindle.attach(asset.id, owner_type=OWNER_TYPE, owner_id=user_id or "", slot=SLOT)


@replies
async def attach_upload(user_id: str, body: bytes) -> Reply:
    """Make an upload Uppy finished (through the Companion routes) the user's avatar."""
    wanted = msgspec.json.decode(body, type=AttachRequest)
    session = await rindle.find_upload(wanted.key, profile=avatar.name)
    if session.owner != user_id:  # the Companion routes kept who authorize() said it was for
        return 403, {"error": "this upload was started by another user"}
    return await complete_upload(user_id, session.id)


@replies
async def remove(user_id: str) -> Reply:
    """Detach the avatar; a worker deletes its files."""
    await rindle.detach(owner_type=OWNER_TYPE, owner_id=user_id, slot=SLOT)
    return 200, {"user": user_id, "asset": None}
