"""Verification of a direct upload: the only trust gate between a client's PUT and promotion.

Each phase reads, does storage I/O, or runs one transaction: refuse a closed session
(expiring one past its deadline), assemble a multipart upload, HEAD the object, claim
the session, decide whether the object is refused, and complete.  A call that loses the
claim to a concurrent one carries on from the row it re-read, without recursion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from ..assets import get_asset
from ..db.sessions import SessionRow
from ..errors import InvalidTransition, NotFound, ValidationError, VerificationFailed
from ..events import UploadCompleted
from ..ledger.stage import stage_promote
from ..lifecycle import transitions
from ..lifecycle.machines import ASSET, UPLOAD_SESSION
from ..lifecycle.tombstone import tombstone
from ..models import Asset
from ..profiles import find_profile
from ..storage.base import ObjectInfo, Part, Storage
from .sessions import MAX_PARTS, UNVERIFIED, check_open, load, now, storage_of

if TYPE_CHECKING:
    from ..runtime import Runtime

MAX_ETAG = 1024  # S3's are under 40 characters; anything longer is not one


def _check_parts(session: SessionRow, parts: Sequence[Part]) -> list[Part]:
    """The client's part list in part-number order, refused (ValidationError) unless each is a
    Part numbered within S3's 1..10000, named once, with an ETag.  The sizes are the store's
    to check (5 MiB at least for every part but the last), the total is verification's."""
    listed, prefix = list(parts), f"upload session {session.id}: parts="
    seen: set[int] = set()
    for index, part in enumerate(listed):
        if not isinstance(part, Part):
            raise ValidationError(f"{prefix} parts[{index}] is a {type(part).__name__}, not a "
                                  "Part(part_number=..., etag=...)")
        number, etag = part.part_number, part.etag
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_PARTS:
            raise ValidationError(f"{prefix} parts[{index}].part_number={number!r} is outside "
                                  f"S3's 1..{MAX_PARTS}")
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
        return await load(rt, session.id)
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
        each once, in any order, of any sizes S3 accepts; the total is checked against the
        declared size (when there is one) and the profile's max_bytes.
    A second call on a completed session returns the same asset.  A bad part list raises
    ValidationError and a storage failure StorageError; both leave the session open.
    """
    session = await load(rt, session_id)
    if session.state != "completed":
        session = await _verify(rt, session, parts)
    return await get_asset(rt.pool, rt.schema, session.asset_id)


async def _verify(rt: Runtime, session: SessionRow, parts: Sequence[Part] | None) -> SessionRow:
    """The phases of a verification; each reads, does storage I/O, or runs one transaction.
    Returns the session completed (by this call or by a concurrent one)."""
    await _check_open(rt, session)
    storage = storage_of(rt, session.storage)
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
        check_open(session, "verify it")
    reason, digests = await _refusal(rt, storage, session, info)
    if reason is not None:
        raise await _fail(rt, session, reason)
    return await _complete(rt, session, info, digests)


async def _check_open(rt: Runtime, session: SessionRow) -> None:
    """Refuse a session that is closed; expire (and refuse) one past its deadline."""
    if session.state not in UPLOAD_SESSION.group("open"):
        check_open(session, "verify it")
    if session.expires_at <= now():
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
    if session.byte_size is not None and info.size != session.byte_size:
        return f"the stored object has {info.size} bytes but {session.byte_size} were declared", {}
    if info.size < 1:
        return "the stored object is empty", {}
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
                                         verified_at=now())
            await transitions.transition(uow, ASSET, session.asset_id, "staged", "validating",
                                         byte_size=info.size,
                                         metadata=msgspec.json.encode({"verified": verified}).decode())
            await stage_promote(uow, session.asset_id)
            uow.emit(UploadCompleted(session_id=str(session.id), asset_id=str(session.asset_id),
                                     profile=session.profile, adapter=session.storage,
                                     byte_size=info.size))
    except InvalidTransition:
        current = await load(rt, session.id)
        if current.state != "completed":
            raise
        return current
    return msgspec.structs.replace(session, state="completed")


