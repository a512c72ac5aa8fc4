"""The whole lifecycle with the real ``arq`` command in a subprocess: direct upload
on S3 (moto) and proxied upload on local storage to ready variants checked with
pyvips, refusals (spoofed type, decompression bomb, truncated file), purge after
replace and detach (a worker killed mid-render: tests/reliability/test_worker_death.py)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time
import zlib

import httpx
import pytest
import pyvips

from . import hostapp
from .media import jpeg, png, stored_files
from .servers import WorkerProcess

TESTS = pathlib.Path(__file__).resolve().parent


@pytest.fixture
def host_env(host_env, s3_endpoint, s3_bucket, monkeypatch):
    """The host app with its S3 profiles too."""
    extra = {"T_S3": s3_endpoint, "T_BUCKET": s3_bucket}
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    return {**host_env, **extra}


@pytest.fixture
def worker(host_env, tmp_path):
    process = WorkerProcess(host_env, tmp_path / "worker.log")
    yield process
    process.stop()


async def wait_for_state(rindle, asset_id, states, timeout=60.0, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        asset = await rindle.get_asset(asset_id)
        if asset.state in states and all(v.state in ("ready", "failed") for v in asset.variants.values()):
            return asset
        await asyncio.sleep(0.1)
    raise AssertionError(f"asset {asset_id} is {asset.state}, wanted {states}"
                         + (f"\nworker log:\n{log.read_text()}" if log and log.exists() else ""))


async def read_object(rindle, asset_id, variant=None) -> bytes:
    row = await rindle.runtime.pool.fetchrow(
        f"SELECT a.storage, coalesce(v.storage_key, a.storage_key) AS key FROM {rindle.schema}.assets a"
        f" LEFT JOIN {rindle.schema}.variants v ON v.asset_id = a.id AND v.name = $2"
        f" WHERE a.id = $1::uuid", asset_id, variant)
    storage = rindle.storages[row["storage"]]
    return b"".join([chunk async for chunk in storage.get(row["key"])])


def check_outputs(images: dict[str, bytes], source_size: tuple[int, int]) -> None:
    """Open every rendered variant with pyvips: the dimensions and formats the recipes ask for."""
    opened = {name: pyvips.Image.new_from_buffer(data, "") for name, data in images.items()}
    loaders = {name: image.get("vips-loader") for name, image in opened.items()}
    assert loaders == {"thumb": "webpload_buffer", "large": "jpegload_buffer",
                       "square": "pngload_buffer", "tiny": "heifload_buffer"}
    assert (opened["thumb"].width, opened["thumb"].height) == (64, 64)
    w, h = source_size
    assert (opened["large"].width, opened["large"].height) == (200, round(200 * h / w))
    assert (opened["square"].width, opened["square"].height) == (100, 100)
    assert (opened["tiny"].width, opened["tiny"].height) == (40, 30)


async def test_direct_upload_on_s3_and_proxied_upload_on_local_reach_ready(host, worker, tmp_path):
    worker.start()
    body = jpeg(400, 300)
    ticket = await host.initiate_upload("uploads", filename="trip.jpg", content_type="image/jpeg",
                                        byte_size=len(body))
    async with httpx.AsyncClient() as client:
        response = await client.put(ticket.url, headers=ticket.headers, content=body)
    assert response.status_code == 200
    direct = await host.verify_upload(ticket.session_id)
    proxied = await host.upload("photos", png(300, 400), filename="portrait.png")
    log = tmp_path / "worker.log"
    direct = await wait_for_state(host, direct.id, {"ready"}, log=log)
    proxied = await wait_for_state(host, proxied.id, {"ready"}, log=log)
    assert (direct.width, direct.height, direct.content_type) == (400, 300, "image/jpeg")
    assert (proxied.width, proxied.height, proxied.content_type) == (300, 400, "image/png")
    for asset, size in ((direct, (400, 300)), (proxied, (300, 400))):
        assert {v.state for v in asset.variants.values()} == {"ready"}
        check_outputs({name: await read_object(host, asset.id, name) for name in asset.variants}, size)
        assert asset.variants["thumb"].content_type == "image/webp"
    # the ticket's URL is still valid, but the checked bytes live where no client can write
    original = await read_object(host, direct.id)
    async with httpx.AsyncClient() as client:
        response = await client.put(ticket.url, headers=ticket.headers, content=png(400, 300))
    assert await read_object(host, direct.id) == original == body
    runs = await host.runtime.pool.fetch(f"SELECT kind, outcome FROM {host.schema}.processing_runs")
    assert {(r["kind"], r["outcome"]) for r in runs} == {("promote_asset", "succeeded"),
                                                         ("process_variant", "succeeded")}
    assert len(runs) == 2 * (1 + 1)  # per asset: its promotion, and one render of all variants
    assert await host.runtime.pool.fetchval(f"SELECT count(*) FROM {host.schema}.jobs") == 0


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A small PNG whose header declares width x height (the rows are never all there)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" + bytes(width) * 1, 9)  # one row of a grey image
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


async def test_refusals_spoofed_type_bomb_and_truncated_file(host, worker, tmp_path):
    worker.start()
    log = tmp_path / "worker.log"
    # PNG bytes declared as JPEG under a JPEG-only profile, uploaded straight to S3
    spoof = png(50, 50)
    ticket = await host.initiate_upload("jpegonly", filename="cat.jpg", content_type="image/jpeg",
                                        byte_size=len(spoof))
    async with httpx.AsyncClient() as client:
        await client.put(ticket.url, headers=ticket.headers, content=spoof)
    spoofed = await host.verify_upload(ticket.session_id)
    bomb = await host.upload("photos", bomb_png(), filename="bomb.png")
    whole = jpeg(800, 600)
    truncated = await host.upload("photos", whole[: len(whole) * 2 // 3], filename="cut.jpg")

    spoofed = await wait_for_state(host, spoofed.id, {"quarantined"}, log=log)
    assert spoofed.reason == ("the bytes are image/png, which profile 'jpegonly' does not allow "
                              "(allowed: image/jpeg)")
    assert spoofed.variants == {}
    bomb = await wait_for_state(host, bomb.id, {"quarantined"}, log=log)
    assert bomb.reason.startswith("the image declares 30000x30000 = 900000000 pixels, over the "
                                  "profile's max_pixels of 50000000; it was not decoded")
    assert bomb.variants == {}
    truncated = await wait_for_state(host, truncated.id, {"degraded"}, log=log)
    assert {v.state for v in truncated.variants.values()} == {"failed"}
    assert all("libvips" in v.reason for v in truncated.variants.values())
    runs = await host.runtime.pool.fetch(
        f"SELECT attempt, outcome, error FROM {host.schema}.processing_runs"
        f" WHERE asset_id = $1::uuid AND kind = 'process_variant'", truncated.id)
    # one render job for the asset's four variants, refused at its first try (not retryable)
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "failed")]
    assert runs[0]["error"].startswith("ImageRefused: ")
    discarded = await host.runtime.pool.fetchval(
        f"SELECT count(*) FROM {host.schema}.jobs WHERE status = 'discarded'")
    assert discarded == 1


async def test_replace_and_detach_purge_the_objects(host, worker, tmp_path):
    worker.start()
    log = tmp_path / "worker.log"
    first = await wait_for_state(host, (await host.upload("photos", jpeg(), filename="a.jpg")).id,
                                 {"ready"}, log=log)
    second = await wait_for_state(host, (await host.upload("photos", png(), filename="b.png")).id,
                                  {"ready"}, log=log)
    root = pathlib.Path(os.environ["T_ROOT"])

    def objects(asset_id: str) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in stored_files(root) if asset_id in str(p))

    assert len(objects(first.id)) == 5 and len(objects(second.id)) == 5
    async def purged(asset_id: str) -> bool:
        """The purge deletes the objects first and drops the rows once storage confirmed."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = await host.runtime.pool.fetchval(
                f"SELECT count(*) FROM {host.schema}.assets WHERE id = $1::uuid", asset_id)
            if rows == 0:
                return objects(asset_id) == []
            await asyncio.sleep(0.1)
        return False

    await host.attach(first.id, owner_type="user", owner_id="1", slot="avatar")
    await host.attach(second.id, owner_type="user", owner_id="1", slot="avatar")  # replaces first
    assert await purged(first.id), objects(first.id)
    assert len(objects(second.id)) == 5
    await host.detach(owner_type="user", owner_id="1", slot="avatar")
    assert await purged(second.id), objects(second.id)
    assert await host.runtime.pool.fetchval(f"SELECT count(*) FROM {host.schema}.assets") == 0
