"""Proxied uploads: a file that streams through the host.  The type is sniffed from the
first bytes before anything is stored, and the size limit holds while streaming."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING

import anyio

from .. import security
from ..errors import StorageError, TooLarge, ValidationError
from ..events import UploadCompleted
from ..ledger.stage import stage_promote
from ..lifecycle import transitions
from ..lifecycle.machines import ASSET
from ..models import Asset
from ..profiles import Profile, find_profile
from ..storage import keys
from ..storage.base import Source
from .sessions import storage_of

if TYPE_CHECKING:
    from ..runtime import Runtime

SNIFF_BYTES = 8192


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


def _checked_type(profile: Profile, head: bytes, declared: str | None, filename: str | None) -> str:
    """The type sniffed from the first bytes; ValidationError unless the profile allows it and
    it is the declared type (if any) and the one the filename's extension names (if any)."""
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
    return sniffed


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
        declared = security.known_type(security.check_declared_type(content_type, profile.allow_mime,
                                                                    profile=profile.name))
    head, stream = await _head_and_rest(data)
    sniffed = _checked_type(profile, head, declared, filename)
    asset_id = uuid.uuid4()
    key = keys.new_storage_key(profile.name, str(asset_id), security.extension_for(sniffed))
    storage = storage_of(rt, profile.storage)
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
