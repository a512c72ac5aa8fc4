"""The tus 1.0 resumable upload protocol, independent of any web framework.

Core protocol plus the creation, creation-with-upload, termination, expiration and
checksum extensions (https://tus.io/protocols/resumable-upload), for one profile.
``rindle_async.contrib.starlette.tus_routes`` and ``rindle_async.contrib.aiohttp.add_tus_routes``
are thin adapters over :meth:`TusServer.handle`: they pass the request's method, the upload
id from the path, headers and body stream, and a call to the host's authorization, and turn
the :class:`~rindle_async.contrib.local_http.Answer` into their own response.  Every status
and header is decided here, so both frameworks behave the same.

Each upload is an upload session (``rindle_async.uploads.resumable``): its deadline is
``Upload-Expires``, its offset is derived from the stored bytes (a restarted server
resumes), and the request that completes the file verifies it and stages its promotion;
the host learns the asset from ``on_complete`` and from the ``Rindle-Asset-Id`` header.

Refusals: 412 without ``Tus-Resumable: 1.0.0``, 413 for an ``Upload-Length`` over the
profile's ``max_bytes`` (or a chunk past it), 415 for a PATCH that is not
``application/offset+octet-stream``, 409 for a wrong ``Upload-Offset``, 460 for a chunk
whose ``Upload-Checksum`` does not match (nothing of it is stored), 403 when the host's
authorization refuses, 404 for an unknown upload (or another owner's), 410 for one that
expired, was terminated or failed, 423 while another process stores a chunk of it, 422 when
the finished file's bytes are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from ..errors import (
    ConfigurationError,
    NotFound,
    OffsetMismatch,
    RindleError,
    TooLarge,
    UploadBusy,
    UploadClosed,
    ValidationError,
    VerificationFailed,
)
from ..models import Asset
from ..security import type_for_filename
from ..uploads.appending import can_resume
from ..uploads.resumable import ResumableUpload
from .local_http import Answer

if TYPE_CHECKING:
    from ..app import Rindle

__all__ = ["Authorize", "OnComplete", "OnCompleteFailed", "TusServer"]

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
CHECKSUMS: dict[str, Callable[[], Any]] = {"sha1": hashlib.sha1, "md5": hashlib.md5, "sha256": hashlib.sha256}
OFFSET_STREAM = "application/offset+octet-stream"
#: The header that names the finished upload's asset.
ASSET_HEADER = "Rindle-Asset-Id"
_DIGITS = re.compile(r"\d{1,19}", re.ASCII)
_METADATA_KEY = re.compile(r"[^\s,]+")

#: The host's authorization, called per request (not for OPTIONS): the owner the upload is
#: for (who may later read, append to and terminate it), or None (or "") to refuse with 403.
Authorize = Callable[[], Awaitable[str | None]]
#: Called once per upload, after the request that completed it committed: (asset, owner).
OnComplete = Callable[[Asset, str | None], Awaitable[None]]


class OnCompleteFailed(Exception):
    """The host's ``on_complete`` raised (the upload itself completed); the host sees a 500."""


class ChecksumMismatch(ValidationError):
    """A chunk's bytes do not hash to its Upload-Checksum (tus: 460)."""


class UnsupportedMediaType(ValidationError):
    """A PATCH whose body is not ``application/offset+octet-stream`` (HTTP 415)."""


