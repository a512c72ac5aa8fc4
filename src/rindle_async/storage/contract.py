"""The storage contract: one conformance check every storage adapter must pass.

Like Shrine's ``Shrine::Storage::Linter``, :func:`check_storage` is a plain coroutine: call it
with an opened adapter from pytest, unittest or a script.  It runs every rule in :data:`RULES`
whose capabilities the adapter claims, on keys under a fresh prefix of the run's own, and
removes what it wrote (the last rule, ``cleanup``, checks that nothing is left).  Byte ranges,
``download(if_match=)`` and ``max_bytes`` are no capability: every adapter must keep them.

A broken rule raises: :class:`~rindle_async.errors.ContractViolation` lists every rule the
adapter broke, each with what the adapter did and what the contract wants.  Raising rather
than returning a report to assert on, because a check whose result can be ignored passes
silently the day a caller forgets the assert; an exception fails a pytest or unittest test and
stops a script as it is.  A run that passes returns a :class:`ContractReport` saying which
rules ran and which were skipped, and why.

The ``*.http`` rules fetch the adapter's URLs with a plain HTTP client: ``send``, by default
:func:`send_with_aiohttp` (aiohttp comes with aiobotocore).  ``send=None`` skips them, for a
store whose URLs only a running application serves (LocalStorage's routes), or pass a ``send``
that reaches that application.  Public URLs are only checked to be stable: whether they serve
anything is the bucket's or the CDN's policy, not the adapter's.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread
import msgspec

from ..errors import ContractViolation, NotFound, ObjectChanged, TooLarge, Unsupported, ValidationError
from .base import (
    Capabilities,
    MultipartUpload,
    ObjectInfo,
    Part,
    PresignedPost,
    PresignedRequest,
    Storage,
    StoredPart,
)

__all__ = ["RULES", "ContractReport", "ContractViolation", "HttpResponse", "Rule", "Send",
           "check_storage", "send_with_aiohttp"]

#: The first part the multipart rule uploads: S3 and its look-alikes refuse smaller ones but the last.
FIRST_PART_SIZE = 5 * 1024 * 1024
#: Every attribute of the Storage protocol.
PROTOCOL = (*Storage.__annotations__, *(name for name in vars(Storage) if not name.startswith("_")))
#: How far an ``expires_at`` may be from now + ``expires_in`` (adapters round to the second).
CLOCK_SLACK = timedelta(seconds=5)


class HttpResponse(msgspec.Struct, frozen=True, kw_only=True):
    """What the HTTP rules look at in a response; header names are lower case."""

    status: int
    headers: dict[str, str]
    body: bytes


#: How the HTTP rules send a request: ``await send(method, url, headers, body)``.
Send = Callable[[str, str, Mapping[str, str], bytes], Awaitable[HttpResponse]]


async def send_with_aiohttp(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResponse:
    """Send one request with aiohttp, the URL as given (presigned URLs must not be re-encoded).

    method: the HTTP method
    url: the URL, already percent-encoded
    headers: the request headers
    body: the request body (b"" for none)
    """
    import aiohttp  # loaded only when an HTTP rule runs
    import yarl

    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
                session.request(method, yarl.URL(url, encoded=True), headers=dict(headers),
                                data=body or None) as response):
        return HttpResponse(status=response.status, body=await response.read(),
                            headers={name.lower(): value for name, value in response.headers.items()})


class ContractReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a passing :func:`check_storage` run did: the rules it ran, and those it skipped with why."""

    adapter: str
    passed: tuple[str, ...]
    skipped: dict[str, str]


class _Broken(Exception):
    """The adapter broke the running rule; the message says how and what the contract wants."""


class _Skip(Exception):
    """The running rule does not apply to this adapter; the message says why."""


class _SourceFailed(ConnectionResetError):
    """What the put.source_error rule's source raises midway."""


