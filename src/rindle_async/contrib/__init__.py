"""The HTTP side of :class:`~rindle_async.LocalStorage` URLs, independent of any web framework.

``rindle_async.contrib.starlette`` and ``rindle_async.contrib.aiohttp`` are thin
adapters over :func:`handle_request`: they hand it the host's Rindle, the
storage's name, the request's method, key, query, headers and body stream, and
turn the :class:`Answer` it returns into their own response object.  Every
status code, header and error body is decided here, so both frameworks behave
the same.  A PUT writes only while the upload session that owns its key is open
for writing (410 otherwise), so a ticket replayed after verification cannot
swap the file or leave an object behind.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

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

__all__ = [
    "ALLOWED_METHODS", "Answer", "RangeNotSatisfiable", "cache_control", "deliver", "delivery_headers",
    "error_answer", "error_status", "handle_request", "local_storage", "method_not_allowed", "parse_range",
    "receive_upload", "signed_params",
]

#: The methods the routes answer; anything else gets 405.
ALLOWED_METHODS = ("GET", "HEAD", "PUT")

_SINGLE_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE | re.ASCII)
_DIGITS = re.compile(r"\s*\d+\s*", re.ASCII)

#: Cache lifetime of a URL that never expires (a year, the conventional "forever").
IMMUTABLE_MAX_AGE = 31_536_000


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


def local_storage(rindle: Rindle, name: str) -> LocalStorage:
    """The LocalStorage named ``name`` in ``rindle.storages``; ConfigurationError otherwise.

    rindle: the host's Rindle (opened or not)
    name: the key of the storage in ``Rindle(storages=...)``
    """
    storages = rindle.storages
    if name not in storages:
        raise ConfigurationError(f"no storage {name!r} in Rindle(storages=...), which has "
                                 f"{sorted(storages) or 'none'}; pass storage= with one of those")
    storage = storages[name]
    if not isinstance(storage, LocalStorage):
        raise ConfigurationError(f"storage {name!r} is {type(storage).__name__}, not LocalStorage; "
                                 f"only LocalStorage URLs are served by these routes")
    return storage


def signed_params(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The query as a dict, refusing (DeliveryForbidden) a parameter given twice.

    pairs: the query's (name, value) pairs in order, repeats included
    """
    params: dict[str, str] = {}
    for name, value in pairs:
        # Frameworks disagree on first-vs-last for repeats; refusing keeps both adapters identical.
        if name in params:
            raise DeliveryForbidden(f"parameter {name} appears more than once; use the URL exactly as issued")
        params[name] = value
    return params


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
        return f"public, max-age={IMMUTABLE_MAX_AGE}, immutable"
    remaining = expires_at - int(time.time() if now is None else now)
    return f"private, max-age={max(remaining, 0)}"


def delivery_headers(signed: SignedRequest, size: int, byte_range: tuple[int, int] | None = None, *,
                     now: float | None = None) -> dict[str, str]:
    """The response headers for serving an object (or one range of it) under a verified URL.

    signed: what the URL's signature allows (its content type, disposition and expiry)
    size: the object's full size in bytes
    byte_range: the inclusive span being sent, or None for the whole object
    now: the current Unix time (default: the clock)
    """
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


def error_status(exc: BaseException) -> int | None:
    """The HTTP status for an expected refusal, or None for an error the host should see as a 500.

    exc: the exception raised while handling the request
    """
    for kind, status in ((DeliveryForbidden, 403), (NotFound, 404), (UploadClosed, 410),
                         (TooLarge, 413), (RangeNotSatisfiable, 416), (ValidationError, 400)):
        if isinstance(exc, kind):
            return status
    return None


def error_answer(exc: RindleError) -> Answer | None:
    """A JSON ``{"error": reason}`` answer for an expected refusal, or None (re-raise it then).

    exc: the exception raised while handling the request
    """
    status = error_status(exc)
    if status is None:
        return None
    headers = {}
    if isinstance(exc, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.size}"
    return _json(status, {"error": str(exc)}, headers)


def method_not_allowed(method: str) -> Answer:
    """The 405 answer for a method the routes do not serve.

    method: the request's method
    """
    return _json(405, {"error": f"method {method} is not allowed here; use one of {', '.join(ALLOWED_METHODS)}"},
                 {"Allow": ", ".join(ALLOWED_METHODS)})


