"""S3 (and S3-compatible) storage through aiobotocore: one client per ``open``."""

from __future__ import annotations

import asyncio
import builtins
import calendar
import functools
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from contextlib import AsyncExitStack, aclosing
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, NoReturn, cast
from urllib.parse import parse_qsl, quote

import aiohttp
import anyio
from aiobotocore.session import AioSession, get_session
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError
from botocore.loaders import Loader, create_loader

from ..errors import ConfigurationError, NotFound, ObjectChanged, StorageError, Unsupported, ValidationError
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
)
from .sigv4 import Presigner

#: S3 refuses parts smaller than this (except the last) and presigned URLs longer than a week.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_EXPIRES_IN = 7 * 24 * 3600
CHECKSUM_MODES = ("when_required", "when_supported")
ChecksumMode = Literal["when_required", "when_supported"]
MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
#: S3's refusals of a part list (a part under 5 MiB but the last, an ETag it does not hold): no retry helps.
BAD_PARTS = frozenset({"EntityTooSmall", "InvalidPart", "InvalidPartOrder", "EntityTooLarge"})
#: What an S3-compatible answers for a call it does not implement (s3rver: ListParts, AbortMultipartUpload).
NOT_IMPLEMENTED = frozenset({"NotImplemented", "501"})
ERRORS = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError)
#: The client methods the adapter presigns, their HTTP methods, and where SigV4 puts each of their
#: parameters: in the URL's query, or in a header the client must send with that exact value.
PRESIGNED_METHODS = {"get_object": "GET", "put_object": "PUT", "upload_part": "PUT"}
PRESIGNED_PARAMS = {"ResponseContentType": ("query", "response-content-type"),
                    "ResponseContentDisposition": ("query", "response-content-disposition"),
                    "UploadId": ("query", "uploadId"), "PartNumber": ("query", "partNumber"),
                    "ContentType": ("header", "Content-Type"), "ContentLength": ("header", "Content-Length")}
#: The key presigned once per opened client to learn botocore's address for the bucket.
PROBE_KEY = "rindle-address-probe"
log = logging.getLogger("rindle_async.storage.s3")


@functools.cache
def _loader(data_path: str | None) -> Loader:
    return create_loader(data_path)


def botocore_session() -> AioSession:
    """A new aiobotocore session sharing the process's parsed service models (saves ~0.1 s a client)."""
    session = get_session()
    session.register_component("data_loader", _loader(session.get_config_variable("data_path")))
    return session


def _code(exc: BaseException) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def _until(expires_in: int) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=expires_in)


class _Signing:
    """What one open client presigns with: credentials, and the presigner once probed."""

    __slots__ = ("frozen", "presigner", "probed", "source")

    def __init__(self, source: Any = None) -> None:
        self.source = source  # botocore credentials (refreshable or not), or None when none were found
        self.frozen: ReadOnlyCredentials | None = None
        self.presigner: Presigner | None = None
        self.probed = False


def _check_options(bucket: str, checksums: str, access_key_id: str | None, secret_access_key: str | None,
                   part_size: int, connect_timeout: float, read_timeout: float,
                   max_attempts: int | None) -> None:
    """Refuse (ConfigurationError) the S3Storage options no bucket can work with."""
    if not bucket or len(bucket) < 3:
        raise ConfigurationError(f"S3Storage bucket={bucket!r}; bucket names have at least 3 characters")
    if checksums not in CHECKSUM_MODES:
        raise ConfigurationError(f"S3Storage checksums={checksums!r}; use one of {CHECKSUM_MODES}")
    if (access_key_id is None) != (secret_access_key is None):
        raise ConfigurationError("S3Storage needs both access_key_id and secret_access_key, or neither "
                                 "(to use the standard AWS credential chain)")
    if part_size < MIN_PART_SIZE:
        raise ConfigurationError(f"S3Storage part_size={part_size}; S3 needs at least {MIN_PART_SIZE}")
    for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
        if not value > 0:
            raise ConfigurationError(f"S3Storage {name}={value!r}; use a positive number of seconds")
    if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
        raise ConfigurationError(f"S3Storage max_attempts={max_attempts!r}; use a positive int or None")