def _shown(value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if value is None or isinstance(value, (str, int, os.PathLike)):
        text = repr(os.fspath(value) if isinstance(value, os.PathLike) else value)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"<{type(value).__name__}>"


class _Traced:
    """The adapter under test, remembering its latest call so that a failure can name it."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self.last = "no call yet"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._storage, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            shown = [_shown(arg) for arg in args] + [f"{k}={_shown(v)}" for k, v in kwargs.items()]
            self.last = f"{name}({', '.join(shown)})"
            return attr(*args, **kwargs)
        return call


class _Run:
    """One run of the contract: the adapter, the key prefix it writes under, what it wrote."""

    def __init__(self, storage: Any, *, root: str, send: Send | None, scratch: Path,
                 stream_size: int) -> None:
        self.storage = _Traced(storage)
        self.root = root
        self.send = send
        self.scratch = scratch
        self.stream_size = stream_size
        self.capabilities: Capabilities | None = None
        self.written: set[str] = set()
        self.uploads: set[tuple[str, str]] = set()

    def key(self, name: str) -> str:
        """The run's key for ``name``, remembered for the cleanup."""
        key = self.root + name
        self.written.add(key)
        return key

    async def read(self, key: str, **byte_range: int) -> bytes:
        return b"".join([chunk async for chunk in self.storage.get(key, **byte_range)])

    async def keys(self, prefix: str, page_size: int = 1000) -> list[str]:
        return [info.key async for info in self.storage.list(prefix, page_size=page_size)]

    async def pending(self, prefix: str) -> list[tuple[str, str]]:
        uploads: list[MultipartUpload] = [u async for u in self.storage.list_multipart(prefix)]
        return [(upload.key, upload.upload_id) for upload in uploads]

    async def fetch(self, method: str, url: str, headers: Mapping[str, str],
                    body: bytes = b"") -> HttpResponse:
        assert self.send is not None  # the HTTP rules need "http"
        try:
            return await self.send(method, url, headers, body)
        except Exception as exc:
            raise _Broken(f"sending {method} {url} failed ({type(exc).__name__}: {exc}); the contract "
                          f"wants URLs a plain HTTP client can use (send=None skips the HTTP rules)") from exc

    async def remove_everything(self) -> None:
        """Delete what the rules wrote and anything else under the run's prefix, ignoring errors."""
        keys, uploads = set(self.written), set(self.uploads)
        with suppress(Exception):
            keys.update(await self.keys(self.root))
        with suppress(Exception):
            uploads.update(await self.pending(self.root))
        for key in sorted(keys):
            with suppress(Exception):
                await self.storage.delete(key)
                self.written.discard(key)
        for key, upload_id in sorted(uploads):
            with suppress(Exception):
                await self.storage.abort_multipart(key, upload_id)
                self.uploads.discard((key, upload_id))


# -- what the rules share ------------------------------------------------------------------------


def _require(condition: object, message: str) -> None:
    if not condition:
        raise _Broken(message)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset:offset + size]


def _differs(got: bytes, want: bytes) -> str:
    if len(got) != len(want):
        return f"{len(got)} bytes, not {len(want)}"
    offset = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    return f"{len(got)} bytes that differ from the expected ones from offset {offset}"


def _require_bytes(got: bytes, want: bytes, did: str, wants: str) -> None:
    """Unless ``got == want``: "<did> gave <how they differ>; the contract wants <wants>"."""
    if got != want:
        raise _Broken(f"{did} gave {_differs(got, want)}; the contract wants {wants}")


async def _refuses(run: _Run, call: Awaitable[object], error: type[Exception], case: str) -> None:
    """Await ``call`` (an adapter call just made) and require it to raise ``error``."""
    try:
        await call
    except error:
        return
    except Exception as exc:
        raise _Broken(f"{run.storage.last} raised {type(exc).__name__}: {exc}; the contract wants "
                      f"{error.__name__} for {case}") from exc
    raise _Broken(f"{run.storage.last} returned without an error; the contract wants {error.__name__} "
                  f"for {case}")


def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _put_gave(run: _Run, info: object, key: str, size: int) -> None:
    _require(isinstance(info, ObjectInfo) and (info.key, info.size) == (key, size),
             f"{run.storage.last} returned {info!r}; the contract wants an ObjectInfo with "
             f"key={key!r} and size={size}")


async def _holds(run: _Run, key: str, want: bytes, after: str) -> None:
    got = await run.read(key)
    _require_bytes(got, want, f"get({key!r}) after {after}", "the bytes written")


async def _head(run: _Run, key: str, after: str) -> ObjectInfo:
    info = await run.storage.head(key)
    _require(isinstance(info, ObjectInfo), f"head({key!r}) gave {info!r} after {after}; the contract "
                                           f"wants an ObjectInfo for an object that exists")
    return cast(ObjectInfo, info)


async def _absent(run: _Run, key: str, after: str) -> None:
    info = await run.storage.head(key)
    _require(info is None, f"head({key!r}) gave {info!r} after {after}; the contract wants no "
                           f"object left behind (head gives None)")


async def _no_uploads(run: _Run, prefix: str, after: str) -> None:
    uploads = await run.pending(prefix)
    _require(not uploads, f"list_multipart({prefix!r}) gave {uploads} after {after}; the contract "
                          f"wants no unfinished multipart upload left behind")


# -- the rules -----------------------------------------------------------------------------------


async def _protocol(run: _Run) -> None:
    missing = [name for name in PROTOCOL if not hasattr(run.storage, name)]
    _require(not missing, f"the adapter has no {', '.join(missing)}; the contract wants every "
                          f"attribute of rindle_async.storage.Storage")
    adapter = run.storage.adapter
    _require(isinstance(adapter, str) and adapter, f"adapter is {adapter!r}; the contract wants a "
                                                   f"short non-empty name like 's3'")
    _require(run.capabilities is not None, f"capabilities is {run.storage.capabilities!r}; the "
                                           f"contract wants a rindle_async.storage.Capabilities")


