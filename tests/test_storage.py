"""One storage contract, run against every adapter (local files and S3 on moto),
plus what only one adapter promises: local key confinement and URL signing,
S3 multipart and transport errors."""

from __future__ import annotations

import base64
import hmac
import os
import pathlib
import random
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import msgspec
import pytest

from rindle_async.errors import (ConfigurationError, DeliveryForbidden, NotFound, ObjectChanged, StorageError,
                                 TooLarge, Unsupported, ValidationError)
from rindle_async.storage import LocalStorage, Part, S3Storage, Storage
from rindle_async.storage.s3 import MIN_PART_SIZE
from rindle_async.storage.signing import HmacSha256

SECRET = "0123456789abcdef-test-secret"
BASE_URL = "http://media.test/rindle"
PART = MIN_PART_SIZE
CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


@pytest.fixture
async def local_store(tmp_path: pathlib.Path) -> AsyncIterator[LocalStorage]:
    async with LocalStorage(root=tmp_path / "media", base_url=BASE_URL, secret=SECRET) as storage:
        yield storage


@pytest.fixture
async def s3_store(s3_endpoint: str, s3_bucket: str) -> AsyncIterator[S3Storage]:
    async with S3Storage(bucket=s3_bucket, endpoint_url=s3_endpoint, path_style=True,
                         part_size=PART) as storage:
        yield storage


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> Storage:
    """Every adapter, opened; the contract tests below run once per adapter."""
    return request.getfixturevalue(f"{request.param}_store")


def local_routes(storage: LocalStorage):
    """The smallest ASGI app serving a LocalStorage's signed URLs the way the real routes do."""
    prefix = urlsplit(storage.base_url).path

    async def app(scope, receive, send) -> None:
        key = scope["path"][len(prefix) + 1:]
        params = dict(parse_qsl(scope["query_string"].decode()))
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        try:
            signed = storage.verify(scope["method"], key, params)
            if scope["method"] == "PUT":
                async def body() -> AsyncIterator[bytes]:
                    while True:
                        message = await receive()
                        yield message.get("body", b"")
                        if not message.get("more_body"):
                            return

                await storage.put(key, body(), content_type=signed.content_type, max_bytes=signed.max_bytes)
            else:
                chunks = [chunk async for chunk in storage.get(key)]
                for name, value in (("content-type", signed.content_type),
                                    ("content-disposition", signed.disposition)):
                    if value:
                        headers.append((name.encode(), value.encode()))
            status = 200
        except DeliveryForbidden as exc:
            status, chunks = 403, [str(exc).encode()]
        except TooLarge:
            status = 413
        except NotFound:
            status = 404
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"".join(chunks)})

    return app


def http_client(storage: Storage) -> httpx.AsyncClient:
    """A plain HTTP client that reaches the store's URLs (local ones through ``local_routes``)."""
    if isinstance(storage, LocalStorage):
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=local_routes(storage)))
    return httpx.AsyncClient()


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset:offset + size]


async def read(storage: Storage, key: str, **range_: int | None) -> bytes:
    return b"".join([chunk async for chunk in storage.get(key, **range_)])


async def keys(storage: Storage, prefix: str = "", page_size: int = 1000) -> list[str]:
    return [info.key async for info in storage.list(prefix, page_size=page_size)]


def leftover_files(storage: Storage) -> list[str]:
    if not isinstance(storage, LocalStorage):
        return []
    return [str(p.relative_to(storage.root)) for p in storage.root.rglob("*") if p.is_file()]


# -- the contract every adapter passes -----------------------------------------------------------


async def test_put_bytes_then_head_and_get(store: Storage) -> None:
    info = await store.put("a/b.txt", b"hello world", content_type="text/plain")
    assert (info.key, info.size) == ("a/b.txt", 11)
    head = await store.head("a/b.txt")
    assert head is not None and head.size == 11 and head.last_modified is not None
    assert await read(store, "a/b.txt") == b"hello world"


async def test_put_from_a_file_path(store: Storage, tmp_path: pathlib.Path) -> None:
    data = os.urandom(200_000)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    assert (await store.put("from/path", source)).size == len(data)
    assert (await store.put("from/str", str(source))).size == len(data)
    assert await read(store, "from/path") == data == await read(store, "from/str")
    with pytest.raises(ValidationError, match="cannot read the source file"):
        await store.put("from/missing", tmp_path / "missing.bin")
    assert await store.head("from/missing") is None and "from/missing" not in leftover_files(store)


