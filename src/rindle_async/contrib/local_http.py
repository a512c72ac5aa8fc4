"""The HTTP side of :class:`~rindle_async.LocalStorage` URLs, independent of any web framework.

``rindle_async.contrib.starlette`` and ``rindle_async.contrib.aiohttp`` are thin
adapters over :func:`handle_request`.  When its routes are built, an adapter
resolves the storage once with :func:`local_mount`; per request it hands
:func:`handle_request` that LocalStorage, the check that a PUT may still write,
and the request's method, key, query, headers and body stream, and turns the
:class:`Answer` it returns into its own response object.  Every status code,
header and error body is decided here, so both frameworks behave the same.  A
PUT writes only while the upload session that owns its key is open for writing
(410 otherwise), so a ticket replayed after verification cannot swap the file
or leave an object behind.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from .. import uploads
from ..errors import (
    ConfigurationError,
    DeliveryForbidden,
    NotFound,
    RindleError,
    TooLarge,
    UploadClosed,
    ValidationError,
)
from ..storage.local import LocalStorage, SignedRequest, check_key

if TYPE_CHECKING:
    from ..app import Rindle

__all__ = ["Answer", "LocalMount", "RangeNotSatisfiable", "Writable", "cache_control", "handle_request",
           "local_mount", "parse_range"]

#: Refuses (UploadClosed) a PUT to the key unless an upload session open for writing owns it.
Writable = Callable[[str], Awaitable[None]]

#: The methods the routes answer; anything else gets 405.
_ALLOWED_METHODS = ("GET", "HEAD", "PUT")

_SINGLE_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE | re.ASCII)
_DIGITS = re.compile(r"\s*\d+\s*", re.ASCII)

#: Cache lifetime of a URL that never expires (a year, the conventional "forever").
_IMMUTABLE_MAX_AGE = 31_536_000


class RangeNotSatisfiable(ValidationError):
    """The Range header asks for bytes the object does not have (HTTP 416)."""

    def __init__(self, header: str, size: int) -> None:
        self.size = size
        super().__init__(f"Range {header!r} is outside the object's {size} bytes; "
                         f"ask for bytes 0-{max(size - 1, 0)} or drop the Range header")


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What to send back: status, headers, and either a small ``body`` or a ``stream`` of the object."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncGenerator[bytes, None] | None = None


class LocalMount(NamedTuple):
    """One LocalStorage as its routes serve it: the storage, and the check that a PUT may still write."""

    storage: LocalStorage
    writable: Writable


def local_mount(rindle: Rindle, name: str) -> LocalMount:
    """Resolve the LocalStorage named ``name`` once, for the routes that serve it.

    rindle: the host's Rindle (opened or not; its upload sessions are asked only when a PUT arrives)
    name: the key of the storage in ``Rindle(storages=...)``
    Raises ConfigurationError when that storage is missing or not a LocalStorage.
    """
    storage = _local_storage(rindle.storages, name)
    # The only call into the facade: upload sessions decide which PUTs may still write.
    return LocalMount(storage, lambda key: uploads.check_writable(rindle.runtime, name, key))


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte span a single-range ``Range`` header asks for, or None for the whole body.

    header: the request's Range header, if any
    size: the object's size in bytes
    Raises RangeNotSatisfiable when a well-formed single range falls outside the object.
    """
    if header is None or "," in header:
        return None  # several ranges would need multipart/byteranges; the whole body (200) is a valid answer
    match = _SINGLE_RANGE.fullmatch(header)
    if match is None or not any(match.groups()):
        return None  # another unit or garbage: RFC 9110 lets a server ignore it and send everything
    first_text, last_text = match.groups()
    if not first_text:  # "-n": the last n bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header, size)
        return max(size - suffix, 0), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # syntactically invalid, so ignored (RFC 9110 section 14.1.1)
    if first >= size:
        raise RangeNotSatisfiable(header, size)
    last = min(int(last_text), size - 1) if last_text else size - 1
    return first, last


