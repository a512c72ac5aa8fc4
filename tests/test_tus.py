"""tus 1.0 uploads (contrib/tus.py over uploads/resumable.py) with real clients over real HTTP.

tuspy (PyPI) uploads into both frameworks and both stores, resuming after a dropped
connection, after the server process restarts, and from a second client process.  The
refusals are asserted by status and by the rows they leave.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio.to_thread
import httpx
import pytest
import pyvips
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import Mount
from tusclient.client import TusClient

from rindle_async import Asset, OffsetMismatch, Rindle
from rindle_async.contrib.aiohttp import add_tus_routes
from rindle_async.contrib.starlette import tus_routes

from .conftest import drain
from .media import jpeg, png
from .servers import TESTS, free_port

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress: about width * height * 3 bytes."""
    noise = pyvips.Image.gaussnoise(width, height, sigma=80, mean=128).cast("uchar")
    return noise.bandjoin([noise.rot180(), noise.flip("horizontal")]).pngsave_buffer(compression=0)


# -- the host app as its own process ----------------------------------------------------------

class TusProcess:
    """tests/tusapp.py serving tus at /files/ on a port of its own; restartable."""

    def __init__(self, env: dict[str, str], log) -> None:
        self.port, self.log = free_port(), log
        self.env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
        self.url = f"http://127.0.0.1:{self.port}/files/"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(TESTS / "tusapp.py"), str(self.port)],
                                        env=self.env, cwd=TESTS, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"tusapp exited with {self.process.returncode}"
            try:
                if httpx.options(self.url, timeout=1).status_code == 204:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("tusapp did not answer within 30 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


STORES = {"local": ("photos", 130 * 1024, 400), "s3": ("uploads", 2 * 1024 * 1024, 1500)}


@pytest.fixture(params=[("starlette", "local"), ("aiohttp", "s3"), ("aiohttp", "local"), ("starlette", "s3")],
                ids="-".join)
def setup(request) -> tuple[str, str]:
    return request.param


@pytest.fixture
async def tus_host(setup, host_env, monkeypatch, s3_endpoint, s3_bucket, db
                   ) -> AsyncIterator[tuple[Rindle, dict[str, str]]]:
    """The host's Rindle in this process (for the rows and the worker) and the app's environment."""
    from . import hostapp

    framework, store = setup
    env = {**host_env, "T_FRAMEWORK": framework, "T_PROFILE": STORES[store][0]}
    if store == "s3":
        env.update(T_S3=s3_endpoint, T_BUCKET=s3_bucket)
        monkeypatch.setenv("T_S3", s3_endpoint)
        monkeypatch.setenv("T_BUCKET", s3_bucket)
    rindle = hostapp.build()
    await rindle.open()
    await rindle.migrate()
    yield rindle, env
    await rindle.close()


def drop_connection(url: str, offset: int, data: bytes, sent: int) -> None:
    """A PATCH that sends ``sent`` bytes of ``data`` and then loses its connection."""

    def body() -> Iterator[bytes]:
        yield data[:sent]
        time.sleep(0.5)  # the server reads what was sent
        raise ConnectionAbortedError("the client's network went away")

    with pytest.raises((httpx.TransportError, ConnectionAbortedError)):
        httpx.patch(url, content=body(), timeout=10, headers={
            **OCTETS, "X-User": "ann", "Upload-Offset": str(offset), "Content-Length": str(len(data))})


RESUME = """
import sys
from tusclient.client import TusClient
url, path, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = TusClient(url.rsplit("/", 1)[0] + "/", headers={"X-User": "ann"})
client.uploader(file_path=path, url=url, chunk_size=chunk).upload()
"""


async def test_tuspy_resumes_after_drop_restart_and_in_another_process(tus_host, setup, tmp_path, redis_url):
    rindle, env = tus_host
    profile, chunk, side = STORES[setup[1]]
    data = noise_png(side, side)  # local: ~470 KB; S3: ~6.7 MB, two 5 MiB parts
    path = tmp_path / "big.png"
    path.write_bytes(data)
    server = TusProcess(env, (tmp_path / "tusapp.log").open("ab"))
    server.start()
    try:
        started = time.monotonic()
        uploader = TusClient(server.url, headers={"X-User": "ann"}).uploader(
            file_path=str(path), chunk_size=chunk, metadata={"filename": "big.png", "filetype": "image/png"})
        await anyio.to_thread.run_sync(lambda: uploader.upload(stop_at=chunk))
        url, session_id = uploader.url, uploader.url.rsplit("/", 1)[1]
        assert uploader.offset == chunk

        # the connection drops mid-PATCH: what arrived is kept (on S3 across a part boundary)
        sent = 2 * chunk if setup[1] == "local" else 4 * 1024 * 1024
        await anyio.to_thread.run_sync(drop_connection, url, chunk, data[chunk:], sent)
        head = httpx.head(url, headers={**TUS, "X-User": "ann"})
        assert (head.status_code, head.headers["upload-offset"]) == (200, str(chunk + sent))

        server.stop()  # a restarted server derives the offset from the stored bytes
        server.start()
        head = httpx.head(url, headers={**TUS, "X-User": "ann"})
        assert head.headers["upload-offset"] == str(chunk + sent)
        assert head.headers["upload-length"] == str(len(data))

        resumed = subprocess.run([sys.executable, "-c", RESUME, url, str(path), str(chunk)],
                                 capture_output=True, text=True, timeout=60)
        assert resumed.returncode == 0, resumed.stderr
        head = httpx.head(url, headers={**TUS, "X-User": "ann"})
        assert head.headers["upload-offset"] == str(len(data))
        asset_id = head.headers["rindle-asset-id"]
    finally:
        server.stop()
    attachment = await rindle.attachment("user", "ann", "tus")
    assert attachment is not None and attachment.asset_id == asset_id  # on_complete attached it
    session = await rindle.runtime.pool.fetchrow(
        f"SELECT state, strategy, asset_id::text FROM {rindle.schema}.upload_sessions WHERE id = $1::uuid",
        session_id)
    assert tuple(session) == ("completed", "tus", asset_id)
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(asset_id)
    assert (asset.state, asset.content_type, asset.byte_size) == ("ready", "image/png", len(data))
    storage = rindle.storages["local" if setup[1] == "local" else "s3"]
    key = await _original_key(rindle, asset_id)
    stored = b"".join([chunk async for chunk in storage.get(key)])
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    left = [info.key async for info in storage.list(key.rsplit("/", 1)[0] + "/")]
    assert not [name for name in left if "/tus." in name], left  # no partial file or tail remains
    print(f"\n{setup}: {len(data)} bytes, upload start -> ready in {time.monotonic() - started:.1f} s "
          "(with a dropped connection, a server restart and a second client)")


async def _original_key(rindle: Rindle, asset_id: str) -> str:
    return await rindle.runtime.pool.fetchval(
        f"SELECT storage_key FROM {rindle.schema}.assets WHERE id = $1::uuid", asset_id)


# -- refusals, on both frameworks in this process ---------------------------------------------

@asynccontextmanager
async def serve(framework: str, rindle: Rindle, completed: list) -> AsyncIterator[str]:
    async def user(request) -> str | None:
        return request.headers.get("x-user")

    async def on_complete(asset: Asset, owner: str | None) -> None:
        completed.append((asset, owner))

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = "http://127.0.0.1:%d/files/" % sock.getsockname()[1]
    options = {"profile": "avatar", "authorize": user, "on_complete": on_complete}
    if framework == "starlette":
        app = Starlette(routes=[Mount("/files", app=tus_routes(rindle, **options))])
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            yield url
        finally:
            server.should_exit = True
            await task
    else:
        application = web.Application()
        add_tus_routes(application, rindle, **options)
        runner = web.AppRunner(application)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        try:
            yield url
        finally:
            await runner.cleanup()
    sock.close()


def sha1(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


def metadata(filename: str, filetype: str) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}"
                    for key, value in (("filename", filename), ("filetype", filetype)))


