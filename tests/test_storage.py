"""The storage contract (``rindle_async.storage.contract``) run against every adapter: local
files, S3 on moto and S3 on SeaweedFS (which checks signatures); adapters broken on purpose
fail it naming the rule.  Then what only one adapter promises: local key confinement and URL
signing, S3 parts, addressing and transport errors."""

from __future__ import annotations

import base64
import hmac
import os
import pathlib
import random
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import msgspec
import pytest

from rindle_async.errors import (ConfigurationError, ContractViolation, DeliveryForbidden, NotFound,
                                 StorageError, TooLarge, ValidationError)
from rindle_async.storage import LocalStorage, ObjectInfo, S3Storage, Storage
from rindle_async.storage.contract import RULES, ContractReport, HttpResponse, Send, check_storage
from rindle_async.storage.s3 import MIN_PART_SIZE
from rindle_async.storage.signing import HmacSha256

from .s3server import SeaweedS3, seaweedfs  # noqa: F401  (fixture)

SECRET = "0123456789abcdef-test-secret"
BASE_URL = "http://media.test/rindle"
PART = MIN_PART_SIZE
CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}
README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
async def local_store(tmp_path: pathlib.Path) -> AsyncIterator[LocalStorage]:
    async with LocalStorage(root=tmp_path / "media", base_url=BASE_URL, secret=SECRET) as storage:
        yield storage


@pytest.fixture
async def s3_store(s3_endpoint: str, s3_bucket: str) -> AsyncIterator[S3Storage]:
    async with S3Storage(bucket=s3_bucket, endpoint_url=s3_endpoint, path_style=True,
                         part_size=PART) as storage:
        yield storage


