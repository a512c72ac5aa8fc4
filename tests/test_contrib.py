"""The LocalStorage routes for Starlette and aiohttp, over real HTTP on 127.0.0.1.

Every HTTP test runs once per framework through the shared ``server`` fixture,
so both adapters are held to the same behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import pyvips
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import Mount

from rindle_async import (ConfigurationError, LocalStorage, Profile, Rindle, S3Storage, UploadClosed,
                          UploadTicket, Variant, VerificationFailed)
from rindle_async.contrib.local_http import RangeNotSatisfiable, cache_control, handle_request, parse_range
from rindle_async.lifecycle import transitions
from rindle_async.lifecycle.machines import UPLOAD_SESSION
from rindle_async.contrib.aiohttp import add_local_storage_routes
from rindle_async.contrib.starlette import local_storage_routes
from rindle_async.delivery import content_disposition

DATA = os.urandom(300 * 1024)  # several 64 KiB chunks, so streaming crosses chunk boundaries
DISPOSITION = 'attachment; filename="a.png"'
OUTSIDE = b"secret outside the storage root"


# -- servers -------------------------------------------------------------------------


@asynccontextmanager
async def serve_starlette(rindle: Rindle, sock: socket.socket) -> AsyncIterator[None]:
    app = Starlette(routes=[Mount("/rindle", app=local_storage_routes(rindle))])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def serve_aiohttp(rindle: Rindle, sock: socket.socket) -> AsyncIterator[None]:
    app = web.Application()
    add_local_storage_routes(app, rindle, prefix="/rindle")
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield
    finally:
        await runner.cleanup()


SERVERS: dict[str, Callable[[Rindle, socket.socket], AbstractAsyncContextManager[None]]] = {
    "starlette": serve_starlette, "aiohttp": serve_aiohttp}


@pytest.fixture(params=sorted(SERVERS))
def framework(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket bound to a free port now, so the URL is known before the app exists (no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.fixture
def base_url(listener: socket.socket) -> str:
    return "http://127.0.0.1:%d" % listener.getsockname()[1]


@pytest.fixture
def storage(tmp_path: Path, base_url: str) -> LocalStorage:
    (tmp_path / "outside.txt").write_bytes(OUTSIDE)
    return LocalStorage(root=tmp_path / "media", base_url=f"{base_url}/rindle", secret="x" * 32)


@pytest.fixture
async def rindle(make_rindle: Callable[..., Rindle], storage: LocalStorage) -> Rindle:
    return await make_rindle(relay=False, storages={"local": storage}, profiles=[
        Profile(name="avatar", storage="local", variants={"thumb": Variant(width=64, height=64)})])


@pytest.fixture
async def server(framework: str, rindle: Rindle, listener: socket.socket, base_url: str
                 ) -> AsyncIterator[str]:
    """The base URL of ``framework`` serving ``rindle``'s local storage at /rindle."""
    async with SERVERS[framework](rindle, listener):
        yield base_url


@pytest.fixture
async def client(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server, timeout=10) as client:
        yield client


@pytest.fixture
async def stored(storage: LocalStorage) -> str:
    await storage.put("docs/data.bin", DATA)
    return "docs/data.bin"


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True)) | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


