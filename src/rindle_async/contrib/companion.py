"""Uppy Companion's S3 routes, independent of any web framework, each backed by an upload session.

Uppy's AwsS3 plugin in ``companionEndpoint`` mode calls these (the JSON shapes are
Companion's, read from ``@uppy/aws-s3``'s ``CompanionS3``):

=======  =============================================  ==========================================
GET      ``/s3/params?filename&type``                   ``{method, url, fields, headers}``: a POST policy
POST     ``/s3/multipart`` ``{filename, type}``         ``{key, uploadId}``
GET      ``/s3/multipart/{uploadId}/{partNumber}?key``  ``{url}``: a presigned PUT of one part
GET      ``/s3/multipart/{uploadId}?key``               ``[{PartNumber, Size, ETag}]``: the stored parts
POST     ``/s3/multipart/{uploadId}/complete?key``      ``{location, key}``, once verified
DELETE   ``/s3/multipart/{uploadId}?key``               ``{}``: the session is aborted
=======  =============================================  ==========================================

Every answer that opens or finishes an upload also carries ``session_id`` and ``asset_id``,
so the host can attach the asset (``find_upload`` finds the session from the key too).  The
host's ``authorize`` callback sees each request first and names the owner it is for (its
``str`` is kept on the session as ``owner``), or refuses it (403) by returning None.  The key
and upload id that Uppy sends back must match the session, and the session's owner the
request's: one user cannot sign, list, complete or cancel another's upload.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import msgspec

from .. import uploads
from ..errors import (
    ConfigurationError,
    NotFound,
    RindleError,
    TooLarge,
    Unsupported,
    ValidationError,
    VerificationFailed,
)
from ..models import UploadSession
from ..profiles import find_profile
from ..storage.base import Part
from ..uploads.sessions import now
from .local_http import Answer

if TYPE_CHECKING:
    from ..app import Rindle
    from ..runtime import Runtime

__all__ = ["Authorize", "CompanionMount", "companion_mount", "handle_companion", "read_body"]

#: The host's check of a request (the framework's own request object): the owner it is for
#: (any value but None), or None to refuse it with 403.
Authorize = Callable[[Any], Awaitable[object]]
#: The largest JSON body accepted: 10,000 parts of a complete call fit in well under this.
MAX_BODY = 2 * 1024 * 1024


class CompanionMount(NamedTuple):
    """One profile's Companion routes: the Rindle, the profile, and the host's check."""

    rindle: Rindle
    profile: str
    authorize: Authorize


class _Create(msgspec.Struct):
    filename: str
    type: str
    metadata: dict[str, Any] = {}


class _CompletedPart(msgspec.Struct):
    PartNumber: int
    ETag: str


class _Complete(msgspec.Struct):
    parts: list[_CompletedPart]


class _BadRequest(RindleError):
    """The request itself is malformed (HTTP 400)."""


class _Forbidden(RindleError):
    """The caller may not act on this upload (HTTP 403)."""


def companion_mount(rindle: Rindle, profile: str, authorize: Authorize) -> CompanionMount:
    """Check once, when the routes are built, that ``profile`` can serve Uppy's S3 uploads.

    rindle: the host's Rindle (opened or not)
    profile: the profile every upload through these routes is made under
    authorize: the host's check of each request (owner, or None for 403)
    Raises ConfigurationError for an unknown profile or a store without POST policies or multipart.
    """
    found = find_profile(rindle.profiles, profile)
    storage = rindle.storages[found.storage]
    caps = storage.capabilities
    if not (caps.presigned_post and caps.multipart):
        raise ConfigurationError(f"profile {profile!r} stores in {found.storage!r} ({storage.adapter}), which "
                                 "has no POST policies or multipart uploads; Uppy's S3 routes need an S3 store")
    return CompanionMount(rindle, profile, authorize)


async def read_body(chunks: AsyncIterable[bytes], limit: int = MAX_BODY) -> bytes:
    """The request body, refused (TooLarge, HTTP 413) past ``limit`` bytes without reading on.

    chunks: the body as the framework streams it
    limit: the most bytes accepted
    """
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the request body is over {limit} bytes; a Companion request is small JSON")
    return bytes(body)


async def handle_companion(mount: CompanionMount, request: object, method: str, path: str,
                           query: Mapping[str, str], body: Callable[[], Awaitable[bytes]]) -> Answer:
    """Answer one Companion S3 request; the framework adapters call only this.

    mount: from ``companion_mount``
    request: the framework's request, handed to ``authorize``
    method: the HTTP method
    path: the path below the mount's prefix, e.g. "/s3/multipart/abc/1"
    query: the query parameters
    body: reads the request body (only the routes that take JSON call it)
    """
    try:
        owner = await mount.authorize(request)
        if owner is None:
            return _reply(403, {"error": "not allowed to upload here; sign in first"})
        caller = _Caller(mount.rindle.runtime, mount.profile, str(owner))
        return await _route(caller, method.upper(), path.strip("/").split("/"), query, body)
    except RindleError as exc:
        return _refuse(exc)


class _Caller(NamedTuple):
    """Who asks: the runtime, the mount's profile, and the owner ``authorize`` named."""

    rt: Runtime
    profile: str
    owner: str


