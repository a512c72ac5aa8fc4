"""Where the bytes of an unfinished resumable upload live, per kind of store.

A resumable upload receives its file in chunks over many requests, possibly through
server restarts.  Its offset is never stored on its own: it is derived from what the
store holds, so it can never claim bytes that are not there.

- :class:`PartialFile` (LocalStorage): chunks are appended to ``<asset prefix>/tus.partial``
  inside the storage root; the offset is that file's size.  Finishing renames it to the
  session's key (atomic, no copy).
- :class:`MultipartParts` (S3 and other stores with multipart): chunks are cut into parts
  of ``part_size`` bytes (at least S3's 5 MiB) and uploaded to the session's multipart
  upload; each part is recorded in the session's ``parts`` column after the store accepted
  it.  The not-yet-full tail is stored as a small object of its own,
  ``<asset prefix>/tus.tail.<next part number>``, rewritten at the end of every request, so
  it survives restarts and reaches every web process that shares the bucket.  The offset
  is the recorded parts' sizes plus that tail's size: naming the tail after the part it
  will become means a crash between recording a part and rewriting the tail never counts
  bytes twice (the old tail's name is stale and ignored).

Both keep their scratch objects under the asset's prefix, so a purge of the asset (after
an abort, an expiry or a termination) deletes them with everything else.  Storage I/O
only; the callers run no database transaction around it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio
import anyio.to_thread

from ..db import sessions
from ..db.resumable import ResumableRow
from ..db.sessions import SessionRow
from ..errors import NotFound, OffsetMismatch, TooLarge, UploadBusy, ValidationError
from ..storage.base import Part, Storage
from ..storage.keys import RESUMABLE_SCRATCH, asset_prefix

if TYPE_CHECKING:
    from ..runtime import Runtime


class Appender(Protocol):
    """Appends chunks to unfinished uploads on one store (see the module docstring)."""

    async def start(self, session: SessionRow) -> str | None:
        """Prepare the store for a new upload; return its multipart upload id, if any."""

    async def offset(self, session: SessionRow, row: ResumableRow) -> int:
        """How many bytes of the upload are stored."""

    async def append(self, session: SessionRow, row: ResumableRow, offset: int,
                     chunks: AsyncIterable[bytes]) -> int:
        """Store ``chunks`` after ``offset`` bytes; return the new offset.  What arrived before
        ``chunks`` failed (a dropped connection) is kept, then the failure propagates."""

    async def finish(self, session: SessionRow, row: ResumableRow) -> None:
        """Make the whole file the object at the session's key (a second call is a no-op)."""


@runtime_checkable
class LocalFiles(Protocol):
    """A store whose objects are local files (LocalStorage)."""

    async def local_path(self, key: str) -> str: ...


@runtime_checkable
class PartUploads(Protocol):
    """A store that takes multipart parts from this process (S3Storage)."""

    async def create_multipart(self, key: str, *, content_type: str) -> str: ...

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: bytes) -> Part: ...

    async def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> object: ...


def _overflow(session: SessionRow) -> TooLarge:
    return TooLarge(f"upload session {session.id}: the chunk goes past the declared Upload-Length "
                    f"of {session.length} bytes; send only the bytes that remain")


class PartialFile:
    """Appends to a partial file inside a LocalStorage root."""

    def __init__(self, storage: LocalFiles) -> None:
        self.storage = storage

    async def _path(self, session: SessionRow) -> anyio.Path:
        key = asset_prefix(session.storage_key) + RESUMABLE_SCRATCH + "partial"
        return anyio.Path(await self.storage.local_path(key))

    async def start(self, session: SessionRow) -> str | None:
        path = await self._path(session)
        await path.parent.mkdir(parents=True, exist_ok=True)
        await path.touch()
        return None

    async def offset(self, session: SessionRow, row: ResumableRow) -> int:
        for path in (await self._path(session), anyio.Path(await self.storage.local_path(session.storage_key))):
            if await path.exists():
                return (await path.stat()).st_size
        return 0

    async def append(self, session: SessionRow, row: ResumableRow, offset: int,
                     chunks: AsyncIterable[bytes]) -> int:
        path = await self._path(session)
        if not await path.exists():
            raise NotFound(f"upload session {session.id}: its partial file is gone; start a new upload")
        async with await anyio.open_file(path, "ab") as file:
            await _lock_at(file.wrapped.fileno(), session, offset)
            try:
                async for chunk in chunks:
                    if offset + len(chunk) > session.length:
                        raise _overflow(session)
                    await file.write(chunk)
                    offset += len(chunk)
            finally:  # durable before the client is told the new offset
                await file.flush()
                await anyio.to_thread.run_sync(os.fsync, file.wrapped.fileno())
        return offset

    async def finish(self, session: SessionRow, row: ResumableRow) -> None:
        partial = await self._path(session)
        if await partial.exists():
            await partial.rename(await self.storage.local_path(session.storage_key))