async def raw_request(base_url: str, method: str, target: str) -> tuple[int, bytes]:
    """Send ``target`` byte for byte (no client-side URL normalisation); return status and raw reply."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: text/plain\r\n"
                 f"Content-Length: 4\r\nConnection: close\r\n\r\nevil".encode())
    reply = await reader.read()
    writer.close()
    await writer.wait_closed()
    return int(reply.split(b" ", 2)[1]), reply


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    reason = response.json()["error"]
    for word in words:
        assert word in reason


# -- uploads ---------------------------------------------------------------------------


async def test_direct_upload_flow(rindle: Rindle, client: httpx.AsyncClient, storage: LocalStorage) -> None:
    png = pyvips.Image.black(32, 32).pngsave_buffer()
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                          byte_size=len(png))
    response = await client.request(ticket.method, ticket.url, headers=ticket.headers, content=png)
    assert response.status_code == 200, response.text
    receipt = response.json()
    assert receipt["size"] == len(png)
    assert b"".join([chunk async for chunk in storage.get(receipt["key"])]) == png
    asset = await rindle.verify_upload(ticket.session_id)
    assert asset.state == "validating"
    assert asset.byte_size == len(png)


async def upload_ticket(rindle: Rindle, byte_size: int) -> tuple[UploadTicket, str]:
    """A direct upload's ticket and its storage key (the routes write only for open sessions)."""
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                          byte_size=byte_size)
    key = await rindle.runtime.pool.fetchval(f"SELECT storage_key FROM {rindle.schema}.upload_sessions"
                                     " WHERE id = $1::uuid", ticket.session_id)
    return ticket, key


async def test_upload_streams_a_chunked_body(rindle: Rindle, client: httpx.AsyncClient,
                                             storage: LocalStorage) -> None:
    ticket, key = await upload_ticket(rindle, len(DATA))

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(DATA), 10_000):
            yield DATA[start:start + 10_000]

    response = await client.put(ticket.url, content=body(), headers=ticket.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"key": key, "size": len(DATA)}
    assert b"".join([chunk async for chunk in storage.get(key)]) == DATA


def png_of(size: int, shade: int) -> bytes:
    """A PNG of exactly ``size`` bytes (padded after IEND, which decoders ignore)."""
    image = pyvips.Image.black(16, 16).new_from_image([shade, 0, 0]).pngsave_buffer()
    return image + bytes(size - len(image))


async def _close_session(rindle: Rindle, ticket: UploadTicket, state: str) -> None:
    if state == "completed":
        await rindle.verify_upload(ticket.session_id)
    elif state == "failed":
        with pytest.raises(VerificationFailed, match="bytes but"):
            await rindle.verify_upload(ticket.session_id)
    elif state == "aborted":
        await rindle.abort_upload(ticket.session_id)
    elif state == "expired":
        await rindle.runtime.pool.execute(f"UPDATE {rindle.schema}.upload_sessions"
                                  " SET expires_at = now() - interval '1 second'")
        with pytest.raises(VerificationFailed, match="expired at"):
            await rindle.verify_upload(ticket.session_id)
    else:  # verifying: verify_upload claimed it and is checking the stored object
        async with rindle.runtime.db.transaction() as uow:
            await transitions.transition(uow, UPLOAD_SESSION, uuid.UUID(ticket.session_id),
                                    "signed", "verifying")


@pytest.mark.parametrize("state", ["verifying", "completed", "failed", "aborted", "expired"])
async def test_a_put_once_the_session_is_no_longer_open_is_410(rindle: Rindle, client: httpx.AsyncClient,
                                                               storage: LocalStorage, state: str) -> None:
    first, other = png_of(1000, 10), png_of(1000, 250)
    ticket, key = await upload_ticket(rindle, len(first))
    sent = first[:-1] if state == "failed" else first  # one byte short: verification fails
    response = await client.put(ticket.url, headers=ticket.headers, content=sent)
    assert response.status_code == 200, response.text
    await _close_session(rindle, ticket, state)
    response = await client.put(ticket.url, headers=ticket.headers, content=other)
    assert_error(response, 410, f"upload session {ticket.session_id} is {state}",
                 "no longer accepts writes")
    assert b"".join([chunk async for chunk in storage.get(key)]) == sent  # not swapped


async def test_a_put_no_upload_session_owns_is_410(client: httpx.AsyncClient, storage: LocalStorage) -> None:
    # what a ticket replayed after its asset was purged (rows and all) looks like
    url = storage.sign("PUT", "avatar/00/0000/upload.png", expires_at=int(time.time()) + 60,
                       max_bytes=10, content_type="image/png")
    response = await client.put(url, headers={"Content-Type": "image/png"}, content=b"0123456789")
    assert_error(response, 410, "no upload session is open for 'avatar/00/0000/upload.png'")
    assert files_under(storage.root) == []


