"""Direct-upload sessions: open one, mint its URLs again, abandon it, and tell the local
storage routes whether a PUT may still write.  (Verification is in ``verification``.)"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from .. import security
from ..assets import asset_uuid
from ..db import sessions
from ..db.sessions import SessionRow
from ..errors import NotFound, TooLarge, UploadClosed, ValidationError, VerificationFailed
from ..events import UploadStarted
from ..lifecycle import transitions
from ..lifecycle.machines import ASSET, UPLOAD_SESSION
from ..lifecycle.tombstone import tombstone
from ..models import UploadTicket
from ..profiles import Profile, find_profile
from ..storage import keys
from ..storage.base import PresignedRequest, Storage

if TYPE_CHECKING:
    from ..runtime import Runtime

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10_000
_CHECKSUM_LENGTHS = {"md5": 32, "sha256": 64}
#: The reason on the asset of a session that ended without a verified file.
UNVERIFIED = "its upload session ended without a verified file"


def now() -> datetime:
    return datetime.now(timezone.utc)


def _check_checksum(checksum: str | None) -> str | None:
    if checksum is None:
        return None
    algorithm, _, digest = checksum.partition(":")
    if (_CHECKSUM_LENGTHS.get(algorithm.lower()) != len(digest)
            or any(c not in "0123456789abcdef" for c in digest.lower())):
        raise ValidationError(f"checksum {checksum!r} is not 'md5:<32 hex digits>' "
                              "or 'sha256:<64 hex digits>'")
    return f"{algorithm.lower()}:{digest.lower()}"


def _check_size(profile: Profile, byte_size: object) -> int:
    if not isinstance(byte_size, int) or isinstance(byte_size, bool) or byte_size < 1:
        raise ValidationError(f"byte_size={byte_size!r} must be a positive int (the file's size)")
    if byte_size > profile.max_bytes:
        raise TooLarge(f"byte_size {byte_size} is over the {profile.max_bytes}-byte limit "
                       f"of profile {profile.name!r}")
    return byte_size


def _part_size(byte_size: int, part_size: int | None) -> int:
    if part_size is None:
        return max(8 * 1024 * 1024, math.ceil(byte_size / MAX_PARTS))
    if part_size < MIN_PART_SIZE:
        raise ValidationError(f"part_size={part_size} is under S3's minimum part of {MIN_PART_SIZE} bytes")
    if math.ceil(byte_size / part_size) > MAX_PARTS:
        raise ValidationError(f"part_size={part_size} would need more than {MAX_PARTS} parts "
                              f"for {byte_size} bytes")
    return part_size


async def load(rt: Runtime, session_id: object) -> SessionRow:
    """The session with its asset's profile and storage; NotFound when there is none."""
    row = await sessions.get(rt.pool, rt.schema, asset_uuid(session_id, "session_id"))
    if row is None:
        raise NotFound(f"upload session {session_id} does not exist")
    return row


def storage_of(rt: Runtime, name: str) -> Storage:
    return rt.storages[name]


async def initiate_upload(rt: Runtime, profile_name: str, *, filename: str | None,
                          content_type: str, byte_size: int, checksum: str | None = None,
                          multipart: bool = False, part_size: int | None = None) -> UploadTicket:
    """Open a direct-upload session and return the ticket the client uploads with.

    rt: the runtime of the opened Rindle.
    profile_name: the profile the file is uploaded under.
    filename: the client's file name (sanitized before it is stored); its extension must
        not name another type than ``content_type``.
    content_type: the declared type; must be one the profile allows.
    byte_size: the declared size; must be within the profile's max_bytes.
    checksum: optional ``md5:<hex>`` or ``sha256:<hex>`` checked at verification.
    multipart: use an S3 multipart upload (part URLs from ``presign_part``).
    part_size: bytes per part for multipart (default: 8 MiB or larger for huge files).
    """
    profile = find_profile(rt.profiles, profile_name)
    declared = security.check_declared_type(content_type, profile.allow_mime, profile=profile.name)
    if filename:  # what the proxied path refuses before storing anything
        security.check_extension(filename, declared, declared=True)
    size = _check_size(profile, byte_size)
    checksum = _check_checksum(checksum)
    storage = storage_of(rt, profile.storage)
    capability = "multipart" if multipart else "presigned_put"
    if not getattr(storage.capabilities, capability):
        raise ValidationError(f"storage {profile.storage!r} ({storage.adapter}) cannot do "
                              f"{capability.replace('_', ' ')} uploads")
    parts = _part_size(size, part_size) if multipart else None
    asset_id, session_id = uuid.uuid4(), uuid.uuid4()
    key = keys.new_storage_key(profile.name, str(asset_id), security.extension_for(declared),
                                   role="upload")
    expires_at = now() + timedelta(seconds=profile.upload_ttl)
    async with rt.db.transaction() as uow:
        await transitions.insert(uow, ASSET, "staged", id=asset_id, profile=profile.name,
                            storage=profile.storage, storage_key=key,
                            filename=security.sanitize_filename(filename),
                            content_type=declared, byte_size=size)
        await transitions.insert(uow, UPLOAD_SESSION, "initialized", id=session_id, asset_id=asset_id,
                            strategy="multipart" if multipart else "presigned_put",
                            storage_key=key, filename=security.sanitize_filename(filename),
                            content_type=declared, byte_size=size, checksum=checksum,
                            part_size=parts, expires_at=expires_at)
        uow.emit(UploadStarted(session_id=str(session_id), asset_id=str(asset_id),
                               profile=profile.name, adapter=profile.storage))
    # Storage I/O after commit; a failure here leaves an initialized session for cleanup.
    upload_id = None
    if multipart:
        upload_id = await storage.create_multipart(key, content_type=declared)
    else:
        request = await storage.presign_put(key, content_type=declared, byte_size=size,
                                            expires_in=profile.upload_ttl)
    async with rt.db.transaction() as uow:
        await transitions.transition(uow, UPLOAD_SESSION, session_id, "initialized", "signed",
                                multipart_upload_id=upload_id)
    if multipart:
        return UploadTicket(session_id=str(session_id), asset_id=str(asset_id), method="PUT",
                            url=None, headers={}, expires_at=expires_at,
                            session_expires_at=expires_at, upload_id=upload_id, part_size=parts)
    return _ticket(session_id, asset_id, request, expires_at)


