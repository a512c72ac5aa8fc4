"""Uppy Companion's S3 routes (rindle_async.contrib.companion) for Starlette and aiohttp, over real
HTTP on 127.0.0.1 against moto, driven with the requests Uppy's AwsS3 plugin makes."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
import uvicorn
from aiohttp import web
from starlette.applications import Starlette

from rindle_async import ConfigurationError, Rindle, S3Storage
from rindle_async.contrib.aiohttp import add_companion_routes
from rindle_async.contrib.starlette import companion_routes

from .media import GuardedStorage, avatar_profile, png
from .s3server import seaweedfs  # noqa: F401  (fixture)

MiB = 1024 * 1024


async def authorize(request) -> str | None:
    """The host's check: a user named in a header, as the examples' demo login does."""
    return request.headers.get("x-user") or None


@asynccontextmanager
async def serve_starlette(rindle: Rindle, sock: socket.socket) -> AsyncIterator[None]:
    app = Starlette(routes=companion_routes(rindle, profile="avatar", authorize=authorize))
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
    add_companion_routes(app, rindle, profile="avatar", authorize=authorize)
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
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.fixture
async def rindle(media_rindle, s3_storage) -> Rindle:
    return await media_rindle(s3_storage, max_bytes=20 * MiB)


@pytest.fixture
async def client(framework: str, rindle: Rindle, listener: socket.socket) -> AsyncIterator[httpx.AsyncClient]:
    async with SERVERS[framework](rindle, listener):
        base_url = "http://127.0.0.1:%d" % listener.getsockname()[1]
        async with httpx.AsyncClient(base_url=base_url, headers={"X-User": "ann"}, timeout=15) as client:
            yield client


async def test_a_post_policy_upload(client, rindle):
    params = await client.get("/s3/params", params={"filename": "me.png", "type": "image/png"})
    assert params.status_code == 200, params.text
    answer = params.json()
    assert (answer["method"], answer["headers"]) == ("POST", {})
    assert answer["fields"]["key"] == answer["key"] and answer["fields"]["Content-Type"] == "image/png"
    async with httpx.AsyncClient() as s3:
        stored = await s3.post(answer["url"], data=answer["fields"], files={"file": ("me.png", png())})
    assert stored.status_code in (200, 204), stored.text
    session = await rindle.find_upload(answer["key"], profile="avatar")
    assert (session.id, session.asset_id, session.strategy) == (answer["session_id"], answer["asset_id"],
                                                               "presigned_post")
    assert (await rindle.verify_upload(session.id)).state == "validating"


async def test_a_multipart_upload_with_listing_and_completion(client, rindle):
    created = await client.post("/s3/multipart", json={"filename": "big.png", "type": "image/png",
                                                       "metadata": {"name": "big.png"}})
    assert created.status_code == 200, created.text
    key, upload_id = created.json()["key"], created.json()["uploadId"]
    body = png() + bytes(6 * MiB)
    etags = {}
    async with httpx.AsyncClient() as s3:
        for number, start in ((1, 0), (2, 5 * MiB)):
            signed = await client.get(f"/s3/multipart/{upload_id}/{number}", params={"key": key})
            assert signed.status_code == 200, signed.text
            put = await s3.put(signed.json()["url"], content=body[start:start + 5 * MiB])
            etags[number] = put.headers["ETag"]
    listed = await client.get(f"/s3/multipart/{upload_id}", params={"key": key})
    assert listed.status_code == 200, listed.text
    assert [(p["PartNumber"], p["Size"]) for p in listed.json()] == [(1, 5 * MiB), (2, len(body) - 5 * MiB)]
    assert [f'"{p["ETag"]}"' for p in listed.json()] == [etags[1], etags[2]]
    parts = [{"PartNumber": n, "ETag": etag} for n, etag in etags.items()]
    done = await client.post(f"/s3/multipart/{upload_id}/complete", params={"key": key}, json={"parts": parts})
    assert done.status_code == 200, done.text
    assert done.json()["key"] == key and done.json()["location"].endswith(key)
    assert done.json()["asset_id"] == created.json()["asset_id"]
    asset = await rindle.get_asset(done.json()["asset_id"])
    assert (asset.state, asset.byte_size) == ("validating", len(body))


async def test_cancel_aborts_the_session_and_a_second_cancel_is_fine(client, rindle):
    created = (await client.post("/s3/multipart", json={"filename": "a.png", "type": "image/png"})).json()
    for _ in range(2):
        gone = await client.delete(f"/s3/multipart/{created['uploadId']}", params={"key": created["key"]})
        assert (gone.status_code, gone.json()) == (200, {})
    assert (await rindle.get_upload(created["session_id"])).state == "aborted"
    assert (await rindle.get_asset(created["asset_id"])).state == "deleted"


async def test_bad_requests_get_precise_errors(client, rindle):
    created = (await client.post("/s3/multipart", json={"filename": "a.png", "type": "image/png"})).json()
    key, upload_id = created["key"], created["uploadId"]
    cases = [
        ("GET", "/s3/params", {"type": "image/png"}, None, 400, "'filename' is missing"),
        ("GET", "/s3/params", {"filename": "a.gif", "type": "image/gif"}, None, 422, "not allowed"),
        ("GET", "/s3/params", {"filename": "a.jpg", "type": "image/png"}, None, 422, "a.jpg"),
        ("POST", "/s3/multipart", None, b"{\"filename\": 1}", 400, "JSON body"),
        ("GET", f"/s3/multipart/{upload_id}/1", {}, None, 400, "'key' is missing"),
        ("GET", f"/s3/multipart/{upload_id}/x", {"key": key}, None, 400, "'x' is not a positive integer"),
        ("GET", f"/s3/multipart/{upload_id}/10001", {"key": key}, None, 422, "outside S3's 1..10000"),
        ("GET", "/s3/multipart/other-upload/1", {"key": key}, None, 404, "is not the multipart upload"),
        ("GET", f"/s3/multipart/{upload_id}/1", {"key": "avatar/no/such.png"}, None, 404, "no upload session"),
        ("POST", f"/s3/multipart/{upload_id}/complete", {"key": key}, b"{\"parts\": []}", 422, "pass parts="),
        ("POST", f"/s3/multipart/{upload_id}/complete", {"key": key},
         b"{\"parts\": [{\"PartNumber\": 1, \"ETag\": \"\"}]}", 422, "is not the ETag"),
        ("PUT", "/s3/params", {}, None, 405, "method PUT is not allowed"),
        ("GET", "/s3/elsewhere", {}, None, 404, "no Companion route"),
    ]
    for method, path, query, body, status, message in cases:
        response = await client.request(method, path, params=query, content=body)
        assert response.status_code == status, (method, path, response.text)
        assert message in response.json()["error"], (method, path, response.text)
    too_big = await client.post("/s3/multipart", content=b" " * (3 * MiB))
    assert too_big.status_code == 413, too_big.text
    refused = await client.get("/s3/params", params={"filename": "a.png", "type": "image/png"},
                               headers={"X-User": ""})
    assert refused.status_code == 403
    assert (await rindle.get_upload(created["session_id"])).state == "signed"  # nothing above touched it


def test_the_routes_refuse_a_profile_on_local_storage(make_rindle, local_storage):
    rindle = Rindle(database_url="postgresql://unused", storages={"media": local_storage},
                    profiles=[avatar_profile("media")])
    with pytest.raises(ConfigurationError, match="has no POST policies or multipart uploads"):
        companion_routes(rindle, profile="avatar", authorize=authorize)
    with pytest.raises(ConfigurationError, match="has no POST policies or multipart uploads"):
        add_companion_routes(web.Application(), rindle, profile="avatar", authorize=authorize)


@pytest.fixture
async def seaweed_rindle(make_rindle, seaweedfs) -> Rindle:  # noqa: F811
    storage = S3Storage(bucket=f"rindle-{uuid.uuid4().hex[:12]}", endpoint_url=seaweedfs.endpoint,
                        path_style=True, access_key_id=seaweedfs.access_key,
                        secret_access_key=seaweedfs.secret_key)
    async with storage:
        await storage.client.create_bucket(Bucket=storage.bucket)
    return await make_rindle(relay=False, storages={"media": GuardedStorage(storage)},
                             profiles=[avatar_profile("media", max_bytes=4096)])


async def test_seaweedfs_enforces_the_policy_of_s3_params(framework, seaweed_rindle, listener):
    async with SERVERS[framework](seaweed_rindle, listener):
        base_url = "http://127.0.0.1:%d" % listener.getsockname()[1]
        async with httpx.AsyncClient(base_url=base_url, headers={"X-User": "ann"}, timeout=15) as client:
            answer = (await client.get("/s3/params", params={"filename": "me.png", "type": "image/png"})).json()
    body = png()
    assert len(body) < 4096
    async with httpx.AsyncClient(timeout=15) as s3:
        async def post(fields, data):
            return await s3.post(answer["url"], data=fields, files={"file": ("me.png", data)})

        oversize = await post(answer["fields"], body + bytes(5000))
        assert oversize.status_code == 400 and "EntityTooLarge" in oversize.text
        retyped = await post({**answer["fields"], "Content-Type": "image/jpeg"}, body)
        assert retyped.status_code == 403 and "Policy Condition failed" in retyped.text
        stored = await post(answer["fields"], body)
        assert stored.status_code in (200, 204), stored.text
    asset = await seaweed_rindle.verify_upload(answer["session_id"])
    assert (asset.state, asset.byte_size) == ("validating", len(body))


async def test_only_the_owner_who_started_an_upload_can_go_on_with_it(client, rindle):
    created = (await client.post("/s3/multipart", json={"filename": "a.png", "type": "image/png"})).json()
    session = await rindle.get_upload(created["session_id"])
    assert session.owner == "ann"
    other = {"X-User": "bob"}
    key, upload_id = created["key"], created["uploadId"]
    for method, path, body in (("GET", f"/s3/multipart/{upload_id}/1", None),
                               ("GET", f"/s3/multipart/{upload_id}", None),
                               ("POST", f"/s3/multipart/{upload_id}/complete", b'{"parts": []}'),
                               ("DELETE", f"/s3/multipart/{upload_id}", None)):
        response = await client.request(method, path, params={"key": key}, content=body, headers=other)
        assert response.status_code == 403, (method, path, response.text)
        assert "started by another owner" in response.json()["error"]
    assert (await rindle.get_upload(created["session_id"])).state == "signed"
    params = (await client.get("/s3/params", params={"filename": "b.png", "type": "image/png"})).json()
    assert (await rindle.get_upload(params["session_id"])).owner == "ann"