async def test_put_from_an_async_iterator_larger_than_one_part(store: Storage) -> None:
    data = os.urandom(PART + 300_000)
    info = await store.put("big.bin", chunks_of(data, 100_000), content_type="application/octet-stream")
    assert info.size == len(data)
    assert await read(store, "big.bin") == data
    if store.adapter == "s3":
        assert (await store.head("big.bin")).etag.endswith("-2")  # went up as two parts


@pytest.mark.parametrize("source", ["bytes", "iterator", "multipart"])
async def test_put_over_max_bytes_leaves_nothing(store: Storage, source: str) -> None:
    # "multipart" fails after S3 has received a first part, so the upload must be aborted.
    data = os.urandom(PART + 200_000 if source == "multipart" else 1000)
    limit = PART + 100_000 if source == "multipart" else len(data) - 1
    payload = data if source == "bytes" else chunks_of(data, 64 * 1024 if source == "multipart" else 100)
    with pytest.raises(TooLarge, match="larger than the allowed"):
        await store.put("too/large", payload, max_bytes=limit)
    assert await store.head("too/large") is None
    assert await keys(store) == []
    assert [u async for u in store.list_multipart("")] == []
    assert leftover_files(store) == []


async def test_put_failing_midway_leaves_nothing(store: Storage) -> None:
    async def broken() -> AsyncIterator[bytes]:
        async for chunk in chunks_of(os.urandom(PART + 200_000), 64 * 1024):
            yield chunk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put("broken", broken())
    assert await store.head("broken") is None
    assert [u async for u in store.list_multipart("")] == [] and leftover_files(store) == []


async def test_get_streams_inclusive_ranges(store: Storage) -> None:
    data = bytes(range(256)) * 1024
    await store.put("r", data)
    assert await read(store, "r", start=10, end=19) == data[10:20]
    assert await read(store, "r", start=100_000) == data[100_000:]
    assert await read(store, "r", end=4) == data[:5]
    assert await read(store, "r", start=len(data) - 3, end=len(data) + 100) == data[-3:]
    with pytest.raises(ValidationError, match="not satisfiable"):
        await read(store, "r", start=len(data))
    with pytest.raises(ValidationError, match="invalid"):
        await read(store, "r", start=5, end=2)
    with pytest.raises(NotFound):
        await read(store, "missing")


async def test_download_to_a_file(store: Storage, tmp_path: pathlib.Path) -> None:
    data = os.urandom(300_000)
    await store.put("d/x.bin", data)
    target = tmp_path / "out.bin"
    assert await store.download("d/x.bin", target) == len(data)
    assert target.read_bytes() == data
    with pytest.raises(NotFound):
        await store.download("d/missing", tmp_path / "none.bin")
    assert not (tmp_path / "none.bin").exists()


async def test_download_if_match_refuses_an_object_rewritten_since(store: Storage,
                                                                   tmp_path: pathlib.Path) -> None:
    await store.put("d/v.bin", b"a" * 1000)
    etag = (await store.head("d/v.bin")).etag
    assert await store.download("d/v.bin", tmp_path / "first.bin", if_match=etag) == 1000
    await store.put("d/v.bin", b"b" * 1000)  # the same size, other bytes, at once
    assert (await store.head("d/v.bin")).etag != etag
    with pytest.raises(ObjectChanged, match="d/v.bin"):
        await store.download("d/v.bin", tmp_path / "second.bin", if_match=etag)
    assert not (tmp_path / "second.bin").exists()


async def test_head_and_delete_are_idempotent(store: Storage) -> None:
    assert await store.head("nope") is None
    await store.put("gone", b"x")
    await store.delete("gone")
    await store.delete("gone")
    await store.delete("never/was")
    assert await store.head("gone") is None


async def test_list_by_prefix_across_pages(store: Storage) -> None:
    wanted = ["p/1", "p/2", "p/a/3", "p/a/b/4", "p/z"]
    for key in [*wanted, "pp", "q/1", "p-1"]:
        await store.put(key, key.encode())
    infos = [info async for info in store.list("p/", page_size=2)]
    assert [i.key for i in infos] == wanted
    assert [i.size for i in infos] == [len(k) for k in wanted]
    assert await keys(store, "p/a", page_size=1) == ["p/a/3", "p/a/b/4"]
    assert await keys(store, "p") == ["p-1", *wanted, "pp"]
    assert await keys(store, "nothing/") == []


async def test_presigned_put_works_for_a_plain_http_client(store: Storage) -> None:
    data = os.urandom(5000)
    request = await store.presign_put("up/one.png", content_type="image/png", byte_size=len(data),
                                      expires_in=300)
    assert request.method == "PUT" and request.headers == {"Content-Type": "image/png"}
    async with http_client(store) as client:
        response = await client.put(request.url, content=data, headers=request.headers)
    assert response.status_code == 200, response.text
    assert (await store.head("up/one.png")).size == len(data)
    assert await read(store, "up/one.png") == data


