"""Promotion: the checks from the real bytes that every upload passes before use.

``promote_asset`` downloads the original, sniffs its type from the bytes, checks
it against the profile (allowed types, the declared type, size, pixel count
read from the header before any decode) and either quarantines the asset with
its reason or promotes it, planning one variant per profile variant and staging
their renders in the same transaction.  A direct upload's URL can still write
its key (S3 cannot revoke a presigned PUT), so promotion reads only the version
verify_upload accepted (a conditional download on its ETag, and its sha256 when
verification read the bytes) and quarantines one that changed.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import msgspec

from . import security
from .db import assets, variants
from .db.assets import AssetRow
from .errors import InvalidTransition, NotFound, ObjectChanged, ValidationError
from .ledger.stage import stage_render
from .lifecycle import transitions
from .lifecycle.machines import ASSET, VARIANT
from .scratch import local_copy, scratch_folder
from .storage import keys

if TYPE_CHECKING:
    from .db.transaction import UnitOfWork
    from .ledger.runner import JobRun
    from .profiles import Profile
    from .runtime import Runtime
    from .storage.base import Storage

log = logging.getLogger("rindle_async.promotion")
ANALYZE_TIMEOUT = 30.0
#: Types libvips analyses (pixel limits, dimensions); others are checked by type and size only.
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif", "image/avif",
                         "image/heic", "image/tiff"})


def _digest_and_head(path: str) -> tuple[str, bytes, int]:
    digest, head, size = hashlib.sha256(), b"", 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            if not head:
                head = chunk[:8192]
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), head, size


async def plan_variants(uow: UnitOfWork, rt: Runtime, asset_id: UUID, profile_name: str,
                        names: list[str] | None = None) -> int:
    """Create the asset's missing variant rows, queued, and stage their render; return how many.

    uow: the unit of work of the promotion (or of a regeneration).
    rt: the runtime of the opened Rindle.
    asset_id: the asset.
    profile_name: its profile.
    names: only these variants (default: the profile's eager variants).
    """
    missing = await missing_variants(uow, rt, asset_id, profile_name, names)
    if missing:
        await _queue_new(uow, rt, asset_id, profile_name, missing)
    return len(missing)


async def missing_variants(uow: UnitOfWork, rt: Runtime, asset_id: UUID, profile_name: str,
                           names: list[str] | None = None) -> list[str]:
    """The eager variants of the profile (or ``names``) the asset has no row for yet."""
    profile = rt.profiles[profile_name]
    existing = await variants.names_of(uow.conn, rt.schema, asset_id)
    return [name for name in (names if names is not None else profile.eager_names()) if name not in existing]


async def _queue_new(uow: UnitOfWork, rt: Runtime, asset_id: UUID, profile_name: str,
                     names: list[str]) -> None:
    digests = rt.profiles[profile_name].recipe_digests()
    await transitions.insert_many(uow, VARIANT, [
        {"id": uuid.uuid4(), "asset_id": asset_id, "name": name, "recipe_digest": digests[name]}
        for name in names], path=("planned", "queued"))
    await stage_render(uow, asset_id)


async def queue_render(uow: UnitOfWork, variant_id: object, asset_id: UUID, name: str,
                       from_state: str, **changes: Any) -> None:
    """Move a variant to queued and stage its asset's render (one pending render per asset).

    changes: other columns written with the transition (e.g. the new ``recipe_digest``).
    """
    await transitions.transition(uow, VARIANT, variant_id, from_state, "queued", reason=None,
                            **changes)
    await stage_render(uow, asset_id)


async def _quarantine(job: JobRun, asset_id: UUID, reason: str) -> None:
    async with job.complete() as uow:
        await transitions.transition(uow, ASSET, asset_id, "analyzing", "quarantined", reason=reason)
    log.info("asset %s quarantined: %s", asset_id, reason)


async def promote_asset(job: JobRun) -> None:
    """Check an uploaded original from its bytes; quarantine it or promote it.

    job: the running ledger job; ``job.args.asset_id`` names the asset.
    """
    rt = job.runtime
    asset_id = job.args.asset_id
    asset = await _claim(rt, asset_id)
    if asset is None:
        return  # gone, or promoted or refused by an earlier delivery of this job
    profile = rt.profiles.get(asset.profile)
    if profile is None:
        await _quarantine(job, asset_id, f"profile {asset.profile!r} is not configured")
        return
    storage = rt.storages[asset.storage]
    checked = await _check_bytes(rt, storage, profile, asset)
    try:
        if checked.reason is not None:
            await _quarantine(job, asset_id, checked.reason)
            return
        await _promote(job, asset_id, profile.name, checked)
    except InvalidTransition:
        log.info("asset %s was handled by another delivery of its promotion", asset_id)
        return
    if checked.original != asset.storage_key:
        await storage.delete(asset.storage_key)


async def _claim(rt: Runtime, asset_id: UUID) -> AssetRow | None:
    """Move a validating asset to analyzing and return its row; an analyzing one (a retry)
    is returned as it is; None when there is nothing to promote."""
    try:
        async with rt.db.transaction() as uow:
            row = await transitions.transition(uow, ASSET, asset_id, "validating", "analyzing")
        return AssetRow(**dict(row))
    except InvalidTransition as exc:
        if exc.actual != "analyzing":
            return None  # promoted, refused or deleted meanwhile
    except NotFound:
        return None
    return await assets.get(rt.pool, rt.schema, asset_id)


class _Checked:
    """What promotion learnt from the bytes: a refusal, or what to promote."""

    def __init__(self, reason: str | None, original: str, sniffed: str | None, size: int,
                 metadata: dict[str, Any]) -> None:
        self.reason, self.original, self.sniffed, self.size = reason, original, sniffed, size
        self.metadata = metadata


async def _check_bytes(rt: Runtime, storage: Storage, profile: Profile, asset: AssetRow) -> _Checked:
    """Read the stored bytes (outside any transaction): type, size, pixels; keep them safe."""
    from .processing import images  # loads libvips, in workers only

    upload_key = asset.storage_key
    verified = _verified(asset)
    with scratch_folder("rindle-promote-") as workdir:
        try:
            path = await local_copy(storage, upload_key, workdir, etag=verified.get("etag"),
                                    in_place=not keys.is_upload_key(upload_key))
        except ObjectChanged as exc:
            return _Checked(f"the object changed after verification: {exc}", upload_key, None,
                            asset.byte_size or 0, {})
        sha256, head, size = await anyio.to_thread.run_sync(_digest_and_head, path)
        sniffed = security.sniff(head)
        reason = _changed(verified, sha256) or _refusal(profile, asset, sniffed, size)
        metadata: dict[str, Any] = {"sha256": sha256}
        if reason is None and sniffed in IMAGE_TYPES:
            try:
                metadata.update(await rt.processing.run(
                    # the placeholder here only when no render will decode the image anyway
                    images.analyze, path, profile.max_pixels, profile.max_frames, not profile.eager_names(),
                    timeout=ANALYZE_TIMEOUT, lane="analysis"))
            except images.ImageRefused as exc:
                reason = str(exc)
        original = upload_key
        if reason is None and sniffed is not None:  # _refusal refuses what sniff did not name
            original = keys.new_storage_key(profile.name, asset.id,
                                                security.extension_for(sniffed))
        if original != upload_key:
            # A direct upload's URL stays valid until the session deadline: keep the bytes
            # that were checked at a key no client can write, and never read the upload again.
            await storage.put(original, path, content_type=sniffed)
    return _Checked(reason, original, sniffed, size, metadata)


def _verified(asset: AssetRow) -> dict[str, Any]:
    """What verify_upload saw of a direct upload's object (size, ETag, sha256); {} for others."""
    metadata = msgspec.json.decode(asset.metadata or "{}")
    return metadata.get("verified") or {}


def _changed(verified: dict[str, Any], sha256: str) -> str | None:
    if verified.get("sha256") and verified["sha256"] != sha256:
        return (f"the object changed after verification: its sha256 is {sha256}, "
                f"verify_upload read {verified['sha256']}")
    return None



async def _promote(job: JobRun, asset_id: UUID, profile_name: str, checked: _Checked) -> None:
    metadata = checked.metadata
    async with job.complete() as uow:
        missing = await missing_variants(uow, job.runtime, asset_id, profile_name)
        await transitions.walk(
            uow, ASSET, asset_id,
            ("analyzing", "promoting", "available", "processing" if missing else "ready"),
            content_type=checked.sniffed, byte_size=checked.size, sha256=metadata["sha256"],
            width=metadata.get("width"), height=metadata.get("height"),
            metadata=msgspec.json.encode(metadata).decode(), storage_key=checked.original)
        if missing:
            await _queue_new(uow, job.runtime, asset_id, profile_name, missing)


def _refusal(profile: Profile, asset: AssetRow, sniffed: str | None, size: int) -> str | None:
    if sniffed is None:
        return "the bytes are not of a recognised type"
    if sniffed not in profile.allow_mime:
        return (f"the bytes are {sniffed}, which profile {profile.name!r} does not allow "
                f"(allowed: {', '.join(profile.allow_mime)})")
    if asset.content_type and asset.content_type != sniffed:
        return f"declared {asset.content_type} but the bytes are {sniffed}"
    if asset.filename:  # initiate_upload refuses these now; rows from before it did
        try:
            security.check_extension(asset.filename, sniffed)
        except ValidationError as exc:
            return str(exc)
    if size > profile.max_bytes:
        return f"the file has {size} bytes, over the profile's limit of {profile.max_bytes}"
    if asset.byte_size is not None and size != asset.byte_size:
        return f"the stored file has {size} bytes, not the {asset.byte_size} verified"
    return None


async def promotion_failed(uow: UnitOfWork, job: JobRun, error: str) -> None:
    """``on_discard`` of promote_asset: an asset that could not be checked is quarantined."""
    asset_id = job.args.asset_id
    state = await assets.lock_state(uow.conn, uow.schema, asset_id)
    if state in ASSET.group("promotable"):
        await transitions.transition(uow, ASSET, asset_id, state, "quarantined",
                                reason=f"promotion failed after {job.attempt} attempt(s): {error}")