class S3Storage:
    """Objects in one S3 bucket, reached through a single long-lived aiobotocore client."""

    adapter = "s3"

    def __init__(self, *, bucket: str, endpoint_url: str | None = None, region: str = "us-east-1",
                 path_style: bool = False, public_base_url: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 session_token: str | None = None, checksums: str = "when_required",
                 part_size: int = 8 * 1024 * 1024, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, max_attempts: int | None = None) -> None:
        """Configure the store; no connection is made until ``open``.

        bucket: the bucket holding the objects
        endpoint_url: an S3-compatible endpoint, or None for AWS
        region: the bucket's region
        path_style: address objects as endpoint/bucket/key instead of bucket.endpoint/key
        public_base_url: a CDN or public bucket URL that serves keys without signatures
        access_key_id: explicit credentials; default is the standard AWS chain
        secret_access_key: goes with access_key_id
        session_token: for temporary credentials
        checksums: "when_required" (for S3-compatibles that reject CRC32) or "when_supported"
        part_size: bytes per part when ``put`` streams a large input (at least 5 MiB)
        connect_timeout: seconds to wait for a connection to the endpoint
        read_timeout: seconds to wait for an answer (a hung endpoint fails the call after it)
        max_attempts: tries per call, botocore's retries included (default: botocore's, 5);
            1 leaves every retry to the job (with its backoff and its record in processing_runs)
        """
        _check_options(bucket, checksums, access_key_id, secret_access_key, part_size,
                       connect_timeout, read_timeout, max_attempts)
        self.timeouts = (connect_timeout, read_timeout)
        self.max_attempts = max_attempts
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.path_style = path_style
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.checksums = cast(ChecksumMode, checksums)  # one of CHECKSUM_MODES, checked above
        self.part_size = part_size
        self._credentials = {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key,
                             "aws_session_token": session_token}
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._signing = _Signing()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(presigned_put=True, multipart=True, signed_urls=True, public_urls=True,
                            presigned_post=True, list_parts=True)

    async def open(self) -> None:
        """Create the aiobotocore client this store uses until ``close``."""
        if self._client is not None:
            raise ConfigurationError(f"S3Storage for bucket {self.bucket!r} is already open; close it first")
        config = Config(signature_version="s3v4",
                        s3={"addressing_style": "path" if self.path_style else "auto"},
                        request_checksum_calculation=self.checksums,
                        response_checksum_validation=self.checksums,
                        connect_timeout=self.timeouts[0], read_timeout=self.timeouts[1],
                        retries={"total_max_attempts": self.max_attempts} if self.max_attempts else None)
        stack = AsyncExitStack()
        session = botocore_session()
        self._client = await stack.enter_async_context(session.create_client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config,
            **self._credentials))  # type: ignore[call-overload]  # the stubs want an AioConfig; a Config works
        self._stack = stack
        if self._credentials["aws_access_key_id"] is not None:
            source: Any = ReadOnlyCredentials(self._credentials["aws_access_key_id"],
                                              self._credentials["aws_secret_access_key"],
                                              self._credentials["aws_session_token"], None)
        else:
            source = await session.get_credentials()  # the session's cached chain: what the client signs with
        self._signing = _Signing(source=source)

    async def close(self) -> None:
        """Close the client; the store can be opened again."""
        stack, self._stack, self._client, self._signing = self._stack, None, None, _Signing()
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> S3Storage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def client(self) -> Any:
        """The open aiobotocore S3 client."""
        if self._client is None:
            raise ConfigurationError(f"S3Storage for bucket {self.bucket!r} is not open; call "
                                     f"`await storage.open()` (Rindle does it in `async with rindle`)")
        return self._client

    def _fail(self, op: str, key: str, exc: BaseException) -> NoReturn:
        detail = f"{_code(exc) or type(exc).__name__}: {exc}"
        raise StorageError(f"S3 {op} of s3://{self.bucket}/{key} failed ({detail}); "
                           f"check the endpoint, bucket and credentials, then retry") from exc

    async def _call(self, op: str, key: str, call: Callable[[], Awaitable[Any]], *,
                    tolerate: Collection[str] = (), missing: str | None = None) -> Any:
        """Run one client call; None for a ``tolerate``d error code, NotFound(``missing``) if absent."""
        try:
            return await call()
        except ERRORS as exc:
            if isinstance(exc, ParamValidationError):  # botocore refused the arguments: no retry helps
                raise ValidationError(f"S3 {op} of {key!r} refused its arguments ({exc}); fix the call, "
                                      f"a retry fails the same way") from exc
            code = _code(exc)
            if code in tolerate:
                return None
            if missing and code in MISSING:
                raise NotFound(missing) from exc
            if code == "PreconditionFailed":  # only conditional requests (IfMatch) get it
                raise ObjectChanged(f"s3://{self.bucket}/{key} was rewritten: it is not the "
                                    "version whose ETag was asked for") from exc
            if code in BAD_PARTS:
                raise ValidationError(f"S3 refused the {op} of {key!r} ({code}: {exc}); every part but "
                                      "the last needs 5 MiB to 5 GiB, with the ETag its PUT returned") from exc
            if code in NOT_IMPLEMENTED:
                raise Unsupported(f"the S3 endpoint {self.endpoint_url or 'AWS'} does not implement {op} "
                                  f"({code}); use a store that does, or leave it to cleanup") from exc
            if code == "InvalidRange":
                raise ValidationError(f"the byte range asked of {key!r} is not satisfiable") from exc
            self._fail(op, key, exc)

    async def put(self, key: str, data: Source, *, content_type: str | None = None,
                  max_bytes: int | None = None) -> ObjectInfo:
        """Store ``data``; streamed inputs larger than one part go up as a multipart upload.

        key: the object key
        data: bytes, a path to a local file (streamed), or an async iterable of bytes
        content_type: the Content-Type stored with the object
        max_bytes: refuse (TooLarge) once more than this many bytes arrive; no object is created
        """
        if isinstance(data, (bytes, bytearray, memoryview)):
            # Already in memory: one PUT (up to 5 GiB) beats copying it into parts.
            body = b"".join([chunk async for chunk in iter_source(data, key=key, max_bytes=max_bytes)])
            return await self._put_object(key, body, content_type)
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[Part] = []
        try:
            async for chunk in iter_source(data, key=key, max_bytes=max_bytes, chunk_size=CHUNK_SIZE * 16):
                buffer += chunk
                # A multipart upload starts only once the input is known to exceed one part.
                while len(buffer) > self.part_size or (upload_id and len(buffer) == self.part_size):
                    upload_id = upload_id or await self.create_multipart(key, content_type=content_type)
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1,
                                                         bytes(buffer[:self.part_size])))
                    del buffer[:self.part_size]
            if upload_id is None:
                return await self._put_object(key, bytes(buffer), content_type)
            if buffer:
                parts.append(await self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer)))
            info = await self.complete_multipart(key, upload_id, parts)
            upload_id = None
            return info
        finally:
            if upload_id is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.abort_multipart(key, upload_id)
                    except StorageError:
                        pass  # the original failure matters more; list_multipart finds leftovers

    async def _put_object(self, key: str, body: bytes, content_type: str | None) -> ObjectInfo:
        extra = {"ContentType": content_type} if content_type else {}
        response = await self._call("put", key, lambda: self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, **extra))
        return ObjectInfo(key=key, size=len(body), content_type=content_type,
                          etag=_etag(response.get("ETag")))

    async def _upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> Part:
        response = await self._call(f"put (part {number})", key, lambda: self.client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body))
        return Part(part_number=number, etag=response["ETag"])

    async def _body(self, op: str, key: str, start: int | None = None, end: int | None = None,
                    *, chunk_size: int = CHUNK_SIZE,
                    if_match: str | None = None) -> AsyncGenerator[bytes, None]:
        params: dict[str, Any] = {}
        if if_match is not None:
            params["IfMatch"] = f'"{_etag(if_match)}"'
        if start is not None or end is not None:
            check_range(key, start, end)
            params["Range"] = f"bytes={start or 0}-{'' if end is None else end}"
        response = await self._call(op, key, lambda: self.client.get_object(
            Bucket=self.bucket, Key=key, **params), missing=f"no object s3://{self.bucket}/{key}")
        async with response["Body"] as body:
            try:
                async for chunk in body.iter_chunks(chunk_size):
                    yield chunk
            except ERRORS as exc:
                self._fail(op, key, exc)

    def get(self, key: str, *, start: int | None = None, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream the object in 64 KiB chunks; NotFound if it is missing.

        key: the object key
        start: first byte to send (inclusive), default 0
        end: last byte to send (inclusive), default the last byte
        """
        return self._body("get", key, start, end)

    async def download(self, key: str, path: str | os.PathLike[str], *,
                       if_match: str | None = None) -> int:
        """Stream the object into a local file and return its size; NotFound if it is missing.

        key: the object key
        path: the destination file (overwritten; not created when the object is missing)
        if_match: a conditional GET of the version with this ETag (ObjectChanged otherwise)
        """
        chunks = self._body("download", key, chunk_size=CHUNK_SIZE * 16, if_match=if_match)
        async with aclosing(chunks):
            first = await anext(chunks, b"")  # NotFound surfaces here, before the file exists
            try:
                async with await anyio.open_file(path, "wb") as file:
                    size = await file.write(first)
                    async for chunk in chunks:
                        size += await file.write(chunk)
            except OSError as exc:
                self._fail("download", key, exc)
        return size

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size, type, etag and modification time, or None when it does not exist.

        key: the object key
        """
        response = await self._call("head", key, lambda: self.client.head_object(Bucket=self.bucket, Key=key),
                                    tolerate=MISSING)
        if response is None:
            return None
        return ObjectInfo(key=key, size=response["ContentLength"], content_type=response.get("ContentType"),
                          etag=_etag(response.get("ETag")), last_modified=response.get("LastModified"))

    async def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error.

        key: the object key
        """
        await self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=key),
                         tolerate=MISSING)

    async def _pages(self, op: str, prefix: str, items: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        pages = self.client.get_paginator(op).paginate(Bucket=self.bucket, Prefix=prefix, **params)
        try:
            async for page in pages:
                for item in page.get(items, ()):
                    yield item
        except ERRORS as exc:
            self._fail(op, prefix, exc)

    async def list(self, prefix: str, *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key, one request per page.

        prefix: the key prefix ("" for all)
        page_size: keys per request (S3 caps it at 1000)
        """
        async for item in self._pages("list_objects_v2", prefix, "Contents",
                                      PaginationConfig={"PageSize": page_size}):
            yield ObjectInfo(key=item["Key"], size=item["Size"], etag=_etag(item.get("ETag")),
                             last_modified=item.get("LastModified"))

    async def _presign(self, op: str, key: str, params: dict[str, Any], expires_in: int) -> str:
        """A presigned URL for client method ``op`` on ``key``; signing is local, no request is sent."""
        if not 0 < expires_in <= MAX_EXPIRES_IN:
            raise ValidationError(f"expires_in={expires_in!r}; S3 accepts 1..{MAX_EXPIRES_IN} seconds")
        presigner = self._signing.presigner if self._signing.probed else await self.presigner()
        if presigner is None:
            return await self._botocore_presign(op, key, params, expires_in)
        query: dict[str, Any] = {}
        headers: dict[str, Any] = {}
        for name, value in params.items():
            place, wire = PRESIGNED_PARAMS[name]
            (query if place == "query" else headers)[wire] = value
        credentials = await self._frozen_credentials(key)
        # botocore types the keys Optional; credentials that were found always carry both
        return presigner.url(PRESIGNED_METHODS[op], key, credentials=credentials,  # type: ignore[arg-type]
                             expires_in=expires_in, query=query, headers=headers)

    async def _botocore_presign(self, op: str, key: str, params: dict[str, Any], expires_in: int) -> str:
        url: str = await self._call(f"presign {op}", key, lambda: self.client.generate_presigned_url(
            op, Params={"Bucket": self.bucket, "Key": key, **params}, ExpiresIn=expires_in))
        return url

    async def _frozen_credentials(self, key: str) -> ReadOnlyCredentials:
        """The credentials to sign with now; refreshable ones are asked for at every signing."""
        source = self._signing.source
        if source is None:
            self._fail("presign", key, NoCredentialsError())
        if isinstance(source, RefreshableCredentials):
            # What botocore does before each signature: inside its advisory window (15 minutes
            # before expiry) this refreshes them, so expiring credentials are never kept past it.
            # aiobotocore's refreshable credentials are async; the stubs show botocore's sync method
            return await source.get_frozen_credentials()  # type: ignore[misc, no-any-return]
        if self._signing.frozen is None:
            self._signing.frozen = (source if isinstance(source, ReadOnlyCredentials)
                                    else await source.get_frozen_credentials())
        return self._signing.frozen

    async def presigner(self) -> Presigner | None:
        """The SigV4 presigner this open client signs URLs with, or None where botocore signs them.

        botocore alone decides the bucket's address (endpoint rules, addressing style, signing
        region): on first use it presigns one probe URL, and a presigner that does not reproduce
        that URL byte for byte (a botocore change, S3 Express) leaves this client's signing to
        botocore.  Presigning needs no request to the store.
        """
        if self._signing.probed:
            return self._signing.presigner
        probe = await self._botocore_presign("get_object", PROBE_KEY, {}, 1)
        credentials = await self._frozen_credentials(PROBE_KEY)
        address, _, query = probe.partition("?")
        params = dict(parse_qsl(query))
        presigner = ours = None
        try:
            _, _, region, service, _ = params["X-Amz-Credential"].rsplit("/", 4)
            signed_at = calendar.timegm(time.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
            presigner = Presigner(address=address.removesuffix(f"/{PROBE_KEY}"), region=region,
                                  service=service)
            ours = presigner.url("GET", PROBE_KEY, credentials=credentials,  # type: ignore[arg-type]  # as above
                                 expires_in=1, now=signed_at)
        except (KeyError, ValueError) as exc:
            log.debug("S3 probe URL %s is not plain SigV4: %s", probe, exc)
        if ours != probe:
            log.warning("S3 bucket %r: botocore's presigned URL is not reproduced by rindle's SigV4 "
                        "presigner; this client presigns through botocore (slower)", self.bucket)
            presigner = None
        self._signing.presigner, self._signing.probed = presigner, True
        return presigner

    async def presign_put(self, key: str, *, content_type: str, byte_size: int,
                          expires_in: int) -> PresignedRequest:
        """A presigned PUT bound to ``content_type`` and exactly ``byte_size`` bytes.

        key: the object key
        content_type: the Content-Type the client must send
        byte_size: the Content-Length the client must send
        expires_in: seconds the URL stays valid (at most 7 days)
        """
        params = {"ContentType": content_type, "ContentLength": byte_size}
        url = await self._presign("put_object", key, params, expires_in)
        # Content-Type and Content-Length are signed headers: S3 refuses other values (moto does not check).
        return PresignedRequest(method="PUT", url=url, headers={"Content-Type": content_type},
                                expires_at=_until(expires_in))

    async def presign_post(self, key: str, *, content_type: str, max_bytes: int,
                           expires_in: int) -> PresignedPost:
        """A POST policy S3 enforces: exactly ``key``, Content-Type ``content_type``, 1..``max_bytes`` bytes.

        key: the object key (an exact-match condition, so the form cannot pick another)
        content_type: the Content-Type form field the policy requires
        max_bytes: the largest body S3 accepts (content-length-range 1..max_bytes)
        expires_in: seconds the policy stays valid (at most 7 days)
        """
        if not 0 < expires_in <= MAX_EXPIRES_IN:
            raise ValidationError(f"expires_in={expires_in!r}; S3 accepts 1..{MAX_EXPIRES_IN} seconds")
        if max_bytes < 1:
            raise ValidationError(f"max_bytes={max_bytes!r}; a POST policy needs at least 1 byte")
        conditions: builtins.list[Any] = [{"Content-Type": content_type},
                                          ["content-length-range", 1, max_bytes]]
        post = await self._call("presign post", key, lambda: self.client.generate_presigned_post(
            Bucket=self.bucket, Key=key, Fields={"Content-Type": content_type}, Conditions=conditions,
            ExpiresIn=expires_in))  # botocore adds the bucket and the exact key to the conditions
        fields = {name: str(value) for name, value in post["fields"].items()}
        return PresignedPost(url=post["url"], fields=fields, expires_at=_until(expires_in))

    async def url(self, key: str, *, expires_in: int | None, content_type: str | None = None,
                  disposition: str | None = None) -> str:
        """A GET URL: public when ``expires_in`` is None, else presigned; computed without a request.

        key: the object key
        expires_in: seconds the URL stays valid, or None for the public URL
        content_type: the Content-Type S3 answers with (signed URLs only)
        disposition: the Content-Disposition S3 answers with (signed URLs only)
        """
        if expires_in is None and self.public_base_url:
            return f"{self.public_base_url}/{quote(key, safe='/')}"
        if expires_in is None:
            # The presigned URL's address part is exactly botocore's own addressing of the object.
            return (await self._presign("get_object", key, {}, 1)).split("?", 1)[0]
        params = {name: value for name, value in (("ResponseContentType", content_type),
                                                  ("ResponseContentDisposition", disposition)) if value}
        return await self._presign("get_object", key, params, expires_in)

    async def create_multipart(self, key: str, *, content_type: str | None) -> str:
        """Start a multipart upload and return its upload id.

        key: the object key
        content_type: the Content-Type stored with the finished object
        """
        extra = {"ContentType": content_type} if content_type else {}
        response = await self._call("create multipart", key, lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, **extra))
        return str(response["UploadId"])

    async def presign_part(self, key: str, upload_id: str, part_number: int, *,
                           expires_in: int) -> PresignedRequest:
        """A presigned PUT for one part; the response's ETag header goes into ``complete_multipart``.

        key: the object key
        upload_id: from ``create_multipart``
        part_number: 1..10000
        expires_in: seconds the URL stays valid (at most 7 days)
        """
        if not 1 <= part_number <= 10_000:
            raise ValidationError(f"part_number={part_number}; S3 accepts 1..10000")
        url = await self._presign("upload_part", key, {"UploadId": upload_id, "PartNumber": part_number},
                                  expires_in)
        return PresignedRequest(method="PUT", url=url, headers={}, expires_at=_until(expires_in))

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: bytes) -> Part:
        """Upload one part from this process (a resumable upload's chunks); return it with its ETag.

        key: the object key
        upload_id: from ``create_multipart``
        part_number: 1..10000
        body: the part's bytes (at least 5 MiB, except for the last part)
        """
        return await self._upload_part(key, upload_id, part_number, body)

    async def complete_multipart(self, key: str, upload_id: str, parts: builtins.list[Part]) -> ObjectInfo:
        """Assemble the uploaded parts (in part-number order) into the object.

        key: the object key
        upload_id: from ``create_multipart``
        parts: every uploaded part with the ETag its PUT returned
        """
        if not parts:
            raise ValidationError(f"complete_multipart of {key!r} got no parts; upload at least one")
        ordered: builtins.list[dict[str, Any]] = [{"PartNumber": p.part_number, "ETag": p.etag}
                   for p in sorted(parts, key=lambda p: p.part_number)]
        await self._call("complete multipart", key, lambda: self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": ordered}),
            missing=f"no multipart upload {upload_id!r} for {key!r}; it was aborted or already completed")
        if (info := await self.head(key)) is None:
            raise StorageError(f"S3 completed the multipart upload of {key!r} but has no object; retry")
        return info

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[StoredPart]:
        """The parts S3 holds for the upload (ListParts, every page), in part-number order.

        key: the object key
        upload_id: from ``create_multipart``
        NotFound when the upload was completed or aborted; Unsupported where the endpoint lacks ListParts.
        """
        missing = f"no multipart upload {upload_id!r} for {key!r}; it was aborted or already completed"

        async def every_page() -> builtins.list[StoredPart]:
            pages = self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key,
                                                                    UploadId=upload_id)
            return [StoredPart(part_number=item["PartNumber"], etag=str(_etag(item.get("ETag"))),
                               size=item["Size"]) async for page in pages for item in page.get("Parts", ())]

        parts: builtins.list[StoredPart] = await self._call("list parts", key, every_page, missing=missing)
        return sorted(parts, key=lambda part: part.part_number)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abandon the upload and free its parts; an unknown upload is not an error.

        key: the object key
        upload_id: from ``create_multipart``
        """
        await self._call("abort multipart", key, lambda: self.client.abort_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id), tolerate=MISSING)

    async def list_multipart(self, prefix: str) -> AsyncIterator[MultipartUpload]:
        """Unfinished multipart uploads whose key starts with ``prefix``.

        prefix: the key prefix ("" for all)
        """
        async for item in self._pages("list_multipart_uploads", prefix, "Uploads"):
            yield MultipartUpload(key=item["Key"], upload_id=item["UploadId"],
                                  initiated=item.get("Initiated"))