class TusServer:
    """tus 1.0 uploads into one profile; mount its adapter at ``path`` (tusd's default: /files/).

    rindle: the host's Rindle (opened before the first request).
    profile: the profile every upload of this server belongs to.
    path: the URL path the routes are mounted at; upload URLs are ``{path}{upload id}``.
    on_complete: awaited once per finished upload with its asset (validating) and owner;
        the place to attach it.  An error it raises is the client's 500.
    """

    def __init__(self, rindle: Rindle, *, profile: str, path: str = "/files/",
                 on_complete: OnComplete | None = None) -> None:
        if profile not in rindle.profiles:
            raise ConfigurationError(f"TusServer(profile={profile!r}): Rindle has no such profile; "
                                     f"it has {sorted(rindle.profiles) or 'none'}")
        self.profile = rindle.profiles[profile]
        storage = rindle.storages[self.profile.storage]
        if not can_resume(storage):
            raise ConfigurationError(f"profile {profile!r} stores in {type(storage).__name__}; tus uploads "
                                     "need a LocalStorage or an S3Storage")
        self.rindle, self.on_complete = rindle, on_complete
        self.path = "/" + path.strip("/") + "/" if path.strip("/") else "/"

    async def handle(self, method: str, upload_id: str, headers: Mapping[str, str],
                     body: AsyncIterable[bytes], authorize: Authorize | None = None) -> Answer:
        """Answer one tus request; the adapters call only this.

        method: the request's HTTP method.
        upload_id: the path below ``path`` ("" for the upload collection itself).
        headers: the request's headers, looked up case-insensitively.
        body: the request body as a stream of chunks (read only for POST and PATCH).
        authorize: the host's authorization for this request, or None to allow everyone.
        """
        method = method.upper()
        if method == "OPTIONS":
            return self._answer(204, {"Tus-Version": TUS_VERSION, "Tus-Extension": EXTENSIONS,
                                      "Tus-Max-Size": str(self.profile.max_bytes),
                                      "Tus-Checksum-Algorithm": ",".join(CHECKSUMS)})
        if headers.get("tus-resumable") != TUS_VERSION:
            return self._error(412, f"Tus-Resumable {headers.get('tus-resumable')!r} is not a version this "
                                    f"server speaks; send Tus-Resumable: {TUS_VERSION}",
                               {"Tus-Version": TUS_VERSION})
        owner = None
        if authorize is not None and not (owner := await authorize()):
            return self._error(403, "the host refused this upload request; sign in first")
        try:
            return await self._dispatch(method, upload_id.strip("/"), headers, body, owner)
        except RindleError as exc:
            return self._refuse(exc)

    async def _dispatch(self, method: str, upload_id: str, headers: Mapping[str, str],
                        body: AsyncIterable[bytes], owner: str | None) -> Answer:
        if not upload_id:
            if method == "POST":
                return await self._create(headers, body, owner)
            return self._not_allowed(method, "OPTIONS, POST")
        _check_upload_id(upload_id)
        if method == "HEAD":
            upload = await self.rindle.resumable_upload(upload_id, owner=owner)
            return self._answer(200, {**self._upload_headers(upload), "Upload-Length": str(upload.length),
                                      **_metadata_header(upload.metadata)})
        if method == "PATCH":
            return await self._append(upload_id, headers, body, owner)
        if method == "DELETE":
            await self.rindle.terminate_resumable_upload(upload_id, owner=owner)
            return self._answer(204, {})
        return self._not_allowed(method, "OPTIONS, HEAD, PATCH, DELETE")

    async def _create(self, headers: Mapping[str, str], body: AsyncIterable[bytes],
                      owner: str | None) -> Answer:
        """POST: creation, and creation-with-upload when the request carries the first chunk."""
        if "upload-defer-length" in headers:
            raise ValidationError("Upload-Defer-Length is not supported here; send Upload-Length")
        length = _number(headers, "upload-length")
        metadata = parse_metadata(headers.get("upload-metadata"))
        if not metadata.get("filetype") and type_for_filename(metadata.get("filename")) is None:
            raise ValidationError("Upload-Metadata names no filetype (and no filename with a known "
                                  f"extension); send filetype, one of {', '.join(self.profile.allow_mime)}")
        upload = await self.rindle.create_resumable_upload(
            self.profile.name, length=length, filename=metadata.get("filename"),
            content_type=metadata.get("filetype") or None, owner=owner, metadata=metadata)
        location = {"Location": self.path + upload.session_id}
        if (headers.get("content-type") or "").split(";")[0].strip().lower() != OFFSET_STREAM:
            return self._answer(201, {**location, **self._upload_headers(upload)})
        try:
            answer = await self._append(upload.session_id, headers, body, owner, offset=0)
        except RindleError as exc:
            answer = self._refuse(exc)
        return Answer(status=201 if answer.status == 204 else answer.status, body=answer.body,
                      headers={**answer.headers, **location})

    async def _append(self, upload_id: str, headers: Mapping[str, str], body: AsyncIterable[bytes],
                      owner: str | None, offset: int | None = None) -> Answer:
        """PATCH: one chunk at ``Upload-Offset``, checked against ``Upload-Checksum`` when given."""
        if (headers.get("content-type") or "").split(";")[0].strip().lower() != OFFSET_STREAM:
            raise UnsupportedMediaType(f"Content-Type {headers.get('content-type')!r} is not "
                                       f"{OFFSET_STREAM}; send the chunk as {OFFSET_STREAM}")
        offset = _number(headers, "upload-offset") if offset is None else offset
        checksum = parse_checksum(headers.get("upload-checksum"))
        async with anyio.SpooledTemporaryFile(max_size=1024 * 1024) as spool:
            if checksum is not None:
                body = await _checked(body, spool, *checksum)
            upload = await self.rindle.append_resumable_upload(upload_id, offset=offset, chunks=body,
                                                               owner=owner)
        if upload.completed and self.on_complete is not None:
            asset = await self.rindle.get_asset(upload.asset_id)
            try:
                await self.on_complete(asset, owner)
            except RindleError as exc:  # the host's failure, not the client's: a 500, never a refusal
                raise OnCompleteFailed(f"on_complete failed for asset {asset.id}: {exc}") from exc
        return self._answer(204, self._upload_headers(upload))

    def _upload_headers(self, upload: ResumableUpload) -> dict[str, str]:
        headers = {"Upload-Offset": str(upload.offset), "Cache-Control": "no-store"}
        if upload.completed:
            headers[ASSET_HEADER] = upload.asset_id
        else:
            headers["Upload-Expires"] = format_datetime(upload.expires_at, usegmt=True)
        return headers

    def _answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> Answer:
        return Answer(status=status, body=body, headers={"Tus-Resumable": TUS_VERSION, **headers})

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
        return self._answer(status, {"Content-Type": "application/json", "Cache-Control": "no-store",
                                     **(headers or {})}, msgspec.json.encode({"error": message}))

    def _not_allowed(self, method: str, allowed: str) -> Answer:
        return self._error(405, f"method {method} is not allowed here; use one of {allowed}",
                           {"Allow": allowed})

    def _refuse(self, exc: RindleError) -> Answer:
        """The answer for an expected refusal; anything else is re-raised (the host's 500)."""
        for kind, status in ((ChecksumMismatch, 460), (UnsupportedMediaType, 415), (OffsetMismatch, 409),
                             (TooLarge, 413), (NotFound, 404), (UploadClosed, 410), (UploadBusy, 423),
                             (VerificationFailed, 422), (ValidationError, 400)):
            if isinstance(exc, kind):
                return self._error(status, str(exc))
        raise exc