@pytest.fixture
async def seaweedfs_store(seaweedfs: SeaweedS3) -> AsyncIterator[S3Storage]:  # noqa: F811
    storage = S3Storage(bucket=f"contract-{time.monotonic_ns() % 10**12}", endpoint_url=seaweedfs.endpoint,
                        path_style=True, access_key_id=seaweedfs.access_key,
                        secret_access_key=seaweedfs.secret_key, part_size=PART)
    async with storage:
        await storage.client.create_bucket(Bucket=storage.bucket)
        yield storage


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> Storage:
    """The local and the moto S3 adapter, opened."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(params=["local", "s3", "seaweedfs"])
def every_store(request: pytest.FixtureRequest) -> Storage:
    """Every adapter on every store the tests have, opened."""
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


def asgi_send(app) -> Send:
    """A ``send`` for check_storage that reaches an ASGI app in this process."""

    async def send(method: str, url: str, headers, body: bytes) -> HttpResponse:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            response = await client.request(method, url, headers=dict(headers), content=body)
        return HttpResponse(status=response.status_code, headers=dict(response.headers),
                            body=response.content)

    return send


async def run_contract(storage: Storage) -> ContractReport:
    """check_storage with real HTTP: aiohttp for S3, the ``local_routes`` app for local files."""
    if isinstance(storage, LocalStorage):
        return await check_storage(storage, send=asgi_send(local_routes(storage)))
    return await check_storage(storage)


# -- the contract --------------------------------------------------------------------------------

#: The rules each adapter's capabilities leave out.
SKIPPED = {"local": {"multipart.abort", "multipart.complete", "multipart.list_parts", "presign_post.http"},
           "s3": {"multipart.unsupported"},
           "seaweedfs": {"multipart.unsupported"}}


async def test_every_adapter_keeps_the_storage_contract(every_store: Storage,
                                                        request: pytest.FixtureRequest) -> None:
    storage = every_store
    report = await run_contract(storage)
    assert report.adapter == storage.adapter
    assert set(report.skipped) == SKIPPED[request.node.callspec.params["every_store"]]
    assert sorted([*report.passed, *report.skipped]) == sorted(rule.name for rule in RULES)
    # it removed what it wrote: no object, no unfinished upload, no local temp file
    assert await keys(storage) == [] and leftover_files(storage) == []
    assert [u async for u in storage.list_multipart("")] == []


class DeleteRefusesMissing(LocalStorage):
    """Breaks delete.missing: deleting what is not there raises NotFound."""

    async def delete(self, key: str) -> None:
        if await self.head(key) is None:
            raise NotFound(f"no object {key!r} to delete")
        await super().delete(key)


class HeadMiscounts(LocalStorage):
    """Breaks head: the size it gives is one byte too many."""

    async def head(self, key: str) -> ObjectInfo | None:
        info = await super().head(key)
        return None if info is None else msgspec.structs.replace(info, size=info.size + 1)


class ListStopsAfterOnePage(LocalStorage):
    """Breaks list: it never asks for a second page."""

    async def list(self, prefix: str, *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        given = 0
        async for info in super().list(prefix, page_size=page_size):
            if given == page_size:
                return
            given += 1
            yield info


class DownloadIgnoresIfMatch(LocalStorage):
    """Breaks download.if_match: it copies whichever version is there."""

    async def download(self, key: str, path, *, if_match: str | None = None) -> int:
        return await super().download(key, path)


class ClaimsMultipart(LocalStorage):
    """Breaks the multipart rules: its capabilities claim multipart, which it lacks."""

    @property
    def capabilities(self):
        return msgspec.structs.replace(super().capabilities, multipart=True)


@pytest.mark.parametrize(("adapter", "broken", "says"), [
    (DeleteRefusesMissing, {"delete.missing"}, "raised NotFound: no object"),
    (HeadMiscounts, {"head"}, "gave size=1235 for 1234 bytes put"),
    (ListStopsAfterOnePage, {"list"}, "page_size=2) gave (key, size) [("),
    (DownloadIgnoresIfMatch, {"download.if_match"},
     "returned without an error; the contract wants ObjectChanged"),
    (ClaimsMultipart, {"multipart.abort", "multipart.complete"},
     "raised Unsupported: local storage has no multipart uploads"),
])
async def test_an_adapter_that_breaks_a_rule_fails_the_contract_naming_it(
        tmp_path: pathlib.Path, adapter: type[LocalStorage], broken: set[str], says: str) -> None:
    async with adapter(root=tmp_path / "media", base_url=BASE_URL, secret=SECRET) as storage:
        with pytest.raises(ContractViolation) as caught:
            await run_contract(storage)
    assert set(caught.value.failures) == broken
    message = str(caught.value)
    assert message.startswith(f"storage adapter 'local' broke {len(broken)} rule(s)")
    assert all(f"\n- {rule}: " in message for rule in broken) and says in message
    assert leftover_files(storage) == []  # a failing run cleans up too


async def test_without_send_the_contract_skips_only_the_http_rules(local_store: LocalStorage) -> None:
    report = await check_storage(local_store, send=None)
    reason = "send=None: no HTTP client to use the URLs with"
    assert report.skipped == {"presign_put.http": reason, "url.signed.http": reason,
                              "multipart.abort": "capabilities.multipart is False",
                              "multipart.complete": "capabilities.multipart is False",
                              "multipart.list_parts": "capabilities.multipart is False",
                              "presign_post.http": "capabilities.presigned_post is False"}


async def test_the_contract_refuses_bad_options(local_store: LocalStorage) -> None:
    with pytest.raises(ValidationError, match=r"stream_size=1000; use at least 1 MiB"):
        await check_storage(local_store, stream_size=1000)
    with pytest.raises(ValidationError, match=r"timeout=0; use a positive number"):
        await check_storage(local_store, timeout=0)
    with pytest.raises(ValidationError, match=r"send='aiohttp'; pass an async callable"):
        await check_storage(local_store, send="aiohttp")


def test_the_contract_loads_without_the_s3_adapter() -> None:
    code = ("import sys, rindle_async.storage.contract; "
            "print(sorted(m for m in ('aiobotocore', 'aiohttp', 'pytest', 'rindle_async.storage.s3') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_readme_lists_every_contract_rule() -> None:
    section = README.read_text().split("### Writing a storage adapter\n", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| `([\w.]+)` \| ([^|]+?) \|$", section, re.MULTILINE))
    assert documented == {rule.name: rule.wants for rule in RULES}


async def test_local_and_s3_list_in_key_order(store: Storage) -> None:
    """What these two adapters promise beyond the contract, which promises no order."""
    for key in ["p/a/3", "pp", "p/1", "p-1", "p/z", "p/a/b/4"]:
        await store.put(key, b"x")
    assert await keys(store, "p", page_size=2) == ["p-1", "p/1", "p/a/3", "p/a/b/4", "p/z", "pp"]


async def test_public_urls_serve_what_the_store_makes_public(store: Storage) -> None:
    """The contract checks only that public URLs are stable: serving them is the store's policy."""
    await store.put("u/photo.jpg", b"jpeg bytes", content_type="image/jpeg")
    public = await store.url("u/photo.jpg", expires_in=None)
    if isinstance(store, S3Storage):
        await store.client.put_object_acl(Bucket=store.bucket, Key="u/photo.jpg", ACL="public-read")
    async with http_client(store) as client:
        response = await client.get(public)
    assert response.status_code == 200 and response.content == b"jpeg bytes"


# -- S3 only -------------------------------------------------------------------------------------


async def test_s3_puts_a_stream_larger_than_one_part_in_parts(s3_store: S3Storage) -> None:
    data = os.urandom(PART + 300_000)
    assert (await s3_store.put("big.bin", chunks_of(data, 100_000))).size == len(data)
    assert (await s3_store.head("big.bin")).etag.endswith("-2")
    assert await read(s3_store, "big.bin") == data


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
