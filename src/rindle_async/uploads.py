"""Upload sessions (direct to storage), their verification, and proxied uploads.

Direct uploads: ``initiate_upload`` refuses at once what the profile forbids,
commits a staged asset and its session, then presigns outside the transaction.
The client sends the bytes straight to the store; ``verify_upload`` is the only
trust gate: it checks the stored object (size, deadline, checksum) outside any
transaction, then completes the session and hands the asset to promotion in one
transaction, recording what it saw (size, ETag, sha256 when it read the bytes) so
that promotion can prove it reads the same object.  The real type, pixel count and
the rest are checked from the bytes by the promotion job before anything is
promoted.  ``check_writable`` tells the local storage routes whether a PUT may
still write: only while its session is open and not yet being verified.

Proxied uploads stream through the host (``upload``): the type is sniffed from
the first bytes before anything is stored, and the size limit holds while
streaming.
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import anyio
import msgspec

from . import security
from .assets import asset_uuid, get_asset
from .db import sessions
from .db.sessions import SessionRow
from .errors import (
    InvalidTransition,
    NotFound,
    StorageError,
    TooLarge,
    UploadClosed,
    ValidationError,
    VerificationFailed,
)
from .events import UploadCompleted, UploadStarted
from .ledger.stage import stage_promote
from .lifecycle import transitions
from .lifecycle.machines import ASSET, UPLOAD_SESSION
from .lifecycle.tombstone import tombstone
from .models import Asset, UploadTicket
from .profiles import Profile, find_profile
from .storage.base import ObjectInfo, Part, PresignedRequest, Source, Storage

if TYPE_CHECKING:
    from .runtime import Runtime

SNIFF_BYTES = 8192
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10_000
MAX_ETAG = 1024  # S3's are under 40 characters; anything longer is not one
_CHECKSUM_LENGTHS = {"md5": 32, "sha256": 64}
#: The reason on the asset of a session that ended without a verified file.
UNVERIFIED = "its upload session ended without a verified file"


def _now() -> datetime:
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


async def _session(rt: Runtime, session_id: object) -> SessionRow:
    """The session with its asset's profile and storage; NotFound when there is none."""
    row = await sessions.get(rt.pool, rt.schema, asset_uuid(session_id, "session_id"))
    if row is None:
        raise NotFound(f"upload session {session_id} does not exist")
    return row


def _storage(rt: Runtime, name: str) -> Storage:
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
    storage = _storage(rt, profile.storage)
    capability = "multipart" if multipart else "presigned_put"
    if not getattr(storage.capabilities, capability):
        raise ValidationError(f"storage {profile.storage!r} ({storage.adapter}) cannot do "
                              f"{capability.replace('_', ' ')} uploads")
    parts = _part_size(size, part_size) if multipart else None
    asset_id, session_id = uuid.uuid4(), uuid.uuid4()
    key = security.new_storage_key(profile.name, str(asset_id), security.extension_for(declared),
                                   role="upload")
    expires_at = _now() + timedelta(seconds=profile.upload_ttl)
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


def _open_session(session: SessionRow, action: str) -> None:
    if session.state not in UPLOAD_SESSION.group("open"):
        detail = f" ({session.reason})" if session.reason else ""
        raise ValidationError(f"upload session {session.id} is {session.state}{detail}; "
                              f"cannot {action}; start a new upload")
    if session.expires_at <= _now():
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
    if session.expires_at <= _now():
        raise UploadClosed(f"upload session {session.id} expired at "
                           f"{session.expires_at.isoformat()}; its URL no longer accepts writes, "
                           "start a new upload")