async def _empty_key(run: _Run) -> None:
    calls = (lambda: run.storage.put("", b"x"), lambda: run.storage.head(""), lambda: run.read(""),
             lambda: run.storage.delete(""))
    for call in calls:
        await _refuses(run, call(), ValidationError, "the empty key (a caller's bug: no retry helps)")


async def _put_bytes(run: _Run) -> None:
    key = run.key("put/bytes.txt")
    for data in (b"hello bytes", bytearray(b"hello bytearray"), memoryview(b"hello memoryview")):
        _put_gave(run, await run.storage.put(key, data, content_type="text/plain"), key, len(data))
        await _holds(run, key, bytes(data), f"a put from {type(data).__name__}")


async def _put_path(run: _Run) -> None:
    data = os.urandom(200_000)
    source = run.scratch / "source.bin"
    await anyio.Path(source).write_bytes(data)
    for name, given in (("put/path", source), ("put/str-path", str(source))):
        key = run.key(name)
        _put_gave(run, await run.storage.put(key, given), key, len(data))
        await _holds(run, key, data, f"a put from a file path given as {type(given).__name__}")


async def _put_missing_path(run: _Run) -> None:
    key = run.key("put/missing-path")
    await _refuses(run, run.storage.put(key, run.scratch / "missing.bin"), ValidationError,
                   "a source file that cannot be read")
    await _absent(run, key, "the refused put")


async def _put_stream(run: _Run) -> None:
    data = os.urandom(run.stream_size)
    key = run.key("put/stream.bin")
    info = await run.storage.put(key, _chunks(data, 100_000), content_type="application/octet-stream")
    _put_gave(run, info, key, len(data))
    await _holds(run, key, data, f"a put from an async iterator of {len(data)} bytes")


async def _put_max_bytes(run: _Run) -> None:
    data = os.urandom(run.stream_size)
    cases = (("bytes", lambda: data[:1000], 999), ("iterator", lambda: _chunks(data[:1000], 100), 999),
             ("long-stream", lambda: _chunks(data, 64 * 1024), len(data) - 100_000))
    for case, source, limit in cases:
        key = run.key(f"max-bytes/{case}")
        await _refuses(run, run.storage.put(key, source(), max_bytes=limit), TooLarge,
                       f"{case} over max_bytes={limit}")
        await _absent(run, key, f"the refused put of {case}")
    await _no_uploads(run, run.root + "max-bytes/", "puts refused as too large")
    key = run.key("max-bytes/exact")
    _put_gave(run, await run.storage.put(key, _chunks(data[:1000], 100), max_bytes=1000), key, 1000)


async def _put_source_error(run: _Run) -> None:
    async def failing() -> AsyncIterator[bytes]:
        async for chunk in _chunks(os.urandom(run.stream_size), 64 * 1024):
            yield chunk
        raise _SourceFailed("the contract's source went away")

    key = run.key("put/source-error")
    try:
        await run.storage.put(key, failing())
    except _SourceFailed:
        pass
    except Exception as exc:
        raise _Broken(f"{run.storage.last} raised {type(exc).__name__}: {exc} when its source raised "
                      f"ConnectionResetError; the contract wants the source's error unchanged") from exc
    else:
        raise _Broken(f"{run.storage.last} returned although its source raised ConnectionResetError; "
                      f"the contract wants the source's error unchanged")
    await _absent(run, key, "a put whose source failed")
    await _no_uploads(run, key, "a put whose source failed")


async def _put_overwrite(run: _Run) -> None:
    key = run.key("put/overwrite")
    await run.storage.put(key, b"a" * 1000)
    first = await _head(run, key, "a put")
    await run.storage.put(key, b"b" * 1000)
    second = await _head(run, key, "a second put")
    await _holds(run, key, b"b" * 1000, "a rewrite")
    _require(second.etag != first.etag,
             f"head({key!r}) gave the ETag {first.etag!r} before and after a rewrite with other bytes "
             f"of the same size; the contract wants a new ETag for every write")


async def _head_fields(run: _Run) -> None:
    key = run.key("head/object.txt")
    await run.storage.put(key, b"x" * 1234, content_type="text/plain")
    info = await _head(run, key, "a put")
    wrong = [f"{name}={value!r}" for name, value, right in (
        ("key", info.key, info.key == key), ("size", info.size, info.size == 1234),
        ("etag", info.etag, isinstance(info.etag, str) and info.etag),
        ("content_type", info.content_type, info.content_type in (None, "text/plain")),
        ("last_modified", info.last_modified,
         isinstance(info.last_modified, datetime) and info.last_modified.tzinfo is not None)) if not right]
    _require(not wrong, f"head({key!r}) gave {', '.join(wrong)} for 1234 bytes put as text/plain; the "
                        f"contract wants key={key!r}, size=1234, a non-empty etag, the content type put "
                        f"(or None) and a timezone-aware last_modified")