def cache_control(expires_at: int | None, *, now: float | None = None) -> str:
    """Cache-Control for a signed URL: private until it expires, or immutable when it never does.

    expires_at: the URL's expiry as Unix time, or None for a URL that never expires
    now: the current Unix time (default: the clock)
    """
    if expires_at is None:
        return f"public, max-age={_IMMUTABLE_MAX_AGE}, immutable"
    remaining = expires_at - int(time.time() if now is None else now)
    return f"private, max-age={max(remaining, 0)}"


async def handle_request(storage: LocalStorage, writable: Writable, method: str, key: str,
                         query: Iterable[tuple[str, str]], headers: Mapping[str, str],
                         body: AsyncIterable[bytes]) -> Answer:
    """Answer one request to a LocalStorage URL; the adapters call only this.

    storage: the LocalStorage that signed the URL (``local_mount(...).storage``)
    writable: refuses a PUT to a key whose upload session no longer accepts writes
    method: the request's HTTP method
    key: the object key from the request path, URL-decoded
    query: the request's query (name, value) pairs, repeats included
    headers: the request's headers, looked up case-insensitively
    body: the request body as a stream of chunks (read only for PUT)
    """
    method = method.upper()
    if method == "PUT":
        return await _receive_upload(storage, writable, key, query, content_type=headers.get("content-type"),
                                     content_length=headers.get("content-length"), body=body)
    if method in ("GET", "HEAD"):
        return await _deliver(storage, method, key, query, range_header=headers.get("range"),
                              if_range=headers.get("if-range"))
    return _method_not_allowed(method)


def _local_storage(storages: Mapping[str, object], name: str) -> LocalStorage:
    if name not in storages:
        raise ConfigurationError(f"no storage {name!r} in Rindle(storages=...), which has "
                                 f"{sorted(storages) or 'none'}; pass storage= with one of those")
    storage = storages[name]
    if not isinstance(storage, LocalStorage):
        raise ConfigurationError(f"storage {name!r} is {type(storage).__name__}, not LocalStorage; "
                                 f"only LocalStorage URLs are served by these routes")
    return storage


async def _receive_upload(storage: LocalStorage, writable: Writable, key: str, query: Iterable[tuple[str, str]],
                          *, content_type: str | None, content_length: str | None,
                          body: AsyncIterable[bytes]) -> Answer:
    """A PUT: the signature (403), the signed Content-Type (400) and length (413), then the upload
    session that owns the key, which must be open for writing (410 once it is being verified, or
    completed, failed, aborted, expired or gone), then the body's size while streaming (413).
    The body is never read whole into memory.
    """
    try:
        signed = _verify(storage, "PUT", key, query)
        _check_upload_headers(signed, content_type, content_length)
        await writable(key)
        info = await storage.put(key, body, content_type=signed.content_type, max_bytes=signed.max_bytes)
    except RindleError as exc:
        return _refuse(exc)
    return _json(200, {"key": key, "size": info.size})


# Not FileResponse: Starlette's and aiohttp's disagree on bad/multi ranges, If-Range and 304 (docs/delivery.md)
async def _deliver(storage: LocalStorage, method: str, key: str, query: Iterable[tuple[str, str]], *,
                   range_header: str | None, if_range: str | None, now: float | None = None) -> Answer:
    """A GET or HEAD: the object (or one range of it), or an error answer."""
    try:
        signed = _verify(storage, method, key, query, now=now)
        info = await storage.head(key)
        if info is None:
            raise NotFound(f"no object {key!r} behind this URL; it was deleted or never uploaded")
        # We send no validators, so an If-Range condition can never hold: send the whole object.
        byte_range = parse_range(None if if_range else range_header, info.size)
        headers = _delivery_headers(signed, info.size, byte_range, now=now)
        status = 200 if byte_range is None else 206
        if method == "HEAD":
            return Answer(status=status, headers=headers)
        start, end = byte_range if byte_range is not None else (None, None)
        stream = await _opened(storage.get(key, start=start, end=end))
    except RindleError as exc:
        return _refuse(exc)
    return Answer(status=status, headers=headers, stream=stream)