async def test_tampered_signature_is_403(rindle: Rindle, client: httpx.AsyncClient,
                                         storage: LocalStorage) -> None:
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png", byte_size=10)
    for url in (with_query(ticket.url, sig="A" * 43), with_query(ticket.url, max_bytes="999999")):
        response = await client.put(url, headers=ticket.headers, content=b"0123456789")
        assert_error(response, 403, "signature does not match")
    assert files_under(storage.root) == []


async def test_repeated_parameter_is_403(client: httpx.AsyncClient, storage: LocalStorage, stored: str) -> None:
    url = await storage.url(stored, expires_in=60)
    response = await client.get(url + "&max_bytes=1&max_bytes=2")
    assert_error(response, 403, "more than once")


async def test_expired_urls_are_403(client: httpx.AsyncClient, storage: LocalStorage, stored: str) -> None:
    past = int(time.time()) - 10
    put = storage.sign("PUT", "up/late.txt", expires_at=past, max_bytes=10, content_type="text/plain")
    assert_error(await client.put(put, content=b"late", headers={"Content-Type": "text/plain"}), 403, "expired")
    get = storage.sign("GET", stored, expires_at=past)
    assert_error(await client.get(get), 403, "expired")
    assert await storage.head("up/late.txt") is None


async def test_url_used_with_another_method_is_403(client: httpx.AsyncClient, storage: LocalStorage,
                                                   stored: str) -> None:
    get = await storage.url(stored, expires_in=60)
    assert_error(await client.put(get, content=b"x"), 403, "signed for GET")
    put = storage.sign("PUT", stored, expires_at=int(time.time()) + 60, max_bytes=10)
    assert_error(await client.get(put), 403, "signed for PUT")


async def test_wrong_content_type_is_400(client: httpx.AsyncClient, storage: LocalStorage) -> None:
    url = storage.sign("PUT", "up/a.png", expires_at=int(time.time()) + 60, max_bytes=10,
                       content_type="image/png")
    response = await client.put(url, content=b"0123456789", headers={"Content-Type": "image/jpeg"})
    assert_error(response, 400, "image/jpeg", "image/png")
    assert_error(await client.put(url, content=b"0123456789"), 400, "None", "image/png")
    assert await storage.head("up/a.png") is None


async def test_declared_length_over_max_bytes_is_413(client: httpx.AsyncClient, storage: LocalStorage) -> None:
    url = storage.sign("PUT", "up/big.bin", expires_at=int(time.time()) + 60, max_bytes=10)
    response = await client.put(url, content=b"x" * 11)
    assert_error(response, 413, "Content-Length 11", "10 bytes")
    assert files_under(storage.root) == []


