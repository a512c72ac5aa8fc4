"""Reading upload sessions back: by id (``get_upload``), by storage key (``find_upload``),
and the parts the store holds for a multipart session (``list_parts``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..db import sessions
from ..db.sessions import SessionRow
from ..errors import NotFound, Unsupported, ValidationError
from ..lifecycle.machines import UPLOAD_SESSION
from ..models import UploadSession
from ..profiles import find_profile
from ..storage.base import StoredPart
from .sessions import load, storage_of

if TYPE_CHECKING:
    from ..runtime import Runtime


async def get_upload(rt: Runtime, session_id: str) -> UploadSession:
    """The upload session, with the parts the store holds while a multipart one is open.

    rt: the runtime of the opened Rindle.
    session_id: the session from ``initiate_upload``.
    NotFound when there is no such session.
    """
    return await _public(rt, await load(rt, session_id))


async def find_upload(rt: Runtime, profile: str, storage_key: str) -> UploadSession:
    """The newest upload session of ``profile`` whose object is ``storage_key``.

    rt: the runtime of the opened Rindle.
    profile: the profile the upload was started under.
    storage_key: the key the ticket's upload writes (``UploadTicket.storage_key``).
    NotFound when no session of that profile writes the key.
    """
    storage = find_profile(rt.profiles, profile).storage
    row = await sessions.latest_for_key(rt.pool, rt.schema, storage, storage_key)
    if row is None or row.profile != profile:
        raise NotFound(f"no upload session of profile {profile!r} writes {storage_key!r}; "
                       "use the key the upload's ticket named")
    return await _public(rt, row)


async def list_parts(rt: Runtime, session_id: str) -> list[StoredPart]:
    """The parts the store holds for an open multipart session (number, ETag, size), in order.

    rt: the runtime of the opened Rindle.
    session_id: a multipart session from ``initiate_upload(..., multipart=True)``.
    ValidationError for a session that is not multipart or no longer open; Unsupported where
    the store cannot list parts (s3rver).
    """
    session = await load(rt, session_id)
    if not session.multipart or not session.multipart_upload_id:
        raise ValidationError(f"upload session {session_id} is {session.strategy}, not multipart; "
                              "it has no parts")
    if session.state not in UPLOAD_SESSION.group("writable"):
        raise ValidationError(f"upload session {session_id} is {session.state}; its parts are no "
                              "longer listed")
    return await _stored_parts(rt, session)


async def _stored_parts(rt: Runtime, session: SessionRow) -> list[StoredPart]:
    storage = storage_of(rt, session.storage)
    if not storage.capabilities.list_parts:
        raise Unsupported(f"storage {session.storage!r} ({storage.adapter}) cannot list the parts "
                          "of a multipart upload")
    try:
        return await storage.list_parts(session.storage_key, session.multipart_upload_id or "")
    except NotFound:
        return []  # completed or aborted at the store since the row was read


async def _public(rt: Runtime, row: SessionRow) -> UploadSession:
    parts = None
    if row.multipart and row.multipart_upload_id and row.state in UPLOAD_SESSION.group("writable"):
        try:
            parts = await _stored_parts(rt, row)
        except Unsupported:
            parts = None
    return UploadSession(id=str(row.id), asset_id=str(row.asset_id), profile=row.profile, state=row.state,
                         strategy=row.strategy, storage_key=row.storage_key, filename=row.filename,
                         content_type=row.content_type, byte_size=row.byte_size, expires_at=row.expires_at,
                         upload_id=row.multipart_upload_id, part_size=row.part_size, reason=row.reason,
                         owner=row.owner, parts=parts)
