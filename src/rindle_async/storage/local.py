"""Local filesystem storage: atomic writes under one root and self-signed URLs.

Objects are plain files under ``root``; a key ``a/b.png`` is the file
``root/a/b.png``.  Local files carry no stored content type: ``head`` reports
``content_type=None`` and delivery takes the type from the signed URL instead.
The Starlette and aiohttp routes serve the URLs this adapter signs by calling
:meth:`LocalStorage.verify` and then :meth:`LocalStorage.put` or :meth:`LocalStorage.get`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from stat import S_ISREG
from typing import NoReturn
from urllib.parse import quote, urlencode

import anyio
import anyio.to_thread
import msgspec

from ..errors import ConfigurationError, DeliveryForbidden, NotFound, StorageError, Unsupported, ValidationError
from .base import CHUNK_SIZE, Capabilities, MultipartUpload, ObjectInfo, Part, PresignedRequest, Source, iter_source

#: Temporary files start with this; ``list`` never shows them and keys may not use it.
TEMP_PREFIX = ".tmp-"


class SignedRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a verified local URL allows: one method on one key, with its signed limits."""

    key: str
    method: str
    expires_at: int | None
    max_bytes: int | None = None
    content_type: str | None = None
    disposition: str | None = None


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative '/'-separated path; raise ValidationError otherwise.

    key: the object key to check
    """
    if not isinstance(key, str) or not key:
        raise ValidationError(f"storage key {key!r} is empty or not a string; use a relative path like 'a/b.png'")
    if key.startswith("/") or "\\" in key or "\0" in key:
        raise ValidationError(f"storage key {key!r} is absolute or holds a backslash or NUL; "
                              f"use a relative path with '/' separators")
    segments = key.split("/")
    if any(s in ("", ".", "..") or s.startswith(TEMP_PREFIX) for s in segments):
        raise ValidationError(f"storage key {key!r} has an empty, '.', '..' or {TEMP_PREFIX!r} segment; "
                              f"use a plain relative path")
    return key


class LocalStorage:
    """Objects as files under ``root``, with URLs signed by HMAC-SHA256."""

    adapter = "local"

    def __init__(self, *, root: str | os.PathLike[str], base_url: str, secret: str | bytes,
                 url_ttl_max: int = 7 * 24 * 3600) -> None:
        """Configure the store; nothing touches the disk until ``open`` or the first call.

        root: the folder holding the objects (created if missing)
        base_url: where the host app serves this store's routes, e.g. "http://localhost:8000/rindle"
        secret: the HMAC key for URLs, at least 16 bytes; keep it out of source control
        url_ttl_max: the longest lifetime in seconds a signed URL may be given
        """
        secret_bytes = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(secret_bytes) < 16:
            raise ConfigurationError(f"LocalStorage secret is {len(secret_bytes)} bytes; use at least 16 "
                                     f"random bytes (e.g. secrets.token_urlsafe(32))")
        if not base_url:
            raise ConfigurationError("LocalStorage base_url is empty; pass the URL its routes are mounted at")
        if url_ttl_max <= 0:
            raise ConfigurationError(f"LocalStorage url_ttl_max={url_ttl_max!r}; use a positive number of seconds")
        self.root = Path(os.path.abspath(root))
        self.base_url = base_url.rstrip("/")
        self.url_ttl_max = url_ttl_max
        self._secret = secret_bytes

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(presigned_put=True, multipart=False, signed_urls=True, public_urls=True)

    async def open(self) -> None:
        """Create the root folder if it is missing."""
        await anyio.Path(self.root).mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> LocalStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _path(self, key: str) -> Path:
        """The file for ``key``, refusing any that resolves outside root (symlinks included)."""
        check_key(key)
        root = self.root.resolve()
        path = (root / key).resolve()
        if not path.is_relative_to(root):
            raise ValidationError(f"storage key {key!r} resolves outside the storage root; refusing it")
        return path

    async def _resolve(self, key: str) -> Path:
        return await anyio.to_thread.run_sync(self._path, key)

    def _fail(self, op: str, key: str, exc: OSError) -> NoReturn:
        raise StorageError(f"local storage {op} of {key!r} under {str(self.root)!r} failed: {exc}; "
                           f"check the folder exists and is writable") from exc

    async def put(self, key: str, data: Source, *, content_type: str | None = None,
                  max_bytes: int | None = None) -> ObjectInfo:
        """Write ``data`` to ``key`` atomically; a failure leaves no object and no temp file.

        key: the object key
        data: bytes, a path to a local file, or an async iterable of bytes
        content_type: accepted for the protocol; local files do not store it
        max_bytes: refuse (TooLarge) once more than this many bytes arrive
        """
        path = await self._resolve(key)
        temp = path.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        size = 0
        try:
            await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
            async with await anyio.open_file(temp, "wb") as file:
                async for chunk in iter_source(data, key=key, max_bytes=max_bytes):
                    await file.write(chunk)
                    size += len(chunk)
                await file.flush()
                await anyio.to_thread.run_sync(os.fsync, file.wrapped.fileno())
            await anyio.to_thread.run_sync(_commit, temp, path)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await anyio.Path(temp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                self._fail("put", key, exc)
            raise
        return ObjectInfo(key=key, size=size)

    async def get(self, key: str, *, start: int | None = None, end: int | None = None
                  ) -> AsyncIterator[bytes]:
        """Stream the object in 64 KiB chunks; NotFound if it is missing.

        key: the object key
        start: first byte to send (inclusive), default 0
        end: last byte to send (inclusive), default the last byte of the object
        """
        path = await self._resolve(key)
        try:
            file = await anyio.open_file(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"no object {key!r} in local storage") from exc
        except OSError as exc:
            self._fail("get", key, exc)
        async with file:
            size = (await anyio.to_thread.run_sync(os.fstat, file.wrapped.fileno())).st_size
            first, last = _byte_range(key, size, start, end)
            await file.seek(first)
            remaining = last - first + 1
            while remaining > 0:
                chunk = await file.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    async def download(self, key: str, path: str | os.PathLike[str]) -> int:
        """Copy the object to a local file and return its size; NotFound if it is missing.

        key: the object key
        path: the destination file (overwritten)
        """
        source = await self._resolve(key)
        try:
            return await anyio.to_thread.run_sync(_copy, source, path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            if not await anyio.Path(source).is_file():
                raise NotFound(f"no object {key!r} in local storage") from exc
            self._fail("download", key, exc)
        except OSError as exc:
            self._fail("download", key, exc)

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size, etag and modification time, or None when it does not exist.

        key: the object key
        """
        path = await self._resolve(key)
        try:
            stat = await anyio.Path(path).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self._fail("head", key, exc)
        return _info(key, stat) if S_ISREG(stat.st_mode) else None

    async def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error.

        key: the object key
        """
        path = await self._resolve(key)
        try:
            if not await anyio.Path(path).is_dir():
                await anyio.Path(path).unlink(missing_ok=True)
        except NotADirectoryError:
            return
        except OSError as exc:
            self._fail("delete", key, exc)

    async def list(self, prefix: str, *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key, read page by page.

        prefix: the key prefix ("" for all)
        page_size: how many entries to read from disk per step
        """
        folder, _, name_prefix = prefix.rpartition("/")
        start = await self._resolve(folder) if folder else self.root
        entries = _walk(start, folder + "/" if folder else "", name_prefix)
        try:
            while page := await anyio.to_thread.run_sync(
                    lambda: list(itertools.islice(entries, page_size))):
                for info in page:
                    yield info
        except OSError as exc:
            self._fail("list", prefix, exc)

    def sign(self, method: str, key: str, *, expires_at: int | None, max_bytes: int | None = None,
             content_type: str | None = None, disposition: str | None = None) -> str:
        """A URL for ``method`` on ``key`` that :meth:`verify` accepts until ``expires_at``.

        method: the HTTP method the URL allows ("GET" or "PUT")
        key: the object key
        expires_at: Unix time after which the URL is refused, or None for never
        max_bytes: for PUT, the most bytes the upload may carry
        content_type: the Content-Type to store (PUT) or serve (GET)
        disposition: the Content-Disposition to serve (GET)
        """
        check_key(key)
        params = {"method": method.upper()}
        for name, value in (("expires", expires_at), ("max_bytes", max_bytes),
                            ("content_type", content_type), ("disposition", disposition)):
            if value is not None and not (name == "expires" and value == 0):
                params[name] = str(value)
        params["sig"] = self._signature(key, params)
        return f"{self.base_url}/{quote(key, safe='/')}?{urlencode(params, quote_via=quote)}"

    def verify(self, method: str, key: str, params: Mapping[str, str], *,
               now: float | None = None) -> SignedRequest:
        """Check a request against its signed URL; raise DeliveryForbidden saying why it is refused.

        method: the request's HTTP method (HEAD counts as GET)
        key: the object key taken from the request path
        params: the request's query parameters
        now: the current Unix time (default: the clock)
        """
        for name in ("sig", "method"):
            if name not in params:
                raise DeliveryForbidden(f"missing parameter {name}; use the full URL rindle issued")
        if not hmac.compare_digest(str(params["sig"]).encode(), self._signature(key, params).encode()):
            raise DeliveryForbidden("signature does not match; the URL was altered or signed for another key")
        signed_method = params["method"]
        asked = "GET" if method.upper() == "HEAD" else method.upper()
        if asked != signed_method:
            raise DeliveryForbidden(f"URL was signed for {signed_method}, not {method.upper()}")
        try:
            expires_at = int(params.get("expires") or 0) or None
            max_bytes = int(params["max_bytes"]) if "max_bytes" in params else None
        except ValueError as exc:
            raise DeliveryForbidden(f"malformed expires or max_bytes parameter: {exc}") from exc
        if expires_at is not None and (time.time() if now is None else now) > expires_at:
            moment = datetime.fromtimestamp(expires_at, timezone.utc).isoformat()
            raise DeliveryForbidden(f"URL expired at {moment}; ask the application for a new one")
        return SignedRequest(key=key, method=signed_method, expires_at=expires_at, max_bytes=max_bytes,
                             content_type=params.get("content_type"), disposition=params.get("disposition"))

    def _signature(self, key: str, params: Mapping[str, str]) -> str:
        # A JSON array keeps field boundaries unambiguous whatever the values contain.
        canonical = msgspec.json.encode(["rindle-local-v1", params.get("method", ""), key,
                                         params.get("expires", ""), params.get("max_bytes", ""),
                                         params.get("content_type", ""), params.get("disposition", "")])
        digest = hmac.new(self._secret, canonical, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _expiry(self, expires_in: int) -> int:
        if not 0 < expires_in <= self.url_ttl_max:
            raise ValidationError(f"expires_in={expires_in!r}; use 1..{self.url_ttl_max} seconds")
        return int(time.time()) + expires_in

    async def presign_put(self, key: str, *, content_type: str, byte_size: int,
                          expires_in: int) -> PresignedRequest:
        """A PUT the host's route accepts for ``key``, bound to type and at most ``byte_size`` bytes.

        key: the object key
        content_type: the Content-Type the client sends
        byte_size: the declared size; the route refuses more
        expires_in: seconds the URL stays valid
        """
        expires_at = self._expiry(expires_in)
        url = self.sign("PUT", key, expires_at=expires_at, max_bytes=byte_size, content_type=content_type)
        return PresignedRequest(method="PUT", url=url, headers={"Content-Type": content_type},
                                expires_at=datetime.fromtimestamp(expires_at, timezone.utc))

    async def url(self, key: str, *, expires_in: int | None, content_type: str | None = None,
                  disposition: str | None = None) -> str:
        """A GET URL: signed without expiry when ``expires_in`` is None, else expiring.

        key: the object key
        expires_in: seconds the URL stays valid, or None for a public (never expiring) URL
        content_type: the Content-Type to serve
        disposition: the Content-Disposition to serve
        """
        expires_at = None if expires_in is None else self._expiry(expires_in)
        return self.sign("GET", key, expires_at=expires_at, content_type=content_type,
                         disposition=disposition)

    def _no_multipart(self) -> NoReturn:
        raise Unsupported("local storage has no multipart uploads; send the file in a single PUT "
                          "to the URL from presign_put")

    async def create_multipart(self, key: str, *, content_type: str) -> str:
        """Unsupported: local storage takes uploads in a single PUT."""
        self._no_multipart()

    async def presign_part(self, key: str, upload_id: str, part_number: int, *,
                           expires_in: int) -> PresignedRequest:
        """Unsupported: local storage takes uploads in a single PUT."""
        self._no_multipart()

    async def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> ObjectInfo:
        """Unsupported: local storage takes uploads in a single PUT."""
        self._no_multipart()

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Unsupported: local storage takes uploads in a single PUT."""
        self._no_multipart()

    async def list_multipart(self, prefix: str) -> AsyncIterator[MultipartUpload]:
        """Local storage never has unfinished multipart uploads: yields nothing."""
        return
        yield


def _byte_range(key: str, size: int, start: int | None, end: int | None) -> tuple[int, int]:
    first = 0 if start is None else start
    last = size - 1 if end is None else min(end, size - 1)
    if first < 0 or (end is not None and end < first):
        raise ValidationError(f"byte range {start}-{end} of {key!r} is invalid; use 0 <= start <= end")
    if (start is not None or end is not None) and first >= size:
        raise ValidationError(f"byte range {start}-{end} of {key!r} is not satisfiable: "
                              f"the object has {size} bytes")
    return first, last


def _info(key: str, stat: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key=key, size=stat.st_size, etag=f"{stat.st_mtime_ns:x}-{stat.st_size:x}",
                      last_modified=datetime.fromtimestamp(stat.st_mtime, timezone.utc))


def _commit(temp: Path, path: Path) -> None:
    os.replace(temp, path)
    # The rename is durable only once the directory entry itself reaches the disk.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _copy(source: Path, target: str | os.PathLike[str]) -> int:
    with open(source, "rb") as src:
        with open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK_SIZE * 16)
            return dst.tell()


def _walk(folder: Path, key_prefix: str, name_prefix: str) -> Iterator[ObjectInfo]:
    """Files under ``folder`` in key order; symlinks and temp files are skipped."""
    try:
        with os.scandir(folder) as scan:
            entries = [e for e in scan if e.name.startswith(name_prefix)
                       and not e.name.startswith(TEMP_PREFIX) and not e.is_symlink()]
    except (FileNotFoundError, NotADirectoryError):
        return
    # A folder's keys all start with "name/", so sorting it as "name/" keeps the full keys ordered.
    entries.sort(key=lambda e: e.name + "/" if e.is_dir() else e.name)
    for entry in entries:
        if entry.is_dir():
            yield from _walk(Path(entry.path), f"{key_prefix}{entry.name}/", "")
        elif entry.is_file():
            yield _info(key_prefix + entry.name, entry.stat())