async def _head_missing(run: _Run) -> None:
    await run.storage.put(run.key("head/folder/object"), b"x")
    for key in (run.key("head/never-written"), run.root + "head/folder"):
        info = await run.storage.head(key)
        _require(info is None, f"head({key!r}) gave {info!r} for a key no object was written at; the "
                               f"contract wants None")


async def _get_range(run: _Run) -> None:
    data = bytes(range(256)) * 1024
    key = run.key("get/range")
    await run.storage.put(key, data)
    cases = (({"start": 10, "end": 19}, data[10:20]), ({"start": 100_000}, data[100_000:]),
             ({"end": 4}, data[:5]), ({"start": 0, "end": 0}, data[:1]),
             ({"start": len(data) - 3, "end": len(data) + 100}, data[-3:]))
    for byte_range, want in cases:
        got = await run.read(key, **byte_range)
        _require_bytes(got, want, f"{run.storage.last} of a {len(data)}-byte object",
                       "bytes start..end inclusive, an end past the object cut at its last byte")


async def _get_bad_range(run: _Run) -> None:
    key = run.key("get/bad-range")
    await run.storage.put(key, b"0123456789")
    for byte_range, case in (({"start": 10}, "a start at the object's size (10)"),
                             ({"start": 5, "end": 2}, "an end before the start"),
                             ({"start": -1}, "a negative start")):
        await _refuses(run, run.read(key, **byte_range), ValidationError, case)


async def _get_missing(run: _Run) -> None:
    await _refuses(run, run.read(run.key("get/missing")), NotFound, "a missing object")


async def _download(run: _Run) -> None:
    data = os.urandom(300_000)
    key = run.key("download/object.bin")
    await run.storage.put(key, data)
    target = run.scratch / "download.bin"
    await anyio.Path(target).write_bytes(b"older and longer contents" * 20_000)
    size = await run.storage.download(key, target)
    _require(size == len(data), f"{run.storage.last} returned {size!r}; the contract wants the object's "
                                f"size, {len(data)}")
    got = await anyio.Path(target).read_bytes()
    _require_bytes(got, data, "the file download wrote over an existing one",
                   "the file replaced by the object")
    missing = run.scratch / "download-missing.bin"
    await _refuses(run, run.storage.download(run.key("download/missing"), missing), NotFound,
                   "a missing object")
    _require(not await anyio.Path(missing).exists(), f"download of a missing object created {missing}; the "
                                         f"contract wants no file then")


async def _download_if_match(run: _Run) -> None:
    key = run.key("download/versioned")
    await run.storage.put(key, b"a" * 1000)
    etag = (await _head(run, key, "a put")).etag
    first = run.scratch / "first-version.bin"
    size = await run.storage.download(key, first, if_match=etag)
    _require(size == 1000, f"{run.storage.last} returned {size!r} for the version head gave; the "
                           f"contract wants it copied (1000 bytes)")
    await run.storage.put(key, b"b" * 1000)
    second = run.scratch / "second-version.bin"
    await _refuses(run, run.storage.download(key, second, if_match=etag), ObjectChanged,
                   "an if_match ETag of a version since rewritten")
    _require(not await anyio.Path(second).exists(), f"download with a stale if_match created {second}; the "
                                        f"contract wants no file then")


async def _delete(run: _Run) -> None:
    key = run.key("delete/object")
    await run.storage.put(key, b"x")
    await run.storage.delete(key)
    await _absent(run, key, "delete")
    await _refuses(run, run.read(key), NotFound, "a deleted object")
    left = await run.keys(run.root + "delete/")
    _require(not left, f"list({run.root + 'delete/'!r}) gave {left} after delete; the contract "
                       f"wants a deleted object gone from list")


async def _delete_missing(run: _Run) -> None:
    key = run.key("delete-missing/twice")
    await run.storage.put(key, b"x")
    await run.storage.delete(key)
    await run.storage.delete(key)
    await run.storage.delete(run.key("delete-missing/never-written"))
    kept = run.key("delete-missing/folder/object")
    await run.storage.put(kept, b"kept")
    await run.storage.delete(run.root + "delete-missing/folder")
    await _holds(run, kept, b"kept", "a delete of its folder's name, which names no object")