async def rows(rindle: Rindle, session_id: str) -> tuple[str, str]:
    row = await rindle.runtime.pool.fetchrow(
        f"SELECT s.state, a.state AS asset_state FROM {rindle.schema}.upload_sessions s"
        f" JOIN {rindle.schema}.assets a ON a.id = s.asset_id WHERE s.id = $1::uuid", session_id)
    return row["state"], row["asset_state"]


@pytest.mark.parametrize(("framework", "store"), [("starlette", "local"), ("aiohttp", "local"),
                                                   ("starlette", "s3"), ("aiohttp", "s3")])
async def test_refusals_leave_consistent_rows(framework, store, media_rindle, s3_storage):
    rindle = await media_rindle(s3_storage if store == "s3" else None, max_bytes=64 * 1024)
    image = png(40, 30)
    completed: list = []
    async with serve(framework, rindle, completed) as url, httpx.AsyncClient(
            headers={"X-User": "ann"}, timeout=10) as client:
        options = await client.options(url)
        assert options.status_code == 204
        assert options.headers["tus-version"] == "1.0.0"
        assert options.headers["tus-max-size"] == str(64 * 1024)
        assert set(options.headers["tus-extension"].split(",")) == {
            "creation", "creation-with-upload", "termination", "expiration", "checksum"}
        assert "sha1" in options.headers["tus-checksum-algorithm"]

        async def create(length: int = len(image), filetype: str = "image/png", content: bytes = b"",
                         **headers) -> httpx.Response:
            return await client.post(url, content=content, headers={**TUS, "Upload-Length": str(length),
                                                   "Upload-Metadata": metadata("me.png", filetype), **headers})

        assert (await client.post(url, headers={"Upload-Length": "10"})).status_code == 412
        assert (await create(64 * 1024 + 1)).status_code == 413
        assert (await create(filetype="application/pdf")).status_code == 400
        deferred = await client.post(url, headers={**TUS, "Upload-Defer-Length": "1",
                                                   "Upload-Metadata": metadata("me.png", "image/png")})
        assert deferred.status_code == 400 and "Upload-Defer-Length" in deferred.json()["error"]
        untyped = await client.post(url, headers={**TUS, "Upload-Length": "10"})
        assert untyped.status_code == 400 and "filetype" in untyped.json()["error"]
        assert (await create(**{"X-User": ""})).status_code == 403
        count = f"SELECT count(*) FROM {rindle.schema}.upload_sessions"
        assert await rindle.runtime.pool.fetchval(count) == 0  # refused creations leave nothing

        created = await create()
        assert created.status_code == 201 and "upload-expires" in created.headers
        upload = url + created.headers["location"].rsplit("/", 1)[1]
        session_id = upload.rsplit("/", 1)[1]
        half = len(image) // 2
        assert (await client.head(upload, headers={**TUS, "X-User": "bob"})).status_code == 404
        head = await client.head(upload, headers=TUS)
        assert (head.headers["upload-offset"], head.headers["upload-length"]) == ("0", str(len(image)))
        assert head.headers["upload-metadata"] == metadata("me.png", "image/png")
        assert head.headers["cache-control"] == "no-store"
        assert (await client.patch(upload, content=image, headers={
            **TUS, "Upload-Offset": "0", "Content-Type": "image/png"})).status_code == 415
        assert (await client.patch(upload, content=image[5:], headers={**OCTETS, "Upload-Offset": "5"})
                ).status_code == 409
        mismatch = await client.patch(upload, content=image[:half], headers={
            **OCTETS, "Upload-Offset": "0", "Upload-Checksum": sha1(b"other bytes")})
        assert mismatch.status_code == 460, mismatch.text
        head = await client.head(upload, headers=TUS)
        assert head.headers["upload-offset"] == "0"  # neither the 409 nor the 460 stored anything
        assert await rows(rindle, session_id) == ("signed", "staged")

        first = await client.patch(upload, content=image[:half], headers={
            **OCTETS, "Upload-Offset": "0", "Upload-Checksum": sha1(image[:half])})
        assert (first.status_code, first.headers["upload-offset"]) == (204, str(half))
        assert await rows(rindle, session_id) == ("uploading", "staged")
        last = await client.patch(upload, content=image[half:], headers={**OCTETS, "Upload-Offset": str(half)})
        assert (last.status_code, last.headers["upload-offset"]) == (204, str(len(image)))
        asset_id = last.headers["rindle-asset-id"]
        assert [(asset.id, asset.state, owner) for asset, owner in completed] == [(asset_id, "validating", "ann")]
        assert await rows(rindle, session_id) == ("completed", "validating")
        assert (await client.patch(upload, content=b"x", headers={
            **OCTETS, "Upload-Offset": str(len(image))})).status_code == 410

        # creation-with-upload; then bytes of another type than declared fail at completion
        wrong = await create(content=jpeg(), filetype="image/png", **{
            "Content-Type": "application/offset+octet-stream"}, length=len(jpeg()))
        assert wrong.status_code == 422, wrong.text
        assert await rows(rindle, wrong.headers["location"].rsplit("/", 1)[1]) == ("failed", "quarantined")

        # termination
        doomed = url + (await create()).headers["location"].rsplit("/", 1)[1]
        assert (await client.delete(doomed, headers=TUS)).status_code == 204
        assert (await client.head(doomed, headers=TUS)).status_code == 410
        assert await rows(rindle, doomed.rsplit("/", 1)[1]) == ("aborted", "deleted")

        # expiration
        late = url + (await create()).headers["location"].rsplit("/", 1)[1]
        await rindle.runtime.pool.execute(
            f"UPDATE {rindle.schema}.upload_sessions SET expires_at = now() - interval '1 second'"
            " WHERE id = $1::uuid", late.rsplit("/", 1)[1])
        expired = await client.patch(late, content=image, headers={**OCTETS, "Upload-Offset": "0"})
        assert expired.status_code == 410 and "expired" in expired.text
        assert await rows(rindle, late.rsplit("/", 1)[1]) == ("expired", "deleted")
        assert (await client.head(url + "not-an-id", headers=TUS)).status_code == 404


