"""Local filesystem storage: atomic writes under one root and self-signed URLs.

A key ``a/b.png`` is the file ``root/a/b.png``.  Files carry no stored content type
(``head`` says None); delivery takes the type from the signed URL instead.  The
Starlette and aiohttp routes serve signed URLs by calling ``verify`` then ``put`` or ``get``.
"""

from __future__ import annotations

import binascii
import builtins
import hmac
import itertools
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from stat import S_ISREG
from typing import NoReturn

import anyio
import anyio.to_thread
import msgspec

from ..errors import (
    ConfigurationError,
    DeliveryForbidden,
    NotFound,
    ObjectChanged,
    StorageError,
    Unsupported,
    ValidationError,
)
from .base import (
    CHUNK_SIZE,
    Capabilities,
    MultipartUpload,
    ObjectInfo,
    Part,
    PresignedPost,
    PresignedRequest,
    Source,
    StoredPart,
    check_range,
    iter_source,
    too_large,
    unreadable_source,
)
from .signing import HmacSha256, quote_component, quote_path

#: Temporary files start with this; ``list`` never shows them and keys may not use it.
TEMP_PREFIX = ".tmp-"
NO_MULTIPART = "local storage has no multipart uploads; send the file in a single PUT to presign_put's URL"
NO_POST = "local storage takes no form POST uploads; send the file in a single PUT to presign_put's URL"
ABSENT = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
#: The query parameters a signature covers, besides the key.
SIGNED_FIELDS = ("method", "expires", "max_bytes", "content_type", "disposition")
#: Base64 to its URL-safe alphabet; a 32-byte MAC is 43 characters once its "=" is dropped.
URL_SAFE_BASE64 = bytes.maketrans(b"+/", b"-_")


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
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\0" in key:
        raise ValidationError(f"storage key {key!r} is empty, absolute, or holds a backslash or NUL; "
                              f"use a relative path like 'a/b.png'")
    framed = f"/{key}/"  # a segment s is bad when "/s/" (or "/.tmp-") occurs in the framed key
    if "//" in framed or "/./" in framed or "/../" in framed or f"/{TEMP_PREFIX}" in framed:
        raise ValidationError(f"storage key {key!r} has an empty, '.', '..' or {TEMP_PREFIX!r} segment; "
                              f"use a plain relative path")
    return key