async def _route(caller: _Caller, method: str, segments: list[str], query: Mapping[str, str],
                 body: Callable[[], Awaitable[bytes]]) -> Answer:
    rt = caller.rt
    match method, segments:
        case "GET", ["s3", "params"]:
            return await _params(caller, query)
        case "POST", ["s3", "multipart"]:
            return await _create(caller, _decode(await body(), _Create))
        case "GET", ["s3", "multipart", upload_id, part]:
            return await _sign_part(rt, await _session(caller, upload_id, query), part)
        case "GET", ["s3", "multipart", upload_id]:
            return await _list(rt, await _session(caller, upload_id, query))
        case "POST", ["s3", "multipart", upload_id, "complete"]:
            parts = _decode(await body(), _Complete).parts
            return await _complete(rt, await _session(caller, upload_id, query), parts)
        case "DELETE", ["s3", "multipart", upload_id]:
            return await _abort(rt, await _session(caller, upload_id, query))
        case _, ["s3", "params"] | ["s3", "multipart", *_]:
            return _reply(405, {"error": f"method {method} is not allowed on /{'/'.join(segments)}"})
    return _reply(404, {"error": f"no Companion route /{'/'.join(segments)}"})


async def _params(caller: _Caller, query: Mapping[str, str]) -> Answer:
    filename, content_type = _required(query, "filename"), _required(query, "type")
    ticket = await uploads.initiate_upload(caller.rt, caller.profile, filename=filename,
                                           content_type=content_type, presigned_post=True, owner=caller.owner)
    return _reply(200, {"method": "POST", "url": ticket.url, "fields": ticket.fields, "headers": {},
                        "key": ticket.storage_key, "session_id": ticket.session_id,
                        "asset_id": ticket.asset_id})


async def _create(caller: _Caller, wanted: _Create) -> Answer:
    ticket = await uploads.initiate_upload(caller.rt, caller.profile, filename=wanted.filename,
                                           content_type=wanted.type, multipart=True, owner=caller.owner)
    return _reply(200, {"key": ticket.storage_key, "uploadId": ticket.upload_id,
                        "session_id": ticket.session_id, "asset_id": ticket.asset_id})


async def _sign_part(rt: Runtime, session: UploadSession, part: str) -> Answer:
    if not part.isdigit():
        raise _BadRequest(f"part number {part!r} is not a positive integer")
    request = await uploads.presign_part(rt, session.id, int(part))
    return _reply(200, {"url": request.url, "headers": request.headers,
                        "expires": int((request.expires_at - now()).total_seconds())})


async def _list(rt: Runtime, session: UploadSession) -> Answer:
    parts = await uploads.list_parts(rt, session.id)
    return _reply(200, [{"PartNumber": p.part_number, "Size": p.size, "ETag": p.etag} for p in parts])


async def _complete(rt: Runtime, session: UploadSession, parts: list[_CompletedPart]) -> Answer:
    listed = [Part(part_number=p.PartNumber, etag=p.ETag) for p in parts]
    asset = await uploads.verify_upload(rt, session.id, parts=listed)
    storage = rt.storages[find_profile(rt.profiles, session.profile).storage]
    location = await storage.url(session.storage_key, expires_in=None)
    return _reply(200, {"location": location, "key": session.storage_key, "session_id": session.id,
                        "asset_id": asset.id})


async def _abort(rt: Runtime, session: UploadSession) -> Answer:
    if session.state in ("aborted", "expired"):
        return _reply(200, {})  # Uppy may cancel twice; the first call did it
    await uploads.abort_upload(rt, session.id)
    return _reply(200, {})


async def _session(caller: _Caller, upload_id: str, query: Mapping[str, str]) -> UploadSession:
    """The multipart session of ``key`` (query) and ``upload_id`` (path), both matching, of the
    caller's owner (403 otherwise)."""
    session = await uploads.find_upload(caller.rt, caller.profile, _required(query, "key"))
    if session.upload_id != upload_id:
        raise NotFound(f"upload {upload_id!r} is not the multipart upload of {session.storage_key!r}")
    if session.owner != caller.owner:
        raise _Forbidden(f"upload {upload_id!r} was started by another owner; only they can go on with it")
    return session


def _required(query: Mapping[str, str], name: str) -> str:
    value = query.get(name)
    if not value:
        raise _BadRequest(f"query parameter {name!r} is missing")
    return value


T = TypeVar("T")


def _decode(body: bytes, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.DecodeError as exc:
        raise _BadRequest(f"the JSON body is not what this route takes: {exc}") from exc


#: The first match wins: TooLarge is a ValidationError.
_STATUS = ((_BadRequest, 400), (_Forbidden, 403), (NotFound, 404), (TooLarge, 413), (ValidationError, 422),
           (VerificationFailed, 422), (Unsupported, 501))


def _refuse(exc: RindleError) -> Answer:
    """``{"error": reason}`` with the status of an expected refusal; anything else is re-raised."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return _reply(status, {"error": str(exc)})
    raise exc


def _reply(status: int, payload: object) -> Answer:
    return Answer(status=status, body=msgspec.json.encode(payload),
                  headers={"Content-Type": "application/json", "Cache-Control": "no-store"})
