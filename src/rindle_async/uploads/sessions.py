"""Direct-upload sessions: open one, mint its URLs again, abandon it, and tell the local
storage routes whether a PUT may still write.  (Verification is in ``verification``.)"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, NamedTuple

from .. import security
from ..assets import asset_uuid
from ..db import sessions
from ..db.sessions import SessionRow
from ..errors import (
    NotFound,
    StorageError,
    TooLarge,
    Unsupported,
    UploadClosed,
    ValidationError,
    VerificationFailed,
)
from ..events import UploadStarted
from ..lifecycle import transitions
from ..lifecycle.machines import ASSET, UPLOAD_SESSION
from ..lifecycle.tombstone import tombstone
from ..models import UploadTicket
from ..profiles import Profile, find_profile
from ..storage import keys
from ..storage.base import PresignedPost, PresignedRequest, Storage

if TYPE_CHECKING:
    from ..runtime import Runtime

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 ** 3  # S3's maximum for any part
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * 1024 * 1024
STRATEGY_NAMES = {"presigned_put": "presigned PUT", "presigned_post": "presigned POST",
                  "multipart": "multipart"}
log = logging.getLogger("rindle_async.uploads")
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


def _check_size(profile: Profile, byte_size: object, strategy: str) -> int | None:
    if byte_size is None and strategy != "presigned_put":
        return None  # the store enforces the limit (POST policy), or completion checks it (multipart)
    if byte_size is None:
        raise ValidationError("byte_size is required for a presigned PUT (S3 signs its Content-Length); "
                              "pass the file's size, or use presigned_post=True or multipart=True")
    return check_size(profile, byte_size)


def check_size(profile: Profile, size: object, what: str = "byte_size") -> int:
    """``size`` when it is a positive int within the profile's ``max_bytes``; else ValidationError
    or TooLarge naming ``what`` (the argument the size came in).

    profile: the profile the file is uploaded under.
    size: the declared size in bytes.
    what: the argument's name in the messages.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValidationError(f"{what}={size!r} must be a positive int (the file's size in bytes)")
    if size > profile.max_bytes:
        raise TooLarge(f"{what} {size} is over the {profile.max_bytes}-byte limit of profile {profile.name!r}")
    return size


def _strategy(multipart: bool, presigned_post: bool) -> str:
    if multipart and presigned_post:
        raise ValidationError("multipart=True and presigned_post=True exclude each other; pick one")
    return "multipart" if multipart else "presigned_post" if presigned_post else "presigned_put"


def _part_size(byte_size: int | None, part_size: int | None) -> int:
    """The suggested part size; clients may use any sizes within S3's rules (checked at completion)."""
    if part_size is None:
        return max(DEFAULT_PART_SIZE, math.ceil((byte_size or 0) / MAX_PARTS))
    if not isinstance(part_size, int) or not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValidationError(f"part_size={part_size!r} is outside S3's {MIN_PART_SIZE}..{MAX_PART_SIZE} "
                              "bytes per part")
    if byte_size is not None and math.ceil(byte_size / part_size) > MAX_PARTS:
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


class _Declared(NamedTuple):
    """What initiate_upload checked: the session to open."""

    profile: Profile
    strategy: str
    content_type: str
    byte_size: int | None
    checksum: str | None
    part_size: int | None
    owner: str | None