def parse_metadata(header: str | None) -> dict[str, str]:
    """Upload-Metadata (``key base64value,key2 base64value``) as a dict; ValidationError naming the bad pair.

    header: the request's Upload-Metadata header, if any.
    """
    metadata: dict[str, str] = {}
    for pair in (header or "").split(","):
        if not pair.strip():
            continue
        key, _, value = pair.strip().partition(" ")
        if not _METADATA_KEY.fullmatch(key) or key in metadata:
            raise ValidationError(f"Upload-Metadata key {key!r} is empty, repeated or holds spaces or commas")
        try:
            metadata[key] = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValidationError(f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text: "
                                  f"{exc}") from exc
    return metadata


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """Upload-Checksum (``<algorithm> <base64 digest>``) as (algorithm, digest), or None when absent.

    header: the request's Upload-Checksum header, if any.
    """
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm.lower() not in CHECKSUMS:
        raise ValidationError(f"Upload-Checksum algorithm {algorithm!r} is not supported; use one of "
                              f"{', '.join(CHECKSUMS)}")
    try:
        return algorithm.lower(), base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error as exc:
        raise ValidationError(f"Upload-Checksum digest {encoded!r} is not base64: {exc}") from exc


async def _checked(body: AsyncIterable[bytes], spool: anyio.SpooledTemporaryFile[bytes], algorithm: str,
                   expected: bytes) -> AsyncIterator[bytes]:
    """Spool the whole chunk while hashing it; ChecksumMismatch (nothing stored) unless it matches;
    then the spooled chunk, replayed."""
    digest = CHECKSUMS[algorithm]()
    async for chunk in body:
        digest.update(chunk)
        await spool.write(chunk)
    if digest.digest() != expected:
        raise ChecksumMismatch(f"the chunk's {algorithm} is {base64.b64encode(digest.digest()).decode()} but "
                               f"Upload-Checksum says {base64.b64encode(expected).decode()}; "
                               "nothing of it was stored, send it again")
    await spool.seek(0)

    async def replay() -> AsyncIterator[bytes]:
        while chunk := await spool.read(64 * 1024):
            yield chunk

    return replay()


def _check_upload_id(upload_id: str) -> None:
    try:
        uuid.UUID(upload_id)
    except ValueError:
        raise NotFound(f"no upload {upload_id!r} here; upload URLs end with the id POST returned") from None


def _number(headers: Mapping[str, str], name: str) -> int:
    value = headers.get(name)
    if value is None or not _DIGITS.fullmatch(value.strip()):
        raise ValidationError(f"{name.title()} {value!r} is not a number of bytes")
    return int(value)


def _metadata_header(metadata: Mapping[str, str]) -> dict[str, str]:
    if not metadata:
        return {}
    pairs = [f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in metadata.items()]
    return {"Upload-Metadata": ",".join(pairs)}