async def test_signed_and_public_urls_serve_the_object(store: Storage) -> None:
    await store.put("u/photo.jpg", b"jpeg bytes", content_type="image/jpeg")
    signed = await store.url("u/photo.jpg", expires_in=60, content_type="image/jpeg",
                             disposition='attachment; filename="photo.jpg"')
    public = await store.url("u/photo.jpg", expires_in=None)
    if isinstance(store, S3Storage):
        # A public URL serves only what the bucket (or a CDN in front) makes public.
        await store.client.put_object_acl(Bucket=store.bucket, Key="u/photo.jpg", ACL="public-read")
    async with http_client(store) as client:
        response = await client.get(signed)
        assert response.status_code == 200 and response.content == b"jpeg bytes"
        assert response.headers["content-disposition"] == 'attachment; filename="photo.jpg"'
        assert response.headers["content-type"] == "image/jpeg"
        response = await client.get(public)
        assert response.status_code == 200 and response.content == b"jpeg bytes"


async def test_capabilities_match_multipart_support(store: Storage) -> None:
    caps = store.capabilities
    assert caps.presigned_put and caps.signed_urls and caps.public_urls
    if not caps.multipart:
        with pytest.raises(Unsupported, match="single PUT"):
            await store.create_multipart("m", content_type="video/mp4")
        with pytest.raises(Unsupported):
            await store.presign_part("m", "id", 1, expires_in=60)
        with pytest.raises(Unsupported):
            await store.complete_multipart("m", "id", [Part(part_number=1, etag="e")])
        with pytest.raises(Unsupported):
            await store.abort_multipart("m", "id")
        assert [u async for u in store.list_multipart("")] == []


# -- S3 only -------------------------------------------------------------------------------------


async def test_s3_multipart_through_presigned_parts(s3_store: S3Storage) -> None:
    first, second = os.urandom(PART), os.urandom(1234)
    upload_id = await s3_store.create_multipart("video/clip.mp4", content_type="video/mp4")
    assert [(u.key, u.upload_id) async for u in s3_store.list_multipart("video/")] == [
        ("video/clip.mp4", upload_id)]
    parts = []
    async with httpx.AsyncClient() as client:
        for number, body in ((1, first), (2, second)):
            request = await s3_store.presign_part("video/clip.mp4", upload_id, number, expires_in=300)
            response = await client.put(request.url, content=body, headers=request.headers)
            assert response.status_code == 200, response.text
            parts.append(Part(part_number=number, etag=response.headers["etag"]))
    info = await s3_store.complete_multipart("video/clip.mp4", upload_id, parts[::-1])
    assert info.size == len(first) + len(second) and info.content_type == "video/mp4"
    assert await read(s3_store, "video/clip.mp4", start=PART - 2) == first[-2:] + second
    assert [u async for u in s3_store.list_multipart("")] == []


async def test_s3_abort_removes_an_unfinished_upload(s3_store: S3Storage) -> None:
    upload_id = await s3_store.create_multipart("tmp/x", content_type="text/plain")
    await s3_store.abort_multipart("tmp/x", upload_id)
    await s3_store.abort_multipart("tmp/x", upload_id)
    assert [u async for u in s3_store.list_multipart("")] == []
    assert await s3_store.head("tmp/x") is None


async def test_s3_urls_are_computed_without_a_request() -> None:
    unreachable = S3Storage(bucket="media", endpoint_url="http://127.0.0.1:1", path_style=True,
                            public_base_url="https://cdn.example.com/", **CREDENTIALS)
    async with unreachable:
        assert await unreachable.url("a b/c.png", expires_in=None) == "https://cdn.example.com/a%20b/c.png"
        signed = await unreachable.url("a/c.png", expires_in=60, disposition="inline")
        assert signed.startswith("http://127.0.0.1:1/media/a/c.png?")
        assert "response-content-disposition=inline" in signed and "X-Amz-Expires=60" in signed


async def test_s3_plain_object_url_without_public_base(s3_store: S3Storage,
                                                        s3_endpoint: str) -> None:
    assert await s3_store.url("k/1", expires_in=None) == f"{s3_endpoint}/{s3_store.bucket}/k/1"


async def test_s3_unreachable_endpoint_raises_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    async with S3Storage(bucket="media", endpoint_url="http://127.0.0.1:1", path_style=True,
                         **CREDENTIALS) as storage:
        with pytest.raises(StorageError, match=r"S3 head of s3://media/k failed") as caught:
            await storage.head("k")
        assert caught.value.retryable
        with pytest.raises(StorageError, match="S3 put of s3://media/k"):
            await storage.put("k", b"x")


