"""The storage protocol every adapter implements, and the values it passes around.

Adapters never touch the database.  rindle_async calls them only outside any
database transaction (a test wraps every adapter to enforce that).  Missing
objects are not errors where idempotence matters: ``head`` returns None and
``delete`` succeeds.  Bad arguments (the empty key, a malformed range) raise
:class:`rindle_async.ValidationError`; an error of ``put``'s source propagates
unchanged.  Other failures raise :class:`rindle_async.StorageError`
(retryable); a stream larger than ``max_bytes`` raises
:class:`rindle_async.errors.TooLarge` and leaves no object behind.
:func:`rindle_async.storage.contract.check_storage` checks an adapter against all of it.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime
from typing import Protocol, runtime_checkable

import anyio
import msgspec

from ..errors import TooLarge, ValidationError

#: What ``put`` accepts: the bytes, a path to a local file, or an async iterator of chunks.
Source = bytes | bytearray | memoryview | str | os.PathLike[str] | AsyncIterable[bytes]


#: The chunk size adapters read and stream with.
CHUNK_SIZE = 64 * 1024


def too_large(key: str, max_bytes: int) -> TooLarge:
    """The error for data over ``max_bytes`` bound for ``key``."""
    return TooLarge(f"{key!r}: the data is larger than the allowed {max_bytes} bytes; "
                    f"send a smaller file or raise the profile's max_bytes")


def unreadable_source(key: str, exc: OSError) -> ValidationError:
    """The error for a source file (bound for ``key``) that cannot be opened."""
    return ValidationError(f"cannot read the source file for {key!r}: {exc}")


async def iter_source(data: Source, *, key: str, max_bytes: int | None = None,
                      chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """Yield ``data`` as chunks, raising TooLarge once more than ``max_bytes`` were seen.

    data: bytes, a path to a local file (read in chunks, never whole), or an async iterable
    key: the object key, named in the TooLarge message
    max_bytes: the most bytes allowed, or None for no limit
    chunk_size: how much to read from a file at a time
    """
    total = 0

    def counted(chunk: bytes) -> bytes:
        nonlocal total
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise too_large(key, max_bytes)
        return chunk

    if isinstance(data, (bytes, bytearray, memoryview)):
        yield counted(bytes(data))
    elif isinstance(data, (str, os.PathLike)):
        try:
            file = await anyio.open_file(data, "rb")
        except OSError as exc:
            raise unreadable_source(key, exc) from exc
        async with file:
            while chunk := await file.read(chunk_size):
                yield counted(chunk)
    else:
        async for chunk in data:
            if chunk:
                yield counted(bytes(chunk))


def check_range(key: str, start: int | None, end: int | None) -> None:
    """Raise ValidationError unless ``start``..``end`` (inclusive, either may be None) is a sane range.

    key: the object key, named in the message
    start: the first byte asked for
    end: the last byte asked for
    """
    if (start is not None and start < 0) or (end is not None and end < (start or 0)):
        raise ValidationError(f"byte range {start}-{end} of {key!r} is invalid; use 0 <= start <= end")


class ObjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the store says about one object."""

    key: str
    size: int
    content_type: str | None = None
    etag: str | None = None
    last_modified: datetime | None = None


class PresignedRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An HTTP request a client may make without credentials until ``expires_at``."""

    method: str
    url: str
    headers: dict[str, str]
    expires_at: datetime


class PresignedPost(msgspec.Struct, frozen=True, kw_only=True):
    """An HTML-form upload: POST ``fields`` and then the file (as the form's last field, ``file``)
    to ``url`` as multipart/form-data until ``expires_at``; the store enforces the policy."""

    url: str
    fields: dict[str, str]
    expires_at: datetime


class MultipartUpload(msgspec.Struct, frozen=True, kw_only=True):
    """An unfinished multipart upload found at the store."""

    key: str
    upload_id: str
    initiated: datetime | None = None


class Part(msgspec.Struct, frozen=True, kw_only=True):
    """One uploaded part of a multipart upload, as the client reports it."""

    part_number: int
    etag: str


class StoredPart(msgspec.Struct, frozen=True, kw_only=True):
    """One part of an unfinished multipart upload, as the store holds it."""

    part_number: int
    etag: str
    size: int


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What an adapter can do; callers check before offering a feature."""

    presigned_put: bool
    multipart: bool
    signed_urls: bool
    public_urls: bool
    presigned_post: bool = False  # form uploads under a POST policy the store enforces
    list_parts: bool = False  # the parts of an unfinished multipart upload can be listed


@runtime_checkable
class Storage(Protocol):
    """An object store.  ``adapter`` names the kind ("local", "s3") in events."""

    adapter: str

    @property
    def capabilities(self) -> Capabilities: ...

    async def open(self) -> None:
        """Acquire long-lived resources (one client per opened Rindle)."""

    async def close(self) -> None:
        """Release what ``open`` acquired."""

    async def put(self, key: str, data: Source, *, content_type: str | None = None,
                  max_bytes: int | None = None) -> ObjectInfo:
        """Store ``data`` under ``key``, streaming; refuse more than ``max_bytes``."""

    def get(self, key: str, *, start: int | None = None, end: int | None = None
            ) -> AsyncIterator[bytes]:
        """Stream the object (bytes ``start``..``end`` inclusive when given); NotFound if missing."""

    async def download(self, key: str, path: str | os.PathLike[str], *, if_match: str | None = None) -> int:
        """Copy the object to a local file; return its size; NotFound if missing.

        With ``if_match`` (an ETag ``head`` gave), only that version of the object is copied;
        ObjectChanged if it was rewritten since (no file is created then).
        """

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size, type and ETag (which changes whenever it is rewritten), or None
        when it does not exist."""

    async def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error."""

    def list(self, prefix: str, *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, once each, across pages (in no promised order)."""

    async def presign_put(self, key: str, *, content_type: str, byte_size: int,
                          expires_in: int) -> PresignedRequest:
        """A PUT a client can send the bytes with, bound to type and size."""

    async def presign_post(self, key: str, *, content_type: str, max_bytes: int,
                           expires_in: int) -> PresignedPost:
        """A form POST the store accepts only for exactly ``key``, with ``content_type`` and
        1..``max_bytes`` bytes (Unsupported where ``capabilities.presigned_post`` is False)."""

    async def url(self, key: str, *, expires_in: int | None, content_type: str | None = None,
                  disposition: str | None = None) -> str:
        """A delivery URL: signed and expiring, or public when ``expires_in`` is None.

        Computed locally: no request to the store.
        """

    async def create_multipart(self, key: str, *, content_type: str) -> str:
        """Start a multipart upload; return its upload id."""

    async def presign_part(self, key: str, upload_id: str, part_number: int, *,
                           expires_in: int) -> PresignedRequest:
        """A PUT for one part of a multipart upload."""

    async def complete_multipart(self, key: str, upload_id: str, parts: builtins.list[Part]) -> ObjectInfo:
        """Assemble the parts into the object."""

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[StoredPart]:
        """The parts the store holds for the upload, in part-number order, across pages;
        NotFound when the upload is gone, Unsupported where the store cannot list them."""

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abandon a multipart upload and free its parts (missing is not an error)."""

    def list_multipart(self, prefix: str) -> AsyncIterator[MultipartUpload]:
        """Unfinished multipart uploads under ``prefix``."""