async def handle_request(rindle: Rindle, storage: str, method: str, key: str,
                         query: Iterable[tuple[str, str]], headers: Mapping[str, str],
                         body: AsyncIterable[bytes]) -> Answer:
    """Answer one request to a LocalStorage URL; the adapters call only this.

    rindle: the host's Rindle (opened); its upload sessions decide which PUTs may still write
    storage: the name of the LocalStorage in ``Rindle(storages=...)`` that signed the URL
    method: the request's HTTP method
    key: the object key from the request path, URL-decoded
    query: the request's query (name, value) pairs, repeats included
    headers: the request's headers, looked up case-insensitively
    body: the request body as a stream of chunks (read only for PUT)
    Raises ConfigurationError when that storage is missing or not a LocalStorage.
    """
    local = local_storage(rindle, storage)
    method = method.upper()
    if method == "PUT":
        return await receive_upload(rindle, storage, key, query,
                                    content_type=headers.get("content-type"),
                                    content_length=headers.get("content-length"), body=body)
    if method in ("GET", "HEAD"):
        return await deliver(local, method, key, query, range_header=headers.get("range"),
                             if_range=headers.get("if-range"))
    return method_not_allowed(method)


async def receive_upload(rindle: Rindle, storage: str, key: str, query: Iterable[tuple[str, str]], *,
                         content_type: str | None, content_length: str | None,
                         body: AsyncIterable[bytes]) -> Answer:
    """Handle a PUT to a signed upload URL: check it, stream the body into storage, answer.

    The signature (403), the signed Content-Type (400) and length (413), then the upload
    session that owns the key: it must be open for writing (410 once it is being verified,
    or completed, failed, aborted, expired or gone), then the body's size while streaming (413).

    rindle: the host's Rindle (opened)
    storage: the name of the LocalStorage that signed the URL
    key: the object key from the request path, URL-decoded
    query: the request's query (name, value) pairs
    content_type: the request's Content-Type header, if any
    content_length: the request's Content-Length header, if any (absent for chunked bodies)
    body: the request body as a stream of chunks; it is never read whole into memory
    """
    local = local_storage(rindle, storage)
    try:
        signed = _verify(local, "PUT", key, query)
        _check_upload_headers(signed, content_type, content_length)
        await uploads.check_writable(rindle, storage, key)
        info = await local.put(key, body, content_type=signed.content_type, max_bytes=signed.max_bytes)
    except RindleError as exc:
        return _refuse(exc)
    return _json(200, {"key": key, "size": info.size})


async def deliver(storage: LocalStorage, method: str, key: str, query: Iterable[tuple[str, str]], *,
                  range_header: str | None = None, if_range: str | None = None,
                  now: float | None = None) -> Answer:
    """Handle a GET or HEAD of a signed URL: the object (or one range of it), or an error answer.

    storage: the LocalStorage that signed the URL
    method: "GET" or "HEAD"
    key: the object key from the request path, URL-decoded
    query: the request's query (name, value) pairs
    range_header: the request's Range header, if any
    if_range: the request's If-Range header, if any
    now: the current Unix time (default: the clock)
    """
    try:
        signed = _verify(storage, method, key, query, now=now)
        info = await storage.head(key)
        if info is None:
            raise NotFound(f"no object {key!r} behind this URL; it was deleted or never uploaded")
        # We send no validators, so an If-Range condition can never hold: send the whole object.
        byte_range = parse_range(None if if_range else range_header, info.size)
        headers = delivery_headers(signed, info.size, byte_range, now=now)
        status = 200 if byte_range is None else 206
        if method.upper() == "HEAD":
            return Answer(status=status, headers=headers)
        start, end = byte_range if byte_range is not None else (None, None)
        stream = await _opened(storage.get(key, start=start, end=end))
    except RindleError as exc:
        return _refuse(exc)
    return Answer(status=status, headers=headers, stream=stream)


def _verify(storage: LocalStorage, method: str, key: str, query: Iterable[tuple[str, str]], *,
            now: float | None = None) -> SignedRequest:
    check_key(key)
    return storage.verify(method, key, signed_params(query), now=now)


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


def _refuse(exc: RindleError) -> Answer:
    answer = error_answer(exc)
    if answer is None:
        raise exc
    return answer


def _json(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
    return Answer(status=status, body=msgspec.json.encode(payload),
                 headers={"Content-Type": "application/json", "X-Content-Type-Options": "nosniff",
                          "Cache-Control": "no-store", **(headers or {})})
