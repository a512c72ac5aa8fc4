"""Resumable uploads: a file sent in chunks over many requests, each upload an upload session.

The session logic behind the tus routes (``rindle_async.contrib.tus``), usable by any
protocol.  ``create_resumable`` refuses at once what the profile forbids (the declared
length over ``max_bytes``, a type it does not allow), then commits a ``staged`` asset and
its session (strategy ``tus``), then prepares the store (``appending``).  Each
``append_resumable`` checks the session (open, its deadline, its owner) and the offset,
then stores the chunk; the chunk that completes the file sniffs the type from the stored
bytes and hands the session to ``verify_upload``, the trust gate every direct upload
passes, which completes the session and stages promotion in one transaction.  The offset
is derived from the stored bytes, so a restarted server resumes where the bytes end.
A session past its deadline is expired (its asset purged) by the first request that
finds it, or by ``abort-incomplete-uploads``.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import AsyncIterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from .. import security
from ..assets import asset_uuid
from ..db import resumable as rows
from ..db.resumable import ResumableRow
from ..db.sessions import SessionRow
from ..errors import NotFound, OffsetMismatch, UploadClosed, ValidationError, VerificationFailed
from ..events import UploadStarted
from ..lifecycle import transitions
from ..lifecycle.machines import ASSET, UPLOAD_SESSION
from ..lifecycle.tombstone import tombstone
from ..models import Asset
from ..profiles import find_profile
from ..storage import keys
from .appending import appender_for
from .proxied import SNIFF_BYTES
from .sessions import MAX_PARTS, MIN_PART_SIZE, UNVERIFIED, check_size, close_aborted, load, now, storage_of
from .verification import verify_upload

if TYPE_CHECKING:
    from ..runtime import Runtime

STRATEGY = "tus"

#: One request at a time appends to a session in this process (tus clients never overlap
#: their own requests, but a retry can arrive while the dropped request is still finishing).
_LOCKS: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = weakref.WeakValueDictionary()


class ResumableUpload(msgspec.Struct, frozen=True, kw_only=True):
    """A resumable upload as a client sees it: how many of its bytes are stored, until when."""

    session_id: str
    asset_id: str
    state: str  # the upload session's state
    offset: int
    length: int
    expires_at: datetime
    owner: str | None
    metadata: dict[str, str]
    completed: bool  # verified and handed to promotion


async def create_resumable(rt: Runtime, profile_name: str, *, length: int, filename: str | None,
                           content_type: str | None, owner: str | None = None,
                           metadata: Mapping[str, str] | None = None) -> ResumableUpload:
    """Open a resumable upload session; its chunks come with ``append_resumable``.

    rt: the runtime of the opened Rindle.
    profile_name: the profile the file is uploaded under.
    length: the file's size in bytes; must be within the profile's max_bytes (TooLarge).
    filename: the client's file name (sanitized before it is stored).
    content_type: the declared type; when None, the type the filename's extension names.
    owner: who may read, append to and terminate the upload (None: anyone with its id).
    metadata: the client's metadata, kept with the session.
    """
    profile = find_profile(rt.profiles, profile_name)
    size = check_size(profile, length, "length")
    if content_type is None or security.known_type(content_type.split(";")[0].strip().lower()) is None:
        content_type = security.type_for_filename(filename) or content_type  # a browser that did not know
    declared = security.check_declared_type(content_type, profile.allow_mime, profile=profile.name)
    known = security.known_type(declared)
    if filename and known:
        security.check_extension(filename, declared, declared=True)
    storage = storage_of(rt, profile.storage)
    appender = appender_for(rt, storage)
    asset_id, session_id = uuid.uuid4(), uuid.uuid4()
    key = keys.new_storage_key(profile.name, str(asset_id), security.extension_for(known) if known else None,
                               role="upload")
    expires_at = now() + timedelta(seconds=profile.upload_ttl)
    part_size = max(MIN_PART_SIZE, -(-size // MAX_PARTS))
    async with rt.db.transaction() as uow:
        await transitions.insert(uow, ASSET, "staged", id=asset_id, profile=profile.name,
                                 storage=profile.storage, storage_key=key,
                                 filename=security.sanitize_filename(filename), content_type=known,
                                 byte_size=size)
        await transitions.insert(uow, UPLOAD_SESSION, "initialized", id=session_id, asset_id=asset_id,
                                 strategy=STRATEGY, storage_key=key,
                                 filename=security.sanitize_filename(filename), content_type=declared,
                                 byte_size=size, part_size=part_size, expires_at=expires_at)
        await rows.insert(uow.conn, uow.schema, session_id, owner=owner, metadata=dict(metadata or {}))
        uow.emit(UploadStarted(session_id=str(session_id), asset_id=str(asset_id),
                               profile=profile.name, adapter=profile.storage))
    # Storage I/O after commit; a failure here leaves an initialized session for cleanup.
    session = await load(rt, session_id)
    upload_id = await appender.start(session)
    async with rt.db.transaction() as uow:
        await transitions.transition(uow, UPLOAD_SESSION, session_id, "initialized", "signed",
                                     multipart_upload_id=upload_id)
    return ResumableUpload(session_id=str(session_id), asset_id=str(asset_id), state="signed", offset=0,
                           length=size, expires_at=expires_at, owner=owner,
                           metadata=dict(metadata or {}), completed=False)


async def resumable_upload(rt: Runtime, session_id: str, *, owner: str | None = None) -> ResumableUpload:
    """The upload's stored offset, length and deadline; a completed file is verified first.

    rt: the runtime of the opened Rindle.
    session_id: the session from ``create_resumable``.
    owner: the caller; NotFound unless it is the session's owner (when it has one).
    Raises NotFound for an unknown session and UploadClosed for one that ended without a
    file (failed, aborted, expired: an expired one is closed by this call).
    """
    async with _lock(session_id):  # a request still storing its chunk finishes first
        session, row = await _open(rt, session_id, owner)
        if session.state == "completed":
            return _status(session, row, session.length)
        offset = await appender_for(rt, storage_of(rt, session.storage)).offset(session, row)
        if offset == session.length:  # stored whole by a request that stopped before it was verified
            await _finish(rt, session, row)
            return _status(await load(rt, session.id), row, offset)
        return _status(session, row, offset)


async def append_resumable(rt: Runtime, session_id: str, *, offset: int, chunks: AsyncIterable[bytes],
                           owner: str | None = None) -> ResumableUpload:
    """Store the next chunk of an upload; the chunk that completes it verifies the file.

    rt: the runtime of the opened Rindle.
    session_id: the session from ``create_resumable``.
    offset: where the chunk starts; OffsetMismatch unless it is where the stored bytes end.
    chunks: the chunk's bytes, streamed; what arrived before a failure of the stream is kept.
    owner: the caller; NotFound unless it is the session's owner (when it has one).
    Returns the upload with its new offset (``completed`` once the file was verified; the
    asset is then ``validating`` and its promotion staged).  A file whose bytes are of a
    type the profile refuses fails the session (VerificationFailed).
    """
    async with _lock(session_id):
        session, row = await _open(rt, session_id, owner)
        if session.state == "completed":
            raise UploadClosed(f"upload session {session.id} is completed; it takes no more bytes")
        appender = appender_for(rt, storage_of(rt, session.storage))
        stored = await appender.offset(session, row)
        if offset != stored:
            raise OffsetMismatch(session.id, offset, stored)
        if session.state == "signed":
            async with rt.db.transaction() as uow:
                await transitions.transition(uow, UPLOAD_SESSION, session.id, "signed", "uploading")
            session = msgspec.structs.replace(session, state="uploading")
        new_offset = await appender.append(session, row, stored, chunks)
        if new_offset < session.length:
            return _status(session, row, new_offset)
        await _finish(rt, session, await rows.get(rt.pool, rt.schema, session.id) or row)
        return _status(await load(rt, session.id), row, new_offset)


async def terminate_resumable(rt: Runtime, session_id: str, *, owner: str | None = None) -> None:
    """Abandon an unfinished upload: the session is aborted and its asset and bytes purged.

    rt: the runtime of the opened Rindle.
    session_id: the session from ``create_resumable``.
    owner: the caller; NotFound unless it is the session's owner (when it has one).
    """
    async with _lock(session_id):  # not under a request that is still storing a chunk
        session, _ = await _open(rt, session_id, owner)
        if session.state == "completed":
            raise ValidationError(f"upload session {session.id} is completed; detach or delete its asset "
                                  "instead of terminating the upload")
        await close_aborted(rt, session, "terminated by the client")


def _lock(session_id: str) -> asyncio.Lock:
    key = asset_uuid(session_id, "session_id")
    lock = _LOCKS.get(key)
    if lock is None:
        lock = _LOCKS[key] = asyncio.Lock()
    return lock


async def _open(rt: Runtime, session_id: str, owner: str | None) -> tuple[SessionRow, ResumableRow]:
    """The session and its resumable row, refused unless it is a resumable session the caller owns
    (NotFound) that is open or completed (UploadClosed); one past its deadline is expired here
    (and refused)."""
    session = await load(rt, session_id)
    row = await rows.get(rt.pool, rt.schema, session.id)
    if session.strategy != STRATEGY or row is None or (row.owner is not None and row.owner != owner):
        raise NotFound(f"no resumable upload {session_id}")
    # "verifying": a request stopped while verifying the whole file; the next one takes over
    if session.state != "completed" and session.state not in UPLOAD_SESSION.group("open"):
        detail = f" ({session.reason})" if session.reason else ""
        raise UploadClosed(f"upload session {session.id} is {session.state}{detail}; start a new upload")
    if session.state != "completed" and session.expires_at <= now():
        async with rt.db.transaction() as uow:
            await transitions.transition(uow, UPLOAD_SESSION, session.id, session.state, "expired",
                                         reason="the upload deadline passed before the file was complete")
            await tombstone(uow, {session.asset_id: UNVERIFIED}, only_from={"staged"})
        raise UploadClosed(f"upload session {session.id} expired at {session.expires_at.isoformat()}; "
                           "start a new upload")
    return session, row


async def _finish(rt: Runtime, session: SessionRow, row: ResumableRow) -> Asset:
    """Assemble the stored file, refuse it unless its bytes are the declared (allowed) type,
    then verify it: the session completed and promotion staged in one transaction."""
    storage = storage_of(rt, session.storage)
    await appender_for(rt, storage).finish(session, row)
    head = b"".join([chunk async for chunk in storage.get(session.storage_key, start=0, end=SNIFF_BYTES - 1)])
    sniffed = security.sniff(head)
    profile = find_profile(rt.profiles, session.profile)
    if sniffed is None or sniffed not in profile.allow_mime or sniffed != session.content_type:
        reason = (f"the file's bytes are {sniffed or 'of an unknown type'} but {session.content_type} was "
                  f"declared; profile {profile.name!r} allows {', '.join(profile.allow_mime)}")
        async with rt.db.transaction() as uow:
            await transitions.transition(uow, UPLOAD_SESSION, session.id, session.state, "failed",
                                         reason=reason)
            await transitions.transition(uow, ASSET, session.asset_id, None, "quarantined",
                                         reason=f"upload verification failed: {reason}")
        raise VerificationFailed(f"upload session {session.id}: {reason}")
    return await verify_upload(rt, str(session.id))


def _status(session: SessionRow, row: ResumableRow, offset: int) -> ResumableUpload:
    return ResumableUpload(session_id=str(session.id), asset_id=str(session.asset_id), state=session.state,
                           offset=offset, length=session.length, expires_at=session.expires_at,
                           owner=row.owner, metadata=row.metadata, completed=session.state == "completed")