# -- deadlines: abort-incomplete-uploads expires tus sessions like every other upload ----------

async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 256 * 1024):
        yield data[start:start + 256 * 1024]


@pytest.mark.parametrize("store", ["local", "s3"])
async def test_expired_tus_sessions_are_aborted_and_their_bytes_purged(store, media_rindle, s3_storage,
                                                                       redis_url):
    from rindle_async import maintenance

    rindle = await media_rindle(s3_storage if store == "s3" else None)
    storage = rindle.storages["media"]
    data = noise_png(1500, 1500) if store == "s3" else png(300, 200)
    sent = 6 * 1024 * 1024 if store == "s3" else len(data) // 2  # S3: one 5 MiB part and a tail
    upload = await rindle.create_resumable_upload("avatar", length=len(data), filename="big.png",
                                                  content_type="image/png")
    upload = await rindle.append_resumable_upload(upload.session_id, offset=0, chunks=_chunks(data[:sent]))
    assert upload.offset == sent and not upload.completed
    key = await rindle.runtime.pool.fetchval(
        f"SELECT storage_key FROM {rindle.schema}.upload_sessions WHERE id = $1::uuid", upload.session_id)
    prefix = key.rsplit("/", 1)[0] + "/"
    scratch = sorted([info.key.rsplit("/", 1)[1] async for info in storage.list(prefix)])
    assert scratch == (["tus.tail.2"] if store == "s3" else ["tus.partial"])
    swept = await maintenance.cleanup_orphans(rindle.runtime, dry_run=False, grace=timedelta(0))
    assert swept.counts.get("stray_objects", 0) == 0  # an open upload's partial bytes are not strays
    assert sorted([info.key.rsplit("/", 1)[1] async for info in storage.list(prefix)]) == scratch

    await rindle.runtime.pool.execute(
        f"UPDATE {rindle.schema}.upload_sessions SET expires_at = now() - interval '1 second'"
        " WHERE id = $1::uuid", upload.session_id)
    report = await maintenance.abort_incomplete_uploads(rindle.runtime)
    assert report.counts["sessions_expired"] == 1
    assert report.counts.get("multipart_aborted", 0) == (1 if store == "s3" else 0)
    await drain(rindle, redis_url)
    assert [info.key async for info in storage.list(prefix)] == []  # the purge took the partial bytes
    if store == "s3":
        assert [u async for u in storage.list_multipart(prefix)] == []
    assert await rindle.runtime.pool.fetchval(
        f"SELECT count(*) FROM {rindle.schema}.assets WHERE id = $1::uuid", upload.asset_id) == 0


async def test_a_partial_file_another_process_writes_is_not_written(media_rindle, local_storage):
    import fcntl

    from rindle_async.errors import UploadBusy

    rindle = await media_rindle()
    image = png(60, 40)
    upload = await rindle.create_resumable_upload("avatar", length=len(image), filename="me.png",
                                                  content_type="image/png")
    key = await rindle.runtime.pool.fetchval(
        f"SELECT storage_key FROM {rindle.schema}.upload_sessions WHERE id = $1::uuid", upload.session_id)
    partial = await local_storage.local_path(key.rsplit("/", 1)[0] + "/tus.partial")
    with open(partial, "ab") as other:  # what a request in another process holds while it writes
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(UploadBusy):
            await rindle.append_resumable_upload(upload.session_id, offset=0, chunks=_chunks(image))
        other.write(image[:10])  # that request stored 10 bytes meanwhile
    with pytest.raises(OffsetMismatch):  # the offset is derived from the file: those 10 bytes count
        await rindle.append_resumable_upload(upload.session_id, offset=0, chunks=_chunks(image))
    done = await rindle.append_resumable_upload(upload.session_id, offset=10, chunks=_chunks(image[10:]))
    assert done.completed and done.offset == len(image)