async def sign_upload(rt: Runtime, session_id: str) -> UploadTicket:
    """A fresh ticket for an open session whose URL expired (the session deadline holds).

    rt: the runtime of the opened Rindle.
    session_id: the session from ``initiate_upload``.
    """
    session = await _session(rt, session_id)
    _open_session(session, "sign it again")
    if session.multipart:
        raise ValidationError(f"upload session {session_id} is multipart; "
                              "get part URLs with presign_part")
    profile = find_profile(rt.profiles, session.profile)
    remaining = int((session.expires_at - _now()).total_seconds())
    request = await _storage(rt, session.storage).presign_put(
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
    session = await _session(rt, session_id)
    _open_session(session, "upload parts")
    if not session.multipart or not session.multipart_upload_id:
        raise ValidationError(f"upload session {session_id} is not a multipart upload")
    total = _part_count(session)
    if not isinstance(part_number, int) or not 1 <= part_number <= total:
        raise ValidationError(f"part_number={part_number!r} is outside 1..{total} for "
                              f"{_part_layout(session)}")
    profile = find_profile(rt.profiles, session.profile)
    remaining = int((session.expires_at - _now()).total_seconds())
    return await _storage(rt, session.storage).presign_part(
        session.storage_key, session.multipart_upload_id, part_number,
        expires_in=max(1, min(remaining, profile.upload_ttl)))


def _part_count(session: SessionRow) -> int:
    return math.ceil(session.byte_size / (session.part_size or session.byte_size))  # None: one part


def _part_layout(session: SessionRow) -> str:
    return f"{session.byte_size} bytes in {session.part_size}-byte parts"


def _check_parts(session: SessionRow, parts: Sequence[Part]) -> list[Part]:
    """The client's part list in part-number order, refused (ValidationError) unless it names
    every part the session's size and part size make, once each, with an ETag."""
    listed = list(parts)
    total, prefix = _part_count(session), f"upload session {session.id}: parts="
    if len(listed) != total:
        raise ValidationError(f"{prefix} {len(listed)} parts given, but {_part_layout(session)} "
                              f"make {total}; pass every uploaded part once")
    seen: set[int] = set()
    for index, part in enumerate(listed):
        if not isinstance(part, Part):
            raise ValidationError(f"{prefix} parts[{index}] is a {type(part).__name__}, not a "
                                  "Part(part_number=..., etag=...)")
        number, etag = part.part_number, part.etag
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= total:
            raise ValidationError(f"{prefix} parts[{index}].part_number={number!r} is outside "
                                  f"1..{total} for {_part_layout(session)}")
        if number in seen:
            raise ValidationError(f"{prefix} part_number {number} is listed twice")
        if not isinstance(etag, str) or not etag.strip('" ') or len(etag) > MAX_ETAG:
            shown = repr(etag) if not isinstance(etag, str) else repr(etag[:40])
            raise ValidationError(f"{prefix} parts[{index}].etag={shown} is not the ETag header "
                                  f"the PUT of part {number} returned")
        seen.add(number)
    return sorted(listed, key=lambda part: part.part_number)


async def _fail(rt: Runtime, session: SessionRow, reason: str) -> VerificationFailed:
    """Record a failed verification (session failed, asset quarantined); return the error."""
    async with rt.db.transaction() as uow:
        await transitions.transition(uow, UPLOAD_SESSION, session.id, "verifying", "failed",
                                reason=reason)
        await transitions.transition(uow, ASSET, session.asset_id, None, "quarantined",
                                reason=f"upload verification failed: {reason}")
    return VerificationFailed(f"upload session {session.id}: {reason}")


async def _expire(rt: Runtime, session: SessionRow) -> None:
    """Close a session past its deadline and tombstone its staged asset for purging."""
    async with rt.db.transaction() as uow:
        await transitions.transition(uow, UPLOAD_SESSION, session.id, session.state, "expired",
                                reason="the upload deadline passed before verification")
        await tombstone(uow, {session.asset_id: UNVERIFIED}, only_from={"staged"})


async def _claim(rt: Runtime, session: SessionRow) -> SessionRow:
    """Move an open session to verifying and return it; when a concurrent call moved it
    first, return the session as that call left it (verifying, completed, failed, ...)."""
    if session.state == "verifying":
        return session  # an earlier call claimed it and did not finish: take over
    try:
        async with rt.db.transaction() as uow:
            await transitions.transition(uow, UPLOAD_SESSION, session.id, session.state, "verifying")
    except InvalidTransition:
        return await _session(rt, session.id)
    return msgspec.structs.replace(session, state="verifying")


async def _object_digests(storage: Storage, key: str, algorithms: set[str]) -> dict[str, str]:
    """Hex digests of the stored object, one read for every algorithm."""
    digests = {algorithm: hashlib.new(algorithm) for algorithm in algorithms}
    async for chunk in storage.get(key):
        for digest in digests.values():
            digest.update(chunk)
    return {algorithm: digest.hexdigest() for algorithm, digest in digests.items()}


async def verify_upload(rt: Runtime, session_id: str, *,
                        parts: Sequence[Part] | None = None) -> Asset:
    """Check the uploaded object and hand the asset to promotion; return the asset.

    rt: the runtime of the opened Rindle.
    session_id: the session from ``initiate_upload``.
    parts: for multipart sessions, the uploaded parts (number and ETag) to assemble first:
        every part the session's size makes, once each, in any order.
    A second call on a completed session returns the same asset.  A bad part list raises
    ValidationError and a storage failure StorageError; both leave the session open.
    """
    session = await _session(rt, session_id)
    if session.state != "completed":
        session = await _verify(rt, session, parts)
    return await get_asset(rt.pool, rt.schema, session.asset_id)


async def _verify(rt: Runtime, session: SessionRow, parts: Sequence[Part] | None) -> SessionRow:
    """The phases of a verification; each reads, does storage I/O, or runs one transaction.
    Returns the session completed (by this call or by a concurrent one)."""
    await _check_open(rt, session)
    storage = _storage(rt, session.storage)
    if session.multipart:
        await _assemble(storage, session, parts)
    info = await storage.head(session.storage_key)
    if info is None:
        raise VerificationFailed(f"upload session {session.id}: nothing is stored at the ticket's "
                                 "URL yet; send the file with the ticket, then verify")
    session = await _claim(rt, session)
    if session.state != "verifying":  # a concurrent call finished it first
        if session.state == "completed":
            return session
        _open_session(session, "verify it")
    reason, digests = await _refusal(rt, storage, session, info)
    if reason is not None:
        raise await _fail(rt, session, reason)
    return await _complete(rt, session, info, digests)


async def _check_open(rt: Runtime, session: SessionRow) -> None:
    """Refuse a session that is closed; expire (and refuse) one past its deadline."""
    if session.state not in UPLOAD_SESSION.group("open"):
        _open_session(session, "verify it")
    if session.expires_at <= _now():
        await _expire(rt, session)
        raise VerificationFailed(f"upload session {session.id} expired at "
                                 f"{session.expires_at.isoformat()}; start a new upload")


async def _assemble(storage: Storage, session: SessionRow, parts: Sequence[Part] | None) -> None:
    """Complete a multipart upload from the client's part list, before the session is claimed:
    a bad list or a storage failure leaves it open, for a retry with the right parts."""
    if not parts:
        if session.state != "verifying":
            raise ValidationError(f"upload session {session.id} is multipart: pass parts= "
                                  "(part_number and etag of every uploaded part)")
        return  # an earlier call assembled it and did not finish
    ordered = _check_parts(session, parts)
    try:
        await storage.complete_multipart(session.storage_key, session.multipart_upload_id or "",
                                         ordered)
    except NotFound:
        pass  # completed by an earlier call; the stored object decides


async def _refusal(rt: Runtime, storage: Storage, session: SessionRow,
                   info: ObjectInfo) -> tuple[str | None, dict[str, str]]:
    """Why the stored object is refused (size, limit, checksum), or None; and the digests read."""
    profile = find_profile(rt.profiles, session.profile)
    if info.size != session.byte_size:
        return f"the stored object has {info.size} bytes but {session.byte_size} were declared", {}
    if info.size > profile.max_bytes:
        return f"the stored object has {info.size} bytes, over the {profile.max_bytes}-byte limit", {}
    if not session.checksum:
        return None, {}
    algorithm = session.checksum.split(":", 1)[0]
    digests = await _object_digests(storage, session.storage_key, {algorithm, "sha256"})
    actual = f"{algorithm}:{digests[algorithm]}"
    if actual != session.checksum:
        return f"checksum mismatch: declared {session.checksum}, stored object has {actual}", digests
    return None, digests


async def _complete(rt: Runtime, session: SessionRow, info: ObjectInfo,
                    digests: dict[str, str]) -> SessionRow:
    """One transaction: the session completed, the asset validating, its promotion staged."""
    # What promotion must find again: the upload URL may still write (S3 cannot revoke it).
    verified = {"size": info.size, "etag": info.etag, "sha256": digests.get("sha256")}
    try:
        async with rt.db.transaction() as uow:
            await transitions.transition(uow, UPLOAD_SESSION, session.id, "verifying", "completed",
                                         verified_at=_now())
            await transitions.transition(uow, ASSET, session.asset_id, "staged", "validating",
                                         byte_size=info.size,
                                         metadata=msgspec.json.encode({"verified": verified}).decode())
            await stage_promote(uow, session.asset_id)
            uow.emit(UploadCompleted(session_id=str(session.id), asset_id=str(session.asset_id),
                                     profile=session.profile, adapter=session.storage,
                                     byte_size=info.size))
    except InvalidTransition:
        current = await _session(rt, session.id)
        if current.state != "completed":
            raise
        return current
    return msgspec.structs.replace(session, state="completed")


async def abort_upload(rt: Runtime, session_id: str) -> None:
    """Abandon an open session: it becomes aborted and its asset is purged.

    rt: the runtime of the opened Rindle.
    session_id: the session from ``initiate_upload``.
    """
    session = await _session(rt, session_id)
    if session.state not in UPLOAD_SESSION.group("open"):
        raise ValidationError(f"upload session {session_id} is {session.state}; "
                              "only open sessions can be aborted")
    async with rt.db.transaction() as uow:
        await transitions.transition(uow, UPLOAD_SESSION, session.id, session.state, "aborted",
                                reason="aborted by the host")
        await tombstone(uow, {session.asset_id: UNVERIFIED}, only_from={"staged"})
    if session.multipart_upload_id:
        await _storage(rt, session.storage).abort_multipart(
            session.storage_key, session.multipart_upload_id)


# -- proxied uploads ------------------------------------------------------------------


async def _head_and_rest(data: Source) -> tuple[bytes, Source]:
    """The first SNIFF_BYTES (or everything) for sniffing, and the whole data to store.

    Bytes and paths are stored as they are (one write or one file copy); an async
    iterator is read until the head is known and replayed in front of the rest.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data[:SNIFF_BYTES]), data
    if isinstance(data, (str, os.PathLike)):
        try:
            async with await anyio.open_file(data, "rb") as handle:
                return await handle.read(SNIFF_BYTES), data
        except OSError as exc:
            raise ValidationError(f"cannot read the upload file {os.fspath(data)!r}: {exc}") from exc
    if not isinstance(data, AsyncIterable):
        raise ValidationError(f"upload data must be bytes, a path or an async iterator of bytes, "
                              f"not {type(data).__name__}")
    stream = aiter(data)
    head = b""
    async for chunk in stream:
        head += bytes(chunk)
        if len(head) >= SNIFF_BYTES:
            break

    async def rest() -> AsyncIterator[bytes]:
        if head:
            yield head
        async for chunk in stream:
            if chunk:
                yield bytes(chunk)

    return head[:SNIFF_BYTES], rest()


async def upload(rt: Runtime, profile_name: str, data: Source, *, filename: str | None = None,
                 content_type: str | None = None) -> Asset:
    """Store a file that passes through the host, then hand it to promotion; return the asset.

    rt: the runtime of the opened Rindle.
    profile_name: the profile the file is uploaded under.
    data: bytes, a path to a local file, or an async iterator of byte chunks.
    filename: the client's file name (sanitized before it is stored).
    content_type: the declared type, if any; refused early when the profile forbids it,
        and when the bytes are of another type.
    """
    profile = find_profile(rt.profiles, profile_name)
    declared = None
    if content_type is not None:
        declared = security.check_declared_type(content_type, profile.allow_mime,
                                                profile=profile.name)
    head, stream = await _head_and_rest(data)
    if not head:
        raise ValidationError("the upload is empty (0 bytes)")
    sniffed = security.sniff(head)
    if sniffed is None or sniffed not in profile.allow_mime:
        raise ValidationError(f"the file's bytes are {sniffed or 'of an unknown type'}, which profile "
                              f"{profile.name!r} does not allow; allowed: {', '.join(profile.allow_mime)}")
    if declared is not None and declared != sniffed:  # what promotion quarantines a direct upload for
        raise ValidationError(f"declared {declared} but the bytes are {sniffed}; "
                              "declare the file's real type")
    if filename:
        security.check_extension(filename, sniffed)
    asset_id = uuid.uuid4()
    key = security.new_storage_key(profile.name, str(asset_id), security.extension_for(sniffed))
    storage = _storage(rt, profile.storage)
    try:
        info = await storage.put(key, stream, content_type=sniffed, max_bytes=profile.max_bytes)
    except TooLarge as exc:
        raise TooLarge(f"the upload is over the {profile.max_bytes}-byte limit of profile "
                       f"{profile.name!r}") from exc
    try:
        async with rt.db.transaction() as uow:
            row = await transitions.insert(uow, ASSET, "validating", id=asset_id, profile=profile.name,
                                storage=profile.storage, storage_key=key,
                                filename=security.sanitize_filename(filename),
                                content_type=sniffed, byte_size=info.size)
            await stage_promote(uow, asset_id)
            uow.emit(UploadCompleted(session_id=None, asset_id=str(asset_id), profile=profile.name,
                                     adapter=profile.storage, byte_size=info.size))
    except BaseException:
        try:  # the row never committed: nothing refers to the object
            await storage.delete(key)
        except StorageError:
            pass  # cleanup_orphans finds it under the asset's prefix
        raise
    return Asset.from_row(row)  # as committed: validating, no variants yet