async def _list(run: _Run) -> None:
    base = run.root + "list/"
    wanted = [base + name for name in ("p/1", "p/2", "p/a/3", "p/a/b/4", "p/z")]
    for key in [*wanted, base + "pp", base + "q/1", base + "p-1"]:
        run.written.add(key)
        await run.storage.put(key, key.encode())
    cases: tuple[tuple[str, int, list[str]], ...] = (
        (base + "p/", 2, wanted), (base + "p/a", 1, wanted[2:4]),
        (base + "p", 1000, [base + "p-1", *wanted, base + "pp"]), (base + "nothing/", 1000, []))
    for prefix, page_size, want in cases:
        infos = [info async for info in run.storage.list(prefix, page_size=page_size)]
        got = [(info.key, info.size) for info in infos]
        # no order is promised: S3 sorts by key, SeaweedFS lists a folder before its neighbours
        _require(sorted(got) == sorted((key, len(key)) for key in want),
                 f"list({prefix!r}, page_size={page_size}) gave (key, size) {got}; the contract wants "
                 f"every object whose key starts with the prefix, once each, across pages: {want}")


async def _presign_put(run: _Run) -> None:
    before = datetime.now(timezone.utc)
    request = await run.storage.presign_put(run.key("presign/one.png"), content_type="image/png",
                                            byte_size=5000, expires_in=300)
    after = datetime.now(timezone.utc)
    _require(isinstance(request, PresignedRequest), f"{run.storage.last} returned {request!r}; the "
                                                    f"contract wants a PresignedRequest")
    headers = {name.lower(): value for name, value in request.headers.items()}
    expires, lifetime = request.expires_at, timedelta(seconds=300)
    wrong = [f"{name}={value!r}" for name, value, right in (
        ("method", request.method, request.method == "PUT"),
        ("url", request.url, _is_url(request.url)),
        ("headers", request.headers, headers.get("content-type") == "image/png"),
        ("expires_at", expires, isinstance(expires, datetime) and expires.tzinfo is not None
         and before + lifetime - CLOCK_SLACK <= expires <= after + lifetime + CLOCK_SLACK)) if not right]
    _require(not wrong, f"{run.storage.last} gave {', '.join(wrong)}; the contract wants method PUT, an "
                        f"http(s) URL, a Content-Type: image/png header and expires_at 300 s from now")


async def _presign_put_http(run: _Run) -> None:
    data = os.urandom(5000)
    key = run.key("presign/uploaded.png")
    request = await run.storage.presign_put(key, content_type="image/png", byte_size=len(data),
                                            expires_in=300)
    response = await run.fetch(request.method, request.url, request.headers, data)
    _require(200 <= response.status < 300,
             f"PUT {request.url} with {request.headers} answered {response.status} "
             f"{response.body[:300]!r}; the contract wants 2xx for the declared bytes and headers")
    await _holds(run, key, data, "a PUT to the presigned URL")


async def _url_signed(run: _Run) -> None:
    url = await run.storage.url(run.key("url/signed.jpg"), expires_in=60, content_type="image/jpeg",
                                disposition="inline")
    _require(_is_url(url), f"{run.storage.last} returned {url!r}; the contract wants an http(s) URL")


async def _url_signed_http(run: _Run) -> None:
    key = run.key("url/served.jpg")
    await run.storage.put(key, b"jpeg bytes", content_type="image/jpeg")
    disposition = 'attachment; filename="photo.jpg"'
    url = await run.storage.url(key, expires_in=60, content_type="image/jpeg", disposition=disposition)
    response = await run.fetch("GET", url, {})
    served = (response.status, response.body, response.headers.get("content-type"),
              response.headers.get("content-disposition"))
    _require(served == (200, b"jpeg bytes", "image/jpeg", disposition),
             f"GET {url} answered (status, body, content-type, content-disposition) {served}; the "
             f"contract wants {(200, b'jpeg bytes', 'image/jpeg', disposition)}")


async def _url_public(run: _Run) -> None:
    key = run.key("url/public.jpg")
    first = await run.storage.url(key, expires_in=None)
    second = await run.storage.url(key, expires_in=None)
    _require(_is_url(first) and first == second,
             f"url({key!r}, expires_in=None) gave {first!r}, then {second!r}; the contract wants one "
             f"http(s) URL that never expires, the same at every call")


async def _url_expires_in(run: _Run) -> None:
    caps, key = run.capabilities, run.key("url/expiry.png")
    if caps is None or not (caps.signed_urls or caps.presigned_put):
        raise _Skip("capabilities claim neither signed_urls nor presigned_put")
    for expires_in in (0, -60):
        case = f"expires_in={expires_in}"
        if caps.signed_urls:
            await _refuses(run, run.storage.url(key, expires_in=expires_in), ValidationError, case)
        if caps.presigned_put:
            await _refuses(run, run.storage.presign_put(key, content_type="image/png", byte_size=1,
                                                        expires_in=expires_in), ValidationError, case)