async def initiate_upload(rt: Runtime, profile_name: str, *, filename: str | None,
                          content_type: str, byte_size: int | None = None, checksum: str | None = None,
                          multipart: bool = False, part_size: int | None = None,
                          presigned_post: bool = False, owner: str | None = None) -> UploadTicket:
    """Open a direct-upload session and return the ticket the client uploads with.

    rt: the runtime of the opened Rindle.
    profile_name: the profile the file is uploaded under.
    filename: the client's file name (sanitized before it is stored); its extension must
        not name another type than ``content_type``.
    content_type: the declared type; must be one the profile allows.
    byte_size: the declared size, within the profile's max_bytes; required for a presigned PUT,
        optional for a POST policy or multipart (then the stored object's size is checked).
    checksum: optional ``md5:<hex>`` or ``sha256:<hex>`` checked at verification.
    multipart: use an S3 multipart upload (part URLs from ``presign_part``).
    part_size: the suggested bytes per part for multipart (5 MiB..5 GiB; default 8 MiB or
        larger for huge files); clients may use other sizes within S3's rules.
    presigned_post: a form POST under a policy the store enforces (type, key, 1..max_bytes).
    owner: who the upload is for, as the host names it (kept on the session, see get_upload).
    """
    declared = _declare(rt, profile_name, filename=filename, content_type=content_type, byte_size=byte_size,
                        checksum=checksum, strategy=_strategy(multipart, presigned_post), part_size=part_size,
                        owner=owner)
    asset_id, session_id = uuid.uuid4(), uuid.uuid4()
    known = security.known_type(declared.content_type)
    key = keys.new_storage_key(declared.profile.name, str(asset_id),
                               security.extension_for(known) if known else None, role="upload")
    expires_at = now() + timedelta(seconds=declared.profile.upload_ttl)
    await _open_session(rt, declared, asset_id, session_id, key, filename, expires_at)
    # Storage I/O after commit; a failure here leaves an initialized session for cleanup.
    storage, profile = storage_of(rt, declared.profile.storage), declared.profile
    upload_id = request = None
    if declared.strategy == "multipart":
        upload_id = await storage.create_multipart(key, content_type=declared.content_type)
    else:
        request = await _presign(storage, declared.strategy, key, declared.content_type,
                                 declared.byte_size, profile, profile.upload_ttl)
    async with rt.db.transaction() as uow:
        await transitions.transition(uow, UPLOAD_SESSION, session_id, "initialized", "signed",
                                     multipart_upload_id=upload_id)
    if request is None:
        return UploadTicket(session_id=str(session_id), asset_id=str(asset_id), method="PUT",
                            url=None, headers={}, expires_at=expires_at, session_expires_at=expires_at,
                            upload_id=upload_id, part_size=declared.part_size, storage_key=key)
    return _ticket(session_id, asset_id, key, request, expires_at)


def _declare(rt: Runtime, profile_name: str, *, filename: str | None, content_type: str,
             byte_size: object, checksum: str | None, strategy: str, part_size: int | None,
             owner: str | None) -> _Declared:
    """Refuse at once what the profile or the storage forbids; nothing is created before."""
    profile = find_profile(rt.profiles, profile_name)
    declared = security.check_declared_type(content_type, profile.allow_mime, profile=profile.name)
    if filename and security.known_type(declared):  # what the proxied path refuses before storing
        security.check_extension(filename, declared, declared=True)
    size = _check_size(profile, byte_size, strategy)
    storage = storage_of(rt, profile.storage)
    if not getattr(storage.capabilities, strategy):
        raise ValidationError(f"storage {profile.storage!r} ({storage.adapter}) cannot do "
                              f"{STRATEGY_NAMES[strategy]} uploads")
    parts = _part_size(size, part_size) if strategy == "multipart" else None
    if owner is not None and not isinstance(owner, str):
        raise ValidationError(f"owner={owner!r} must be a str (the host's id of who uploads)")
    return _Declared(profile, strategy, declared, size, _check_checksum(checksum), parts, owner)


async def _open_session(rt: Runtime, declared: _Declared, asset_id: uuid.UUID, session_id: uuid.UUID,
                        key: str, filename: str | None, expires_at: datetime) -> None:
    """One transaction: the staged asset and its initialized session, and UploadStarted."""
    profile = declared.profile
    async with rt.db.transaction() as uow:
        await transitions.insert(uow, ASSET, "staged", id=asset_id, profile=profile.name,
                                 storage=profile.storage, storage_key=key,
                                 filename=security.sanitize_filename(filename),
                                 content_type=security.known_type(declared.content_type),
                                 byte_size=declared.byte_size)
        await transitions.insert(uow, UPLOAD_SESSION, "initialized", id=session_id, asset_id=asset_id,
                                 strategy=declared.strategy, storage_key=key,
                                 filename=security.sanitize_filename(filename),
                                 content_type=declared.content_type, byte_size=declared.byte_size,
                                 checksum=declared.checksum, part_size=declared.part_size,
                                 owner=declared.owner, expires_at=expires_at)
        uow.emit(UploadStarted(session_id=str(session_id), asset_id=str(asset_id),
                               profile=profile.name, adapter=profile.storage))