class LocalStorage:
    """Objects as files under ``root``, with URLs signed by HMAC-SHA256."""

    adapter = "local"

    def __init__(self, *, root: str | os.PathLike[str], base_url: str, secret: str | bytes,
                 url_ttl_max: int = 7 * 24 * 3600) -> None:
        """Configure the store; nothing touches the disk until ``open`` or the first write.

        root: the folder holding the objects (created if missing)
        base_url: where the host app serves this store's routes, e.g. "http://localhost:8000/rindle"
        secret: the HMAC key for URLs, at least 16 bytes; keep it out of source control
        url_ttl_max: the longest lifetime in seconds a signed URL may be given
        """
        secret_bytes = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(secret_bytes) < 16:
            raise ConfigurationError(f"LocalStorage secret is {len(secret_bytes)} bytes; use at least 16 "
                                     f"random bytes (e.g. secrets.token_urlsafe(32))")
        if not base_url or url_ttl_max <= 0:
            raise ConfigurationError(f"LocalStorage base_url={base_url!r}, url_ttl_max={url_ttl_max!r}; pass "
                                     f"the URL its routes are mounted at and a positive number of seconds")
        self.root = Path(os.path.abspath(root))
        self.base_url = base_url.rstrip("/")
        self.url_ttl_max = url_ttl_max
        self._mac = HmacSha256(secret_bytes)

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

    async def _resolve(self, key: str) -> Path:
        """The file for ``key``, refusing any that resolves outside root (symlinks included)."""
        check_key(key)
        # a few lstat calls on a local disk: cheaper inline than a trip to a thread
        root, path = self.root.resolve(), (self.root / key).resolve()
        if not path.is_relative_to(root):
            raise ValidationError(f"storage key {key!r} resolves outside the storage root; refusing it")
        return path

    def _fail(self, op: str, key: str, exc: OSError) -> NoReturn:
        raise StorageError(f"local storage {op} of {key!r} under {str(self.root)!r} failed: {exc}; "
                           f"check the folder exists and is writable") from exc

    @contextmanager
    def _disk(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self._fail(op, key, exc)

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
        if isinstance(data, (str, os.PathLike)):  # file to file: one trip to a thread, not one per chunk
            try:
                size = await anyio.to_thread.run_sync(self._put_file, key, data, temp, path, max_bytes)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.Path(temp).unlink(missing_ok=True)
                raise
            return ObjectInfo(key=key, size=size)
        size = 0
        try:
            with self._disk("put", key):
                await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
                file = await anyio.open_file(temp, "wb")
            async with file:
                # Errors of the source itself propagate unchanged; only disk errors become StorageError.
                async for chunk in iter_source(data, key=key, max_bytes=max_bytes):
                    with self._disk("put", key):
                        size += await file.write(chunk)
                with self._disk("put", key):
                    await file.flush()
                    await anyio.to_thread.run_sync(os.fsync, file.wrapped.fileno())
            with self._disk("put", key):
                await anyio.to_thread.run_sync(_commit, temp, path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.Path(temp).unlink(missing_ok=True)
            raise
        return ObjectInfo(key=key, size=size)

    def _put_file(self, key: str, source: str | os.PathLike[str], temp: Path, path: Path,
                  max_bytes: int | None) -> int:
        try:
            src = open(source, "rb")
        except OSError as exc:
            raise unreadable_source(key, exc) from exc
        with src:
            with self._disk("put", key):
                path.parent.mkdir(parents=True, exist_ok=True)
                dst = open(temp, "wb")
            with dst:
                size = 0
                while chunk := src.read(CHUNK_SIZE * 16):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise too_large(key, max_bytes)
                    with self._disk("put", key):
                        dst.write(chunk)
                with self._disk("put", key):
                    dst.flush()
                    os.fsync(dst.fileno())
        with self._disk("put", key):
            _commit(temp, path)
        return size

    async def get(self, key: str, *, start: int | None = None, end: int | None = None
                  ) -> AsyncIterator[bytes]:
        """Stream the object in 64 KiB chunks; NotFound if it is missing.

        key: the object key
        start: first byte to send (inclusive), default 0
        end: last byte to send (inclusive), default the last byte of the object
        """
        path = await self._resolve(key)
        with self._disk("get", key):
            try:
                file = await anyio.open_file(path, "rb")
            except ABSENT as exc:
                raise NotFound(f"no object {key!r} in local storage") from exc
        async with file:
            with self._disk("get", key):
                size = (await anyio.to_thread.run_sync(os.fstat, file.wrapped.fileno())).st_size
            first, last = _byte_range(key, size, start, end)
            await file.seek(first)
            remaining = last - first + 1
            while remaining > 0:
                with self._disk("get", key):
                    chunk = await file.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    async def local_path(self, key: str) -> str:
        """The file that holds ``key``, to read in place instead of downloading a copy.

        Only for keys nothing writes any more (promoted originals): the file is the object.
        key: the object key
        """
        return str(await self._resolve(key))

    async def download(self, key: str, path: str | os.PathLike[str], *,
                       if_match: str | None = None) -> int:
        """Copy the object to a local file and return its size; NotFound if it is missing.

        key: the object key
        path: the destination file (overwritten; not created when the object is missing)
        if_match: copy only the version with this ETag (ObjectChanged otherwise)
        """
        source = await self._resolve(key)
        with self._disk("download", key):
            return await anyio.to_thread.run_sync(_copy, key, source, path, if_match)

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size, etag and modification time, or None when it does not exist.

        key: the object key
        """
        path = await self._resolve(key)
        try:
            stat = await anyio.Path(path).stat()
        except ABSENT:
            return None
        except OSError as exc:
            self._fail("head", key, exc)
        return _info(key, stat) if S_ISREG(stat.st_mode) else None

    async def delete(self, key: str) -> None:
        """Delete the object; a missing object (or a folder in its place) is not an error.

        key: the object key
        """
        path = await self._resolve(key)
        try:
            await anyio.Path(path).unlink(missing_ok=True)
        except ABSENT:
            return
        except OSError as exc:
            self._fail("delete", key, exc)
        await anyio.to_thread.run_sync(_prune, path.parent, self.root)

    async def list(self, prefix: str, *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key, read page by page.

        prefix: the key prefix ("" for all)
        page_size: how many entries to read from disk per step
        """
        folder, _, name_prefix = prefix.rpartition("/")
        start = await self._resolve(folder) if folder else self.root
        entries = _walk(start, folder + "/" if folder else "", name_prefix)
        while True:
            with self._disk("list", prefix):
                page = await anyio.to_thread.run_sync(lambda: list(itertools.islice(entries, page_size)))
            if not page:
                return
            for info in page:
                yield info

    def sign(self, method: str, key: str, *, expires_at: int | None, max_bytes: int | None = None,
             content_type: str | None = None, disposition: str | None = None) -> str:
        """A URL for ``method`` on ``key`` that :meth:`verify` accepts until ``expires_at``.

        method: the HTTP method the URL allows ("GET" or "PUT")
        key: the object key
        expires_at: Unix time after which the URL is refused, or None (or 0) for never
        max_bytes: for PUT, the most bytes the upload may carry
        content_type: the Content-Type to store (PUT) or serve (GET)
        disposition: the Content-Disposition to serve (GET)
        """
        check_key(key)
        method = method.upper()
        expires = str(expires_at) if expires_at else ""
        size = "" if max_bytes is None else str(max_bytes)
        signature = self._signature(key, [method, expires, size, content_type or "", disposition or ""])
        # The query holds the SIGNED_FIELDS that have a value, in that order, then the signature.
        query = f"method={quote_component(method)}"
        if expires:
            query += f"&expires={expires}"
        if size:
            query += f"&max_bytes={size}"
        if content_type is not None:
            query += f"&content_type={quote_component(content_type)}"
        if disposition is not None:
            query += f"&disposition={quote_component(disposition)}"
        return f"{self.base_url}/{quote_path(key)}?{query}&sig={signature}"

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
                raise DeliveryForbidden(f"missing parameter {name}; use the full URL the application issued")
        signature = self._signature(key, [params.get(name, "") for name in SIGNED_FIELDS])
        if not hmac.compare_digest(str(params["sig"]).encode(), signature.encode()):
            raise DeliveryForbidden("signature does not match; the URL was altered or signed for another key")
        signed_method, asked = params["method"], method.upper()
        if signed_method != ("GET" if asked == "HEAD" else asked):
            raise DeliveryForbidden(f"URL was signed for {signed_method}, not {asked}")
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

    def _signature(self, key: str, values: builtins.list[str]) -> str:
        """HMAC-SHA256 over the key and the SIGNED_FIELDS values ("" for absent), URL-safe base64."""
        # A JSON array keeps field boundaries unambiguous whatever the values contain.
        canonical = msgspec.json.encode(["rindle-local-v1", key, *values])
        encoded = binascii.b2a_base64(self._mac.digest(canonical), newline=False)
        return encoded.translate(URL_SAFE_BASE64)[:43].decode()

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

    async def create_multipart(self, key: str, *, content_type: str | None) -> str:
        """Unsupported: local storage takes uploads in a single PUT."""
        raise Unsupported(NO_MULTIPART)

    async def presign_part(self, key: str, upload_id: str, part_number: int, *,
                           expires_in: int) -> PresignedRequest:
        """Unsupported: local storage takes uploads in a single PUT."""
        raise Unsupported(NO_MULTIPART)

    async def complete_multipart(self, key: str, upload_id: str, parts: builtins.list[Part]) -> ObjectInfo:
        """Unsupported: local storage takes uploads in a single PUT."""
        raise Unsupported(NO_MULTIPART)

    async def presign_post(self, key: str, *, content_type: str, max_bytes: int,
                           expires_in: int) -> PresignedPost:
        """Unsupported: local storage takes uploads in a single PUT."""
        raise Unsupported(NO_POST)

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[StoredPart]:
        """Unsupported: local storage takes uploads in a single PUT."""
        raise Unsupported(NO_MULTIPART)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Unsupported: local storage takes uploads in a single PUT."""
        raise Unsupported(NO_MULTIPART)

    async def list_multipart(self, prefix: str) -> AsyncIterator[MultipartUpload]:
        """Local storage never has unfinished multipart uploads: yields nothing."""
        return
        yield


def _byte_range(key: str, size: int, start: int | None, end: int | None) -> tuple[int, int]:
    check_range(key, start, end)
    first, last = start or 0, size - 1 if end is None else min(end, size - 1)
    if (start is not None or end is not None) and first >= size:
        raise ValidationError(f"byte range {start}-{end} of {key!r} is not satisfiable: it has {size} bytes")
    return first, last


def _etag(stat: os.stat_result) -> str:
    # Writes are a new file renamed into place, made while the old one still holds its inode:
    # a rewrite changes the inode even within one tick of the file system's clock.
    return f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}"


def _info(key: str, stat: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key=key, size=stat.st_size, etag=_etag(stat),
                      last_modified=datetime.fromtimestamp(stat.st_mtime, timezone.utc))


def _commit(temp: Path, path: Path) -> None:
    os.replace(temp, path)
    # The rename is durable only once the directory entry itself reaches the disk.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _copy(key: str, source: Path, target: str | os.PathLike[str], if_match: str | None = None) -> int:
    try:
        src = open(source, "rb")
    except ABSENT as exc:
        raise NotFound(f"no object {key!r} in local storage") from exc
    with src:
        # the open file is one version for good: a rewrite renames another file into place
        if if_match is not None and (etag := _etag(os.fstat(src.fileno()))) != if_match:
            raise ObjectChanged(f"{key!r} in local storage was rewritten: its ETag is {etag}, "
                                f"not {if_match}")
        with open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK_SIZE * 16)
            return dst.tell()


def _walk(folder: Path, key_prefix: str, name_prefix: str) -> Iterator[ObjectInfo]:
    """Files under ``folder`` in key order; symlinks and temp files are skipped."""
    try:
        with os.scandir(folder) as scan:
            entries = [e for e in scan if e.name.startswith(name_prefix)
                       and not e.name.startswith(TEMP_PREFIX) and not e.is_symlink()]
    except ABSENT:
        return
    # A folder's keys all start with "name/", so sorting it as "name/" keeps the full keys ordered.
    entries.sort(key=lambda e: e.name + "/" if e.is_dir() else e.name)
    for entry in entries:
        if entry.is_dir():
            yield from _walk(Path(entry.path), f"{key_prefix}{entry.name}/", "")
        elif entry.is_file():
            yield _info(key_prefix + entry.name, entry.stat())


def _prune(folder: Path, root: Path) -> None:
    """Remove folders left empty by a delete, up to (not including) the root."""
    root = root.resolve()
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): stop
            return
        folder = folder.parent