async def _multipart_unsupported(run: _Run) -> None:
    key = run.key("multipart/unsupported")
    calls: tuple[Callable[[], Awaitable[object]], ...] = (
             lambda: run.storage.create_multipart(key, content_type="video/mp4"),
             lambda: run.storage.presign_part(key, "upload-id", 1, expires_in=60),
             lambda: run.storage.complete_multipart(key, "upload-id", [Part(part_number=1, etag="e")]),
             lambda: run.storage.abort_multipart(key, "upload-id"))
    for call in calls:
        await _refuses(run, call(), Unsupported, "multipart while capabilities.multipart is False")
    await _no_uploads(run, run.root, "refused multipart calls")


async def _multipart_abort(run: _Run) -> None:
    key, prefix = run.key("multipart/aborted"), run.root + "multipart/"
    upload_id = await run.storage.create_multipart(key, content_type="text/plain")
    _require(isinstance(upload_id, str) and upload_id, f"{run.storage.last} returned {upload_id!r}; "
                                                       f"the contract wants a non-empty upload id")
    run.uploads.add((key, upload_id))
    listed = await run.pending(prefix)
    _require((key, upload_id) in listed, f"list_multipart({prefix!r}) gave {listed} after create_multipart; "
                                         f"the contract wants the upload {(key, upload_id)} listed")
    await run.storage.abort_multipart(key, upload_id)
    await run.storage.abort_multipart(key, upload_id)  # a second abort finds none: not an error
    await _no_uploads(run, prefix, "abort_multipart")
    await _absent(run, key, "abort_multipart")


async def _two_parts(run: _Run, key: str, content_type: str) -> tuple[str, tuple[bytes, bytes], list[Part]]:
    """A multipart upload of a full first part and a short last one, each PUT to its presigned
    URL; the upload id, the bodies and the parts with the ETags the PUTs answered."""
    bodies = (os.urandom(FIRST_PART_SIZE), os.urandom(1234))
    upload_id = await run.storage.create_multipart(key, content_type=content_type)
    run.uploads.add((key, upload_id))
    parts = []
    for number, body in enumerate(bodies, start=1):
        request = await run.storage.presign_part(key, upload_id, number, expires_in=300)
        response = await run.fetch(request.method, request.url, request.headers, body)
        _require(200 <= response.status < 300 and response.headers.get("etag"),
                 f"PUT of part {number} to {request.url} answered {response.status} with ETag "
                 f"{response.headers.get('etag')!r}; the contract wants 2xx and an ETag header")
        parts.append(Part(part_number=number, etag=response.headers["etag"]))
    return upload_id, bodies, parts


async def _multipart_complete(run: _Run) -> None:
    key = run.key("multipart/complete.mp4")
    upload_id, bodies, parts = await _two_parts(run, key, "video/mp4")
    info = await run.storage.complete_multipart(key, upload_id, parts[::-1])
    size = sum(map(len, bodies))
    _require(isinstance(info, ObjectInfo)
             and (info.key, info.size, info.content_type) == (key, size, "video/mp4"),
             f"{run.storage.last} returned {info!r}; the contract wants the object: key={key!r}, "
             f"size={size}, content_type='video/mp4' (given to create_multipart), parts in number order")
    got, want = await run.read(key, start=FIRST_PART_SIZE - 2), bodies[0][-2:] + bodies[1]
    _require_bytes(got, want, f"{run.storage.last} across the parts' boundary",
                   "the parts assembled in part-number order")
    await _no_uploads(run, key, "complete_multipart")


async def _multipart_list_parts(run: _Run) -> None:
    key = run.key("multipart/listed.bin")
    upload_id, bodies, parts = await _two_parts(run, key, "application/octet-stream")
    etags = [part.etag.strip('"') for part in parts]
    listed = await run.storage.list_parts(key, upload_id)
    want = [StoredPart(part_number=n, etag=etag, size=len(body))
            for n, (etag, body) in enumerate(zip(etags, bodies, strict=True), start=1)]
    _require(listed == want, f"{run.storage.last} returned {listed!r}; the contract wants {want!r} "
                             "(part numbers in order, ETags unquoted, sizes)")
    await run.storage.abort_multipart(key, upload_id)


def _form(fields: Mapping[str, str], data: bytes) -> tuple[dict[str, str], bytes]:
    """A multipart/form-data body of ``fields`` then the file, as a browser sends a POST policy form."""
    boundary = f"rindle-contract-{os.urandom(8).hex()}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return ({"Content-Type": f"multipart/form-data; boundary={boundary}"},
            b"".join(parts) + f"--{boundary}--\r\n".encode())