async def test_s3_refuses_use_before_open_and_bad_options() -> None:
    storage = S3Storage(bucket="media")
    with pytest.raises(ConfigurationError, match="not open"):
        await storage.head("k")
    with pytest.raises(ConfigurationError, match="checksums"):
        S3Storage(bucket="media", checksums="always")
    with pytest.raises(ConfigurationError, match="part_size"):
        S3Storage(bucket="media", part_size=1024)
    with pytest.raises(ConfigurationError, match="both"):
        S3Storage(bucket="media", access_key_id="only-half")
    with pytest.raises(ConfigurationError, match="read_timeout=0"):
        S3Storage(bucket="media", read_timeout=0)
    with pytest.raises(ConfigurationError, match="max_attempts=0"):
        S3Storage(bucket="media", max_attempts=0)


# -- local only ----------------------------------------------------------------------------------


async def test_local_verify_accepts_its_urls_and_refuses_altered_ones(local_store: LocalStorage) -> None:
    url = await local_store.url("u/p.jpg", expires_in=60, content_type="image/jpeg", disposition="inline")
    parts = urlsplit(url)
    assert parts.path == "/rindle/u/p.jpg"
    params = dict(parse_qsl(parts.query))
    signed = local_store.verify("GET", "u/p.jpg", params)
    assert (signed.method, signed.content_type, signed.disposition) == ("GET", "image/jpeg", "inline")
    assert local_store.verify("HEAD", "u/p.jpg", params).key == "u/p.jpg"
    with pytest.raises(DeliveryForbidden, match="URL expired at"):
        local_store.verify("GET", "u/p.jpg", params, now=signed.expires_at + 1)
    with pytest.raises(DeliveryForbidden, match="signature does not match"):
        local_store.verify("GET", "u/p.jpg", {**params, "sig": params["sig"][:-2] + "AA"})
    with pytest.raises(DeliveryForbidden, match="signature does not match"):
        local_store.verify("GET", "u/other.jpg", params)
    with pytest.raises(DeliveryForbidden, match="signature does not match"):
        local_store.verify("GET", "u/p.jpg", {**params, "disposition": "attachment"})
    with pytest.raises(DeliveryForbidden, match="signature does not match"):
        local_store.verify("GET", "u/p.jpg", {**params, "expires": str(signed.expires_at + 3600)})
    with pytest.raises(DeliveryForbidden, match="URL was signed for GET, not PUT"):
        local_store.verify("PUT", "u/p.jpg", params)
    with pytest.raises(DeliveryForbidden, match="missing parameter sig"):
        local_store.verify("GET", "u/p.jpg", {k: v for k, v in params.items() if k != "sig"})
    other = LocalStorage(root=local_store.root, base_url=BASE_URL, secret="another-secret-of-16+")
    with pytest.raises(DeliveryForbidden, match="signature does not match"):
        other.verify("GET", "u/p.jpg", params)


@pytest.mark.parametrize("size", [0, 1, 32, 63, 64, 65, 200])
def test_signing_hmac_with_hashed_pads_is_hmac_sha256(size: int) -> None:
    rng = random.Random(size)
    key = rng.randbytes(size)
    for length in (0, 1, 55, 64, 119, 1000):
        message = rng.randbytes(length)
        assert HmacSha256(key).digest(message) == hmac.digest(key, message, "sha256")


def test_local_urls_keep_their_format_and_signature(local_store: LocalStorage) -> None:
    """The fast signing path gives the URL the original urlencode + hmac code gave."""
    rng = random.Random(7)
    alphabet = "abcXYZ019-_.~ +%!*'();:@&=$,?#[]\"üé€😀"
    for _ in range(300):
        # segments of 1-8 characters, none of them "." or ".." (which check_key refuses)
        key = "/".join("x" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
                       for _ in range(rng.randint(1, 3)))
        fields = {"method": rng.choice(["GET", "PUT"]), "expires": rng.choice([None, 1_700_000_000]),
                  "max_bytes": rng.choice([None, 0, 12345]),
                  "content_type": rng.choice([None, "image/webp", "text/plain; charset=utf-8"]),
                  "disposition": rng.choice([None, "inline",
                                             'attachment; filename="a b.png"; filename*=UTF-8\'\'%C3%BC'])}
        url = local_store.sign(fields["method"], key, expires_at=fields["expires"],
                               max_bytes=fields["max_bytes"], content_type=fields["content_type"],
                               disposition=fields["disposition"])
        params = {name: str(value) for name, value in fields.items() if value is not None}
        canonical = msgspec.json.encode(["rindle-local-v1", key, *(params.get(f, "") for f in fields)])
        signature = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), canonical, "sha256").digest())
        params["sig"] = signature.rstrip(b"=").decode()
        assert url == f"{BASE_URL}/{quote(key, safe='/')}?{urlencode(params, quote_via=quote)}"