async def test_declared_length_is_refused_before_the_body_arrives(server: str, storage: LocalStorage) -> None:
    url = urlsplit(storage.sign("PUT", "up/huge.bin", expires_at=int(time.time()) + 60, max_bytes=10))
    reader, writer = await asyncio.open_connection("127.0.0.1", url.port)
    # Only the headers are sent: a route that read the body first would wait here forever.
    writer.write(f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                 f"Content-Length: 10000000000\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    writer.close()
    await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert await storage.head("up/huge.bin") is None


async def test_upload_cut_off_midway_stores_nothing(rindle: Rindle, server: str, storage: LocalStorage,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    ticket, key = await upload_ticket(rindle, 10_000_000)
    url = urlsplit(ticket.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", url.port)
    writer.write(f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                 f"Content-Type: image/png\r\nContent-Length: 10000000\r\n\r\n".encode() + DATA)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    for _ in range(50):  # the server notices the disconnect asynchronously
        await asyncio.sleep(0.05)
        if files_under(storage.root) == []:
            break
    assert files_under(storage.root) == []
    assert await storage.head(key) is None
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_chunked_body_over_max_bytes_is_413_and_stores_nothing(rindle: Rindle,
                                                                     client: httpx.AsyncClient,
                                                                     storage: LocalStorage) -> None:
    ticket, key = await upload_ticket(rindle, 100)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 64
            await asyncio.sleep(0.01)

    response = await client.put(ticket.url, content=body(), headers=ticket.headers)
    assert_error(response, 413, "100 bytes")
    assert await storage.head(key) is None
    assert files_under(storage.root) == []


TRAVERSALS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%2Foutside.txt",
    "%2e%2e%2Foutside.txt",
    "a%2F..%2F..%2Foutside.txt",
    "%2Fetc%2Fpasswd",
    "..%5Coutside.txt",
    "a%00%2F..%2F..%2Foutside.txt",
    "",
]


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_key_traversal_never_leaves_the_root(server: str, storage: LocalStorage, tmp_path: Path,
                                                   method: str) -> None:
    for path in TRAVERSALS:
        status, reply = await raw_request(server, method, f"/rindle/{path}?method={method}&sig=x")
        assert status in (400, 403), (path, reply)
        assert OUTSIDE not in reply
    # Unencoded dot segments may be normalised away by the server before routing (then 404).
    status, reply = await raw_request(server, method, f"/rindle/../outside.txt?method={method}&sig=x")
    assert status in (400, 403, 404) and OUTSIDE not in reply
    assert (tmp_path / "outside.txt").read_bytes() == OUTSIDE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media", "outside.txt"]
    assert files_under(storage.root) == []


async def test_signed_key_through_a_symlink_is_refused(client: httpx.AsyncClient, storage: LocalStorage,
                                                       tmp_path: Path) -> None:
    await storage.open()
    (storage.root / "link").symlink_to(tmp_path, target_is_directory=True)
    response = await client.get(await storage.url("link/outside.txt", expires_in=60))
    assert_error(response, 400, "outside the storage root")
    assert OUTSIDE not in response.content
    put = storage.sign("PUT", "link/evil.txt", expires_at=int(time.time()) + 60, max_bytes=10)
    # no session owns the key (rindle never makes one there); put() refuses it too (test_storage)
    assert_error(await client.put(put, content=b"evil"), 410, "no upload session")
    assert not (tmp_path / "evil.txt").exists()


# -- delivery --------------------------------------------------------------------------


async def test_get_serves_the_object_with_its_signed_headers(client: httpx.AsyncClient, storage: LocalStorage,
                                                             stored: str) -> None:
    url = await storage.url(stored, expires_in=60, content_type="image/png", disposition=DISPOSITION)
    response = await client.get(url)
    assert response.status_code == 200
    assert response.content == DATA
    headers = response.headers
    assert headers["content-type"] == "image/png"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-disposition"] == DISPOSITION
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-length"] == str(len(DATA))
    max_age = re.fullmatch(r"private, max-age=(\d+)", headers["cache-control"])
    assert max_age and 55 <= int(max_age[1]) <= 60


async def test_non_ascii_download_name_survives_the_trip(client: httpx.AsyncClient, storage: LocalStorage,
                                                         stored: str) -> None:
    disposition = content_disposition("attachment", "résumé 日本.png")
    response = await client.get(await storage.url(stored, expires_in=60, disposition=disposition))
    assert response.status_code == 200
    assert response.headers["content-disposition"] == disposition


async def test_url_that_never_expires_is_cached_as_immutable(client: httpx.AsyncClient, storage: LocalStorage,
                                                            stored: str) -> None:
    response = await client.get(await storage.url(stored, expires_in=None))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["content-type"] == "application/octet-stream"
    assert "content-disposition" not in response.headers


@pytest.mark.parametrize(("header", "first", "last"), [
    ("bytes=0-9", 0, 9),
    ("bytes=65530-131080", 65530, 131080),
    ("bytes=300000-", 300000, len(DATA) - 1),
    ("bytes=-5", len(DATA) - 5, len(DATA) - 1),
    ("bytes=-999999999", 0, len(DATA) - 1),
    ("bytes=10-999999999", 10, len(DATA) - 1),
])
async def test_single_range_is_206(client: httpx.AsyncClient, storage: LocalStorage, stored: str,
                                   header: str, first: int, last: int) -> None:
    url = await storage.url(stored, expires_in=60, content_type="image/png")
    response = await client.get(url, headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert response.headers["content-length"] == str(last - first + 1)
    assert response.headers["content-type"] == "image/png"
    assert response.content == DATA[first:last + 1]


@pytest.mark.parametrize("header", [f"bytes={len(DATA)}-", "bytes=999999999-999999999", "bytes=-0"])
async def test_unsatisfiable_range_is_416(client: httpx.AsyncClient, storage: LocalStorage, stored: str,
                                          header: str) -> None:
    response = await client.get(await storage.url(stored, expires_in=60), headers={"Range": header})
    assert_error(response, 416, str(len(DATA)))
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("headers", [{"Range": "bytes=0-1,5-6"}, {"Range": "bytes=abc"},
                                     {"Range": "items=0-1"}, {"Range": "bytes=9-2"},
                                     {"Range": "bytes=0-9", "If-Range": '"some-etag"'}])
async def test_ranges_we_do_not_serve_get_the_whole_body(client: httpx.AsyncClient, storage: LocalStorage,
                                                         stored: str, headers: dict[str, str]) -> None:
    response = await client.get(await storage.url(stored, expires_in=60), headers=headers)
    assert response.status_code == 200
    assert "content-range" not in response.headers
    assert response.content == DATA


async def test_conditional_and_encoding_headers_get_the_signed_object(client: httpx.AsyncClient,
                                                                      storage: LocalStorage, stored: str) -> None:
    # aiohttp's FileResponse would answer these 304, 412 and a sibling "<key>.gz" (docs/delivery.md)
    await storage.put(stored + ".gz", b"not the signed object")
    url = await storage.url(stored, expires_in=60)
    for headers in ({"If-None-Match": "*"}, {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"},
                    {"If-Match": '"other"'}, {"Accept-Encoding": "gzip, br"}):
        response = await client.get(url, headers=headers)
        assert response.status_code == 200, headers
        assert "content-encoding" not in response.headers
        assert response.content == DATA


async def test_empty_object(client: httpx.AsyncClient, storage: LocalStorage) -> None:
    await storage.put("docs/empty", b"")
    url = await storage.url("docs/empty", expires_in=60)
    response = await client.get(url)
    assert (response.status_code, response.content, response.headers["content-length"]) == (200, b"", "0")
    response = await client.get(url, headers={"Range": "bytes=0-"})
    assert_error(response, 416)
    assert response.headers["content-range"] == "bytes */0"


async def test_head_sends_the_headers_only(client: httpx.AsyncClient, storage: LocalStorage, stored: str) -> None:
    url = await storage.url(stored, expires_in=60, content_type="image/png", disposition=DISPOSITION)
    response = await client.head(url)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"] == DISPOSITION
    ranged = await client.head(url, headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 0-9/{len(DATA)}"


async def test_client_leaving_midway_is_not_an_error(server: str, storage: LocalStorage, stored: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    big = "docs/big.bin"
    await storage.put(big, DATA * 40)  # 12 MB: more than the socket buffers hold
    url = urlsplit(await storage.url(big, expires_in=60))
    reader, writer = await asyncio.open_connection("127.0.0.1", url.port)
    writer.write(f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    await reader.readexactly(100_000)
    writer.close()
    await writer.wait_closed()
    async with httpx.AsyncClient(timeout=10) as client:  # the server still answers
        response = await client.get(await storage.url(stored, expires_in=60))
    assert response.content == DATA
    await asyncio.sleep(0.2)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_missing_object_is_404(client: httpx.AsyncClient, storage: LocalStorage, stored: str) -> None:
    url = await storage.url("docs/missing.bin", expires_in=60)
    assert_error(await client.get(url), 404, "docs/missing.bin")
    head = await client.head(url)
    assert (head.status_code, head.content) == (404, b"")
    # A HEAD answer that leaked its error body would corrupt the next answer on the kept-alive connection.
    after = await client.get(await storage.url(stored, expires_in=60))
    assert (after.status_code, after.content) == (200, DATA)


@pytest.mark.parametrize("method", ["DELETE", "POST", "PATCH"])
async def test_other_methods_are_405(client: httpx.AsyncClient, storage: LocalStorage, stored: str,
                                     method: str) -> None:
    response = await client.request(method, await storage.url(stored, expires_in=60))
    assert_error(response, 405, method)
    assert response.headers["allow"] == "GET, HEAD, PUT"
    assert await storage.head(stored) is not None


# -- configuration and pure helpers --------------------------------------------------


@pytest.mark.parametrize("name", ["s3", "nope"])
def test_routes_refuse_a_storage_that_is_not_local(tmp_path: Path, name: str) -> None:
    rindle = Rindle(database_url="postgresql://unused@127.0.0.1/unused", storages={
        "local": LocalStorage(root=tmp_path, base_url="http://h/rindle", secret="x" * 32),
        "s3": S3Storage(bucket="bucket", endpoint_url="http://127.0.0.1:9")})
    with pytest.raises(ConfigurationError, match=name):
        local_storage_routes(rindle, name)
    with pytest.raises(ConfigurationError, match=name):
        add_local_storage_routes(web.Application(), rindle, storage=name)


async def test_the_core_needs_only_the_storage_and_a_write_check(storage: LocalStorage) -> None:
    url = urlsplit(storage.sign("PUT", "up/a.txt", expires_at=int(time.time()) + 60, max_bytes=10))
    query = parse_qsl(url.query)
    asked: list[str] = []

    async def open_for(key: str) -> None:
        asked.append(key)

    async def closed(key: str) -> None:
        raise UploadClosed(f"no upload session is open for {key!r}")

    async def body() -> AsyncIterator[bytes]:
        yield b"0123"

    answer = await handle_request(storage, closed, "PUT", "up/a.txt", query, {}, body())
    assert (answer.status, await storage.head("up/a.txt")) == (410, None)
    answer = await handle_request(storage, open_for, "put", "up/a.txt", query, {}, body())
    assert (answer.status, asked) == (200, ["up/a.txt"])
    assert b"".join([chunk async for chunk in storage.get("up/a.txt")]) == b"0123"


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 10, None),
    ("bytes=0-0", 10, (0, 0)),
    ("bytes=2-", 10, (2, 9)),
    ("bytes=-3", 10, (7, 9)),
    ("bytes=-30", 10, (0, 9)),
    ("bytes=5-100", 10, (5, 9)),
    (" Bytes = 1 - 2 ", 10, (1, 2)),
    ("bytes=0-1,3-4", 10, None),
    ("bytes=4-1", 10, None),
    ("bytes=-", 10, None),
    ("bytes=a-b", 10, None),
    ("bytes=+1-2", 10, None),
    ("bytes=\u00b2-3", 10, None),
    ("bytes=1-2-3", 10, None),
    ("lines=1-2", 10, None),
])
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0),
                                              ("bytes=-1", 0)])
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        parse_range(header, size)
    assert raised.value.size == size


def test_cache_control() -> None:
    assert cache_control(None) == "public, max-age=31536000, immutable"
    assert cache_control(1_000, now=900.5) == "private, max-age=100"
    assert cache_control(1_000, now=2_000) == "private, max-age=0"