async def _presign_post_http(run: _Run) -> None:
    data, key = os.urandom(5000), run.key("presign/posted.png")
    post = await run.storage.presign_post(key, content_type="image/png", max_bytes=10_000, expires_in=300)
    _require(isinstance(post, PresignedPost) and _is_url(post.url),
             f"{run.storage.last} returned {post!r}; the contract wants a PresignedPost with an http(s) URL")
    headers, body = _form(post.fields, data)
    response = await run.fetch("POST", post.url, headers, body)
    _require(200 <= response.status < 300,
             f"POST {post.url} with the policy's fields answered {response.status} {response.body[:300]!r}; "
             "the contract wants 2xx for a file within the policy")
    await _holds(run, key, data, "a POST of the policy's form")


async def _cleanup(run: _Run) -> None:
    await run.remove_everything()
    left = await run.keys(run.root)
    _require(not left, f"list({run.root!r}) still gave {left} once every key written was deleted; "
                       f"the contract wants deleted objects gone from list")
    await _no_uploads(run, run.root, "every upload was aborted")


class Rule(msgspec.Struct, frozen=True):
    """One rule: its name, what it wants of the adapter, its check, and what it needs to apply.

    needs: names of ``Capabilities`` fields that must be True ("no X": False), or "http" (a ``send``)
    """

    name: str
    wants: str
    check: Callable[[_Run], Awaitable[None]]
    needs: tuple[str, ...] = ()


#: The storage contract, in the order the rules run.
RULES = (
    Rule("protocol", "every attribute of the Storage protocol, a non-empty adapter name and a "
         "Capabilities", _protocol),
    Rule("key.empty", "the empty key refused with ValidationError by put, head, get and delete", _empty_key),
    Rule("put.bytes", "put from bytes, bytearray or memoryview stores them and returns their ObjectInfo",
         _put_bytes),
    Rule("put.path", "put from a file path (Path or str) stores the file's bytes", _put_path),
    Rule("put.missing_path", "put from a file that cannot be read raises ValidationError and stores "
         "nothing", _put_missing_path),
    Rule("put.stream", "put from an async iterator of chunks stores them all", _put_stream),
    Rule("put.max_bytes", "a put over max_bytes raises TooLarge and leaves no object or upload; one of "
         "exactly max_bytes is stored", _put_max_bytes),
    Rule("put.source_error", "an error raised by the source propagates unchanged and leaves nothing",
         _put_source_error),
    Rule("put.overwrite", "a second put replaces the object and changes its ETag", _put_overwrite),
    Rule("head", "head gives key, size, a non-empty ETag, the type put (or None) and a timezone-aware "
         "last_modified", _head_fields),
    Rule("head.missing", "head of a key with no object (even one that prefixes others) gives None",
         _head_missing),
    Rule("get.range", "get streams bytes start..end inclusive, an end past the object cut at its "
         "last byte", _get_range),
    Rule("get.bad_range", "get of an unsatisfiable or malformed range raises ValidationError",
         _get_bad_range),
    Rule("get.missing", "get of a missing object raises NotFound", _get_missing),
    Rule("download", "download replaces the file with the object and returns its size; a missing "
         "object raises NotFound and creates no file", _download),
    Rule("download.if_match", "download with a stale if_match raises ObjectChanged and creates no file",
         _download_if_match),
    Rule("delete", "delete removes the object from head, get and list", _delete),
    Rule("delete.missing", "delete of a missing object (or of a folder's name) succeeds and changes "
         "nothing", _delete_missing),
    Rule("list", "list gives every object under the prefix once, with its size, across pages (in any "
         "order)",
         _list),
    Rule("presign_put", "presign_put gives a PUT with the Content-Type header, expiring after "
         "expires_in", _presign_put, ("presigned_put",)),
    Rule("presign_put.http", "a plain HTTP PUT of the bytes to the presigned URL stores them",
         _presign_put_http, ("presigned_put", "http")),
    Rule("url.signed", "url with expires_in gives an http(s) URL", _url_signed, ("signed_urls",)),
    Rule("url.signed.http", "a plain HTTP GET of a signed URL serves the object with the Content-Type "
         "and Content-Disposition asked for", _url_signed_http, ("signed_urls", "http")),
    Rule("url.public", "url with expires_in=None gives one http(s) URL, the same at every call",
         _url_public, ("public_urls",)),
    Rule("url.expires_in", "url and presign_put refuse an expires_in of 0 or less with ValidationError",
         _url_expires_in),
    Rule("multipart.unsupported", "without multipart, the multipart calls raise Unsupported and "
         "list_multipart gives nothing", _multipart_unsupported, ("no multipart",)),
    Rule("multipart.abort", "create_multipart starts an upload list_multipart shows; abort_multipart "
         "(twice) removes it", _multipart_abort, ("multipart",)),
    Rule("multipart.complete", "parts PUT over HTTP to presign_part's URLs, completed in any order, "
         "make the object", _multipart_complete, ("multipart", "http")),
    Rule("multipart.list_parts", "list_parts gives the parts PUT so far: number, unquoted ETag, size",
         _multipart_list_parts, ("multipart", "list_parts", "http")),
    Rule("presign_post.http", "a multipart/form-data POST of presign_post's fields and the file stores it",
         _presign_post_http, ("presigned_post", "http")),
    Rule("cleanup", "once the contract deleted what it wrote, list and list_multipart give nothing "
         "under its prefix", _cleanup),
)