async def _lock_at(fd: int, session: SessionRow, offset: int) -> None:
    """Lock the partial file against writers in other processes (released when it is closed),
    then make sure it still ends at ``offset``: a writer that was first may have moved it."""
    try:
        await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UploadBusy(f"upload session {session.id}: another request is storing a chunk right "
                         "now; retry when it finished") from None
    size = (await anyio.to_thread.run_sync(os.fstat, fd)).st_size
    if size != offset:
        raise OffsetMismatch(session.id, offset, size)


class MultipartParts:
    """Cuts chunks into multipart parts; keeps the tail as an object of its own."""

    def __init__(self, rt: Runtime, storage: Storage) -> None:
        assert isinstance(storage, PartUploads)
        self.rt, self.storage, self.parts = rt, storage, storage

    def _tail_key(self, session: SessionRow, part_number: int) -> str:
        return f"{asset_prefix(session.storage_key)}{RESUMABLE_SCRATCH}tail.{part_number}"

    async def start(self, session: SessionRow) -> str | None:
        return await self.storage.create_multipart(session.storage_key, content_type=session.content_type)

    async def offset(self, session: SessionRow, row: ResumableRow) -> int:
        tail = await self.storage.head(self._tail_key(session, len(row.parts) + 1))
        return sum(size for _, size in row.parts) + (tail.size if tail else 0)

    async def append(self, session: SessionRow, row: ResumableRow, offset: int,
                     chunks: AsyncIterable[bytes]) -> int:
        number, stored_tail = len(row.parts) + 1, self._tail_key(session, len(row.parts) + 1)
        buffer = bytearray()
        if await self.storage.head(stored_tail) is not None:
            buffer += b"".join([chunk async for chunk in self.storage.get(stored_tail)])
        size = session.part_size or session.length
        received = offset - len(buffer)  # bytes already in recorded parts
        try:
            async for chunk in chunks:
                if received + len(buffer) + len(chunk) > session.length:
                    raise _overflow(session)
                buffer += chunk
                while len(buffer) >= size:
                    await self._flush(session, number, bytes(buffer[:size]))
                    del buffer[:size]
                    number, received = number + 1, received + size
            if buffer and received + len(buffer) == session.length:  # the last, short part
                await self._flush(session, number, bytes(buffer))
                number, received, buffer = number + 1, received + len(buffer), bytearray()
        finally:
            with anyio.CancelScope(shield=True):  # a dropped connection keeps what arrived
                await self._keep_tail(session, number, bytes(buffer), stored_tail)
        return received + len(buffer)

    async def _flush(self, session: SessionRow, number: int, body: bytes) -> None:
        part = await self.parts.upload_part(session.storage_key, session.multipart_upload_id or "",
                                              number, body)
        if not await sessions.add_part(self.rt.pool, self.rt.schema, session.id, part, len(body)):
            raise ValidationError(f"upload session {session.id}: part {number} was recorded by a "
                                  "concurrent request; ask for the offset (HEAD) and resume")

    async def _keep_tail(self, session: SessionRow, number: int, tail: bytes, stored: str) -> None:
        key = self._tail_key(session, number)
        if tail:
            await self.storage.put(key, tail)
        if key != stored or not tail:
            await self.storage.delete(stored)

    async def finish(self, session: SessionRow, row: ResumableRow) -> None:
        try:
            await self.storage.complete_multipart(session.storage_key, session.multipart_upload_id or "",
                                                  [part for part, _ in row.parts])
        except NotFound:
            pass  # completed by an earlier call that did not get to verification


def can_resume(storage: Storage) -> bool:
    """Whether ``storage`` can hold unfinished resumable uploads (LocalStorage, S3Storage).

    storage: a storage adapter.
    """
    return isinstance(storage, LocalFiles) or (storage.capabilities.multipart
                                               and isinstance(storage, PartUploads))


def appender_for(rt: Runtime, storage: Storage) -> Appender:
    """The appender for ``storage``; ValidationError for a store that cannot hold a partial upload.

    rt: the runtime of the opened Rindle.
    storage: the store of the upload's profile.
    """
    if isinstance(storage, LocalFiles):
        return PartialFile(storage)
    if can_resume(storage):
        return MultipartParts(rt, storage)
    raise ValidationError(f"storage {storage.adapter!r} cannot hold resumable uploads; "
                          "use a LocalStorage or an S3Storage")