def _verify(storage: LocalStorage, method: str, key: str, query: Iterable[tuple[str, str]], *,
            now: float | None = None) -> SignedRequest:
    check_key(key)
    return storage.verify(method, key, _signed_params(query), now=now)


def _signed_params(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The query as a dict, refusing (DeliveryForbidden) a parameter given twice."""
    params: dict[str, str] = {}
    for name, value in pairs:
        # Frameworks disagree on first-vs-last for repeats; refusing keeps both adapters identical.
        if name in params:
            raise DeliveryForbidden(f"parameter {name} appears more than once; use the URL exactly as issued")
        params[name] = value
    return params


def _check_upload_headers(signed: SignedRequest, content_type: str | None,
                          content_length: str | None) -> None:
    if signed.content_type is not None and (content_type or "").strip().lower() != signed.content_type.lower():
        raise ValidationError(f"Content-Type is {content_type!r} but the URL was signed for "
                              f"{signed.content_type!r}; send the headers from the upload ticket")
    if content_length is None:
        return
    if not _DIGITS.fullmatch(content_length):
        raise ValidationError(f"Content-Length {content_length!r} is not a number of bytes")
    if signed.max_bytes is not None and int(content_length) > signed.max_bytes:
        raise TooLarge(f"Content-Length {int(content_length)} is over the {signed.max_bytes} bytes this "
                       f"URL allows; upload the file that was declared when the upload started")


def _delivery_headers(signed: SignedRequest, size: int, byte_range: tuple[int, int] | None, *,
                      now: float | None = None) -> dict[str, str]:
    """The headers for serving an object (or the inclusive ``byte_range`` of it) under a verified URL."""
    headers = {
        "Content-Type": signed.content_type or "application/octet-stream",
        "X-Content-Type-Options": "nosniff",
        "Accept-Ranges": "bytes",
        "Cache-Control": cache_control(signed.expires_at, now=now),
    }
    if signed.disposition:
        headers["Content-Disposition"] = signed.disposition
    if byte_range is None:
        headers["Content-Length"] = str(size)
    else:
        first, last = byte_range
        headers["Content-Length"] = str(last - first + 1)
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return headers


async def _opened(stream: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Pull the first chunk now, so a missing object is a 404 before any header goes out."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = b""

    async def chunks() -> AsyncGenerator[bytes, None]:
        try:
            if first:
                yield first
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    return chunks()


def _error_status(exc: BaseException) -> int | None:
    """The HTTP status for an expected refusal, or None for an error the host should see as a 500."""
    for kind, status in ((DeliveryForbidden, 403), (NotFound, 404), (UploadClosed, 410),
                         (TooLarge, 413), (RangeNotSatisfiable, 416), (ValidationError, 400)):
        if isinstance(exc, kind):
            return status
    return None


def _refuse(exc: RindleError) -> Answer:
    """A JSON ``{"error": reason}`` answer for an expected refusal; anything else is re-raised."""
    status = _error_status(exc)
    if status is None:
        raise exc
    headers = {"Content-Range": f"bytes */{exc.size}"} if isinstance(exc, RangeNotSatisfiable) else {}
    return _json(status, {"error": str(exc)}, headers)


def _method_not_allowed(method: str) -> Answer:
    allowed = ", ".join(_ALLOWED_METHODS)
    return _json(405, {"error": f"method {method} is not allowed here; use one of {allowed}"},
                 {"Allow": allowed})


def _json(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
    return Answer(status=status, body=msgspec.json.encode(payload),
                  headers={"Content-Type": "application/json", "X-Content-Type-Options": "nosniff",
                           "Cache-Control": "no-store", **(headers or {})})