def _unmet(needs: tuple[str, ...], run: _Run) -> str | None:
    """Why a rule with ``needs`` does not apply to this run, or None when it does."""
    for need in needs:
        if need == "http":
            if run.send is None:
                return "send=None: no HTTP client to use the URLs with"
            continue
        if run.capabilities is None:
            return "capabilities is not a Capabilities (see the protocol rule)"
        name = need.removeprefix("no ")
        if getattr(run.capabilities, name) != (name == need):
            return f"capabilities.{name} is {getattr(run.capabilities, name)}"
    return None


async def _apply(rule: Rule, run: _Run, timeout: float) -> tuple[str, str]:
    """Run one rule: ("passed", ""), ("skipped", why) or ("failed", what the adapter did)."""
    if (unmet := _unmet(rule.needs, run)) is not None:
        return "skipped", unmet
    outcome = "passed", ""
    with anyio.move_on_after(timeout) as scope:
        try:
            await rule.check(run)
        except _Skip as exc:
            outcome = "skipped", str(exc)
        except _Broken as exc:
            outcome = "failed", str(exc)
        except Exception as exc:
            outcome = "failed", (f"{run.storage.last} raised {type(exc).__name__}: {exc}; the contract "
                                 f"wants {rule.wants}")
    if scope.cancelled_caught:
        outcome = "failed", (f"the rule did not finish within {timeout} s (its latest call: "
                             f"{run.storage.last}); the contract wants {rule.wants}")
    return outcome


def _check_options(prefix: str, send: Send | None, stream_size: int, timeout: float) -> None:
    if not isinstance(prefix, str):
        raise ValidationError(f"check_storage prefix={prefix!r}; pass the str the contract's keys start with")
    if send is not None and not callable(send):
        raise ValidationError(f"check_storage send={send!r}; pass an async callable like "
                              f"send_with_aiohttp, or None to skip the HTTP rules")
    if not isinstance(stream_size, int) or stream_size < 1024 * 1024:
        raise ValidationError(f"check_storage stream_size={stream_size!r}; use at least 1 MiB (above "
                              f"the adapter's multipart part size, to reach its multipart path)")
    if not timeout > 0:
        raise ValidationError(f"check_storage timeout={timeout!r}; use a positive number of seconds")


def _capabilities(storage: Any) -> Capabilities | None:
    with suppress(Exception):
        if isinstance(caps := storage.capabilities, Capabilities):
            return caps
    return None


async def check_storage(storage: Storage, *, prefix: str = "rindle-contract/",
                        send: Send | None = send_with_aiohttp, stream_size: int = 9 * 1024 * 1024,
                        timeout: float = 60.0) -> ContractReport:
    """Run the storage contract against ``storage``; raise ContractViolation naming every rule it broke.

    storage: the adapter under test, opened (``await storage.open()``); its data outside the
        prefix is never touched
    prefix: the contract writes only under ``prefix + <random>/`` and deletes it all at the end
    send: the HTTP client the ``*.http`` rules use URLs with, or None to skip those rules
    stream_size: bytes the streamed-put rules send; keep it above the adapter's multipart part
        size (S3Storage: part_size, 8 MiB by default) so those puts go up in parts
    timeout: seconds each rule may take before it fails as hung
    """
    _check_options(prefix, send, stream_size, timeout)
    scratch = await anyio.to_thread.run_sync(functools.partial(tempfile.mkdtemp, prefix="rindle-contract-"))
    run = _Run(storage, root=f"{prefix}{uuid.uuid4().hex[:12]}/", send=send, scratch=Path(scratch),
               stream_size=stream_size)
    run.capabilities = _capabilities(storage)
    try:
        outcomes = {rule.name: await _apply(rule, run, timeout) for rule in RULES}
    finally:
        with anyio.move_on_after(timeout, shield=True):
            await run.remove_everything()  # again, after a rule that failed or a cancelled run
        await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, scratch, ignore_errors=True))
    adapter = str(getattr(storage, "adapter", type(storage).__name__))
    failed = {name: message for name, (outcome, message) in outcomes.items() if outcome == "failed"}
    if failed:
        raise ContractViolation(adapter, failed)
    return ContractReport(adapter=adapter, passed=tuple(n for n, (o, _) in outcomes.items() if o == "passed"),
                          skipped={n: why for n, (o, why) in outcomes.items() if o == "skipped"})