async def _presign(storage: Storage, strategy: str, key: str, content_type: str, byte_size: int | None,
                   profile: Profile, expires_in: int) -> PresignedRequest | PresignedPost:
    """The request a client sends the whole file with: a PUT bound to the size, or a POST policy."""
    if strategy == "presigned_post":
        return await storage.presign_post(key, content_type=content_type, max_bytes=profile.max_bytes,
                                          expires_in=expires_in)
    if byte_size is None:  # never stored so: _check_size requires it for a PUT
        raise ValidationError(f"the presigned PUT of {key!r} needs the file's byte_size")
    return await storage.presign_put(key, content_type=content_type, byte_size=byte_size,
                                     expires_in=expires_in)


def _ticket(session_id: object, asset_id: object, key: str, request: PresignedRequest | PresignedPost,
            session_expires_at: datetime) -> UploadTicket:
    expires_at = min(request.expires_at, session_expires_at)
    if isinstance(request, PresignedPost):
        return UploadTicket(session_id=str(session_id), asset_id=str(asset_id), method="POST",
                            url=request.url, headers={}, fields=dict(request.fields), expires_at=expires_at,
                            session_expires_at=session_expires_at, storage_key=key)
    return UploadTicket(session_id=str(session_id), asset_id=str(asset_id), method=request.method,
                        url=request.url, headers=dict(request.headers), expires_at=expires_at,
                        session_expires_at=session_expires_at, storage_key=key)


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
    request = await _presign(storage_of(rt, session.storage), session.strategy, session.storage_key,
                             session.content_type, session.byte_size, profile,
                             max(1, min(remaining, profile.upload_ttl)))
    if session.state == "initialized":
        async with rt.db.transaction() as uow:
            await transitions.transition(uow, UPLOAD_SESSION, session.id, "initialized", "signed")
    return _ticket(session.id, session.asset_id, session.storage_key, request, session.expires_at)


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
    if not isinstance(part_number, int) or isinstance(part_number, bool) or not 1 <= part_number <= MAX_PARTS:
        raise ValidationError(f"part_number={part_number!r} is outside S3's 1..{MAX_PARTS}")
    profile = find_profile(rt.profiles, session.profile)
    remaining = int((session.expires_at - now()).total_seconds())
    return await storage_of(rt, session.storage).presign_part(
        session.storage_key, session.multipart_upload_id, part_number,
        expires_in=max(1, min(remaining, profile.upload_ttl)))


async def abort_upload(rt: Runtime, session_id: str) -> None:
    """Abandon an open session: it becomes aborted and its asset is purged.

    rt: the runtime of the opened Rindle.
    session_id: the session from ``initiate_upload``.
    """
    session = await load(rt, session_id)
    if session.state not in UPLOAD_SESSION.group("open"):
        raise ValidationError(f"upload session {session_id} is {session.state}; "
                              "only open sessions can be aborted")
    await close_aborted(rt, session, "aborted by the host")


async def close_aborted(rt: Runtime, session: SessionRow, reason: str) -> None:
    """Abort an open session and tombstone its staged asset in one transaction, then free its
    multipart upload's parts (after commit: storage I/O is never inside a transaction).

    rt: the runtime of the opened Rindle.
    session: the session, as read.
    reason: why, stored on the session.
    """
    async with rt.db.transaction() as uow:
        await transitions.transition(uow, UPLOAD_SESSION, session.id, session.state, "aborted", reason=reason)
        await tombstone(uow, {session.asset_id: UNVERIFIED}, only_from={"staged"})
    if session.multipart_upload_id:
        await abort_parts(storage_of(rt, session.storage), session)


async def abort_parts(storage: Storage, session: SessionRow) -> None:
    """Free the parts of a closed multipart session; a store that cannot (s3rver has no
    AbortMultipartUpload) or fails is logged, and cleanup-orphans aborts the upload later."""
    try:
        await storage.abort_multipart(session.storage_key, session.multipart_upload_id or "")
    except (StorageError, Unsupported) as exc:
        log.warning("upload session %s is aborted, but its multipart upload %s was not: %s; "
                    "cleanup-orphans retries it", session.id, session.multipart_upload_id, exc)