async def test_local_public_url_never_expires_and_presigned_put_binds_size(local_store: LocalStorage) -> None:
    public = dict(parse_qsl(urlsplit(await local_store.url("k", expires_in=None)).query))
    assert "expires" not in public
    assert local_store.verify("GET", "k", public, now=4_000_000_000).expires_at is None
    request = await local_store.presign_put("k", content_type="image/png", byte_size=10, expires_in=60)
    signed = local_store.verify("PUT", "k", dict(parse_qsl(urlsplit(request.url).query)))
    assert (signed.max_bytes, signed.content_type) == (10, "image/png")
    assert int(request.expires_at.timestamp()) == signed.expires_at
    async with http_client(local_store) as client:
        response = await client.put(request.url, content=b"x" * 11, headers=request.headers)
        assert response.status_code == 413
        response = await client.put(request.url.replace("/k?", "/j?"), content=b"x", headers=request.headers)
        assert response.status_code == 403 and b"signature does not match" in response.content
    assert await local_store.head("k") is None and leftover_files(local_store) == []
    with pytest.raises(ValidationError, match="expires_in"):
        await local_store.url("k", expires_in=local_store.url_ttl_max + 1)


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a//b", "a/../../b", "a\\b", "a\0b", "./a", "a/",
                                 "", "d/.tmp-123"])
async def test_local_refuses_keys_that_escape_or_confuse(local_store: LocalStorage, key: str,
                                                         tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValidationError, match="storage key"):
        await local_store.put(key, b"evil")
    with pytest.raises(ValidationError):
        await read(local_store, key)
    with pytest.raises(ValidationError):
        await local_store.head(key)
    with pytest.raises(ValidationError):
        await local_store.delete(key)
    with pytest.raises(ValidationError):
        await local_store.url(key, expires_in=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media"]
    assert leftover_files(local_store) == []


async def test_local_refuses_a_symlink_out_of_root(local_store: LocalStorage, tmp_path: pathlib.Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (local_store.root / "link").symlink_to(outside, target_is_directory=True)
    for attempt in (local_store.put("link/new.txt", b"evil"), read(local_store, "link/secret.txt"),
                    local_store.head("link/secret.txt"), keys(local_store, "link/")):
        with pytest.raises(ValidationError, match="outside the storage root"):
            await attempt
    assert await keys(local_store) == []
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_local_hides_temp_files_and_creates_its_root(tmp_path: pathlib.Path) -> None:
    async with LocalStorage(root=tmp_path / "new" / "root", base_url=BASE_URL, secret=SECRET) as storage:
        assert storage.root.is_dir()
        await storage.put("a/b", b"1")
        (storage.root / "a" / ".tmp-abandoned").write_bytes(b"partial")
        assert await keys(storage) == ["a/b"]
        assert (await storage.head("a/b")).content_type is None


@pytest.mark.parametrize("secret", ["", "short", b"fifteen bytes!!"])
def test_local_refuses_a_short_secret(tmp_path: pathlib.Path, secret: str | bytes) -> None:
    with pytest.raises(ConfigurationError, match="at least 16"):
        LocalStorage(root=tmp_path, base_url=BASE_URL, secret=secret)


async def test_local_delete_removes_the_folders_it_empties(tmp_path):
    from rindle_async.storage.local import LocalStorage

    storage = LocalStorage(root=tmp_path / "root", base_url="http://x/rindle", secret="s" * 32)
    await storage.open()
    await storage.put("avatar/ab/one/variants/thumb.webp", b"1")
    await storage.put("avatar/ab/one/original.png", b"2")
    await storage.put("avatar/ab/two/original.png", b"3")
    await storage.delete("avatar/ab/one/variants/thumb.webp")
    assert not (tmp_path / "root/avatar/ab/one/variants").exists()
    await storage.delete("avatar/ab/one/original.png")
    assert not (tmp_path / "root/avatar/ab/one").exists()
    assert (tmp_path / "root/avatar/ab/two/original.png").exists()  # a folder still in use stays
    await storage.delete("avatar/ab/two/original.png")
    assert [p.name for p in (tmp_path / "root").iterdir()] == []  # the root itself stays
    await storage.close()