def _ticket(session_id: object, asset_id: object, request: PresignedRequest,
            session_expires_at: datetime) -> UploadTicket:
    return UploadTicket(session_id=str(session_id), asset_id=str(asset_id), method=request.method,
                        url=request.url, headers=dict(request.headers),
                        expires_at=min(request.expires_at, session_expires_at),
                        session_expires_at=session_expires_at)


def check_open(session: SessionRow, action: str) -> None:
    if session.state not in UPLOAD_SESSION.group("open"):
        detail = f" ({session.reason})" if session.reason else ""
        raise ValidationError(f"upload session {session.id} is {session.state}{detail}; "
                              f"cannot {action}; start a new upload")
    if session.expires_at <= now():
        raise VerificationFailed(f"upload session {session.id} expired at "
                                 f"{session.expires_at.isoformat()}; start a new upload")


async def check_writable(rt: Runtime, storage: str, key: str) -> None:
    """Refuse (UploadClosed) a write to ``key`` unless an upload session open for writing owns it.

    The local storage routes call this before they store a PUT; S3 cannot be asked, and
    promotion's check that it reads the object verification saw is what protects it.
    rt: the runtime of the opened Rindle.
    storage: the name of the storage the key is in.
    key: the key the PUT would write.
    """
    session = await sessions.latest_for_key(rt.pool, rt.schema, storage, key)
    if session is None:  # never a session's key, or its rows were purged since
        raise UploadClosed(f"no upload session is open for {key!r}; this URL accepts no writes, "
                           "start a new upload")
    if session.state not in UPLOAD_SESSION.group("writable"):
        detail = f" ({session.reason})" if session.reason else ""
        raise UploadClosed(f"upload session {session.id} is {session.state}{detail}; its URL "
                           "no longer accepts writes, start a new upload")
    if session.expires_at <= now():
        raise UploadClosed(f"upload session {session.id} expired at "
                           f"{session.expires_at.isoformat()}; its URL no longer accepts writes, "
                           "start a new upload")


async def sign_upload(rt: Runtime, session_id: str) -> UploadTicket:
    """A fresh ticket for an open session whose URL expired (the session deadline holds).

    rt: the runtime of the opened Rindle.
    session_id: the session from ``initiate_upload``.
    """
    session = await load(rt, session_id)
    check_open(session, "sign it again")
    if session.multipart:
        raise ValidationError(f"upload session {session_id} is multipart; "
                              "get part URLs with presign_part")
    profile = find_profile(rt.profiles, session.profile)
    remaining = int((session.expires_at - now()).total_seconds())
    request = await storage_of(rt, session.storage).presign_put(
        session.storage_key, content_type=session.content_type,
        byte_size=session.byte_size, expires_in=max(1, min(remaining, profile.upload_ttl)))
    if session.state == "initialized":
        async with rt.db.transaction() as uow:
            await transitions.transition(uow, UPLOAD_SESSION, session.id, "initialized", "signed")
    return _ticket(session.id, session.asset_id, request, session.expires_at)


async def presign_part(rt: Runtime, session_id: str, part_number: int) -> PresignedRequest:
    """A PUT URL for one part of a multipart session, minted on demand.

    rt: the runtime of the opened Rindle.
    session_id: a multipart session from ``initiate_upload(..., multipart=True)``.
    part_number: 1-based part number.
    """
    session = await load(rt, session_id)
    check_open(session, "upload parts")
    if not session.multipart or not session.multipart_upload_id:
        raise ValidationError(f"upload session {session_id} is not a multipart upload")
    total = part_count(session)
    if not isinstance(part_number, int) or not 1 <= part_number <= total:
        raise ValidationError(f"part_number={part_number!r} is outside 1..{total} for "
                              f"{part_layout(session)}")
    profile = find_profile(rt.profiles, session.profile)
    remaining = int((session.expires_at - now()).total_seconds())
    return await storage_of(rt, session.storage).presign_part(
        session.storage_key, session.multipart_upload_id, part_number,
        expires_in=max(1, min(remaining, profile.upload_ttl)))


def part_count(session: SessionRow) -> int:
    return math.ceil(session.byte_size / (session.part_size or session.byte_size))  # None: one part


def part_layout(session: SessionRow) -> str:
    return f"{session.byte_size} bytes in {session.part_size}-byte parts"



async def abort_upload(rt: Runtime, session_id: str) -> None:
    """Abandon an open session: it becomes aborted and its asset is purged.

    rt: the runtime of the opened Rindle.
    session_id: the session from ``initiate_upload``.
    """
    session = await load(rt, session_id)
    if session.state not in UPLOAD_SESSION.group("open"):
        raise ValidationError(f"upload session {session_id} is {session.state}; "
                              "only open sessions can be aborted")
    async with rt.db.transaction() as uow:
        await transitions.transition(uow, UPLOAD_SESSION, session.id, session.state, "aborted",
                                reason="aborted by the host")
        await tombstone(uow, {session.asset_id: UNVERIFIED}, only_from={"staged"})
    if session.multipart_upload_id:
        await storage_of(rt, session.storage).abort_multipart(
            session.storage_key, session.multipart_upload_id)


