"""S3 faults under a real worker: a fault-injecting proxy (``tests/faultproxy.py``) in front
of moto answers errors, delays, hangs past the client's timeout, resets connections, loses
answers to requests the store carried out, or stops answering at all for a few seconds.
Jobs retry with backoff, every upload ends ready, and after a live ``cleanup_orphans`` no
object is left that no row refers to, and no row refers to a missing object."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
import pytest

from rindle_async import StorageError, maintenance

from ..faultproxy import FaultProxy
from ..media import jpeg
from .outcomes import all_ready, logs, nothing_left_behind, one_object_per_variant, stored_keys

#: the S3 client's read timeout in the host app here, and its tries per call (one retry of
#: its own: a fault hitting a call twice reaches the job)
READ_TIMEOUT, ATTEMPTS = 2, 2
#: tries per job and the first backoff (doubling): about 25 s of retries, so a render outlives
#: the outage below
TRIES, BACKOFF = 8, 0.2


@pytest.fixture
def proxy(s3_endpoint):
    proxy = FaultProxy(s3_endpoint)
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture
def host_env(host_env, proxy, s3_bucket, monkeypatch):
    """The host app's S3 profiles ("uploads") on the proxy."""
    s3 = {"T_S3": proxy.url, "T_BUCKET": s3_bucket, "T_S3_TIMEOUT": str(READ_TIMEOUT),
          "T_S3_ATTEMPTS": str(ATTEMPTS), "T_TRIES": str(TRIES)}
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    return {**host_env, **s3}


async def attach_all(host, ids) -> None:
    for i, asset_id in enumerate(ids):
        await host.attach(asset_id, owner_type="user", owner_id=i, slot="photo")


async def retried(host, kind: str) -> list[str]:
    """The errors of the attempts of ``kind`` that failed and were retried."""
    return [r["error"] for r in await host.runtime.pool.fetch(
        f"SELECT error FROM {host.schema}.processing_runs WHERE kind = $1 AND outcome = 'retrying'",
        kind)]


async def pauses(host, kind: str) -> list[tuple[int, float]]:
    """(attempt, seconds from its end to the next attempt's start) for every retried ``kind``."""
    rows = await host.runtime.pool.fetch(
        f"SELECT attempt, extract(epoch FROM lead(started_at) OVER w - finished_at) AS pause"
        f" FROM {host.schema}.processing_runs WHERE kind = $1 WINDOW w AS"
        f" (PARTITION BY job_id ORDER BY attempt)", kind)
    return [(r["attempt"], float(r["pause"])) for r in rows if r["pause"] is not None]


async def no_orphans(host) -> maintenance.Report:
    """A live cleanup with no grace, then: every object has a row, every row its object."""
    report = await maintenance.cleanup_orphans(host.runtime, dry_run=False, grace=timedelta(0))
    referenced = {r["key"] for r in await host.runtime.pool.fetch(
        f"SELECT storage_key AS key FROM {host.schema}.assets WHERE state <> 'deleted'"
        f" UNION SELECT storage_key FROM {host.schema}.variants WHERE storage_key IS NOT NULL")}
    assert set(await stored_keys(host, "s3")) == referenced
    verified = await maintenance.verify_storage(host.runtime)
    assert not verified.counts.get("variants_missing") and not verified.counts.get("originals_missing"), \
        verified.counts
    await nothing_left_behind(host)
    await one_object_per_variant(host, "s3")
    return report


async def test_jobs_retry_through_errors_resets_and_hangs(host, proxy, workers, tmp_path):
    ids = [(await host.upload("uploads", jpeg(300, 200), filename=f"{i}.jpg")).id for i in range(3)]
    # one fault per asset, each hitting a call as often as the client tries it (a reset
    # connection is tried once more by aiohttp itself)
    proxy.inject("GET", rf"{ids[0]}/original\.", "reset", times=2 * ATTEMPTS)  # promotion's download
    proxy.inject("PUT", rf"{ids[1]}/variants/", "status", status=503, times=ATTEMPTS)
    proxy.inject("PUT", rf"{ids[2]}/variants/", "hang", times=1)  # past the client's read timeout
    proxy.inject("GET", rf"{ids[2]}/original\.", "delay", seconds=1.0, times=2)  # slow, within it
    worker = workers("worker")

    await all_ready(host, ids, 60, tmp_path)
    assert [len(proxy.hits(action)) for action in ("reset", "status", "hang", "delay")] == [
        2 * ATTEMPTS, ATTEMPTS, 1, 2]
    assert await retried(host, "promote_asset"), logs(tmp_path)  # the download failed twice
    assert await retried(host, "process_variant"), logs(tmp_path)  # a variant upload did
    await attach_all(host, ids)

    proxy.inject("DELETE", r"/variants/", "status", status=500, times=ATTEMPTS)
    await host.detach(owner_type="user", owner_id=0, slot="photo")  # its purge fails once
    deadline = time.monotonic() + 30
    while await host.runtime.pool.fetchval(f"SELECT count(*) FROM {host.schema}.assets WHERE id = $1", ids[0]):
        assert time.monotonic() < deadline, logs(tmp_path)
        await asyncio.sleep(0.1)
    assert await retried(host, "purge_storage"), logs(tmp_path)
    assert worker.process.poll() is None, logs(tmp_path)
    assert (await no_orphans(host)).counts.get("stray_objects") is None  # retries wrote the same keys


async def test_s3_unreachable_for_seconds_under_a_busy_worker(host, proxy, workers, tmp_path):
    proxy.inject("PUT", r"/variants/", "delay", seconds=0.5, times=100)  # renders are storing
    worker = workers("worker")
    ids = [(await host.upload("uploads", jpeg(300, 200), filename=f"{i}.jpg")).id for i in range(3)]
    deadline = time.monotonic() + 30
    while not proxy.hits("delay"):
        assert time.monotonic() < deadline, logs(tmp_path)
        await asyncio.sleep(0.05)
    proxy.stop()
    await asyncio.sleep(4)
    proxy.start()
    back = time.monotonic()

    ready = await all_ready(host, ids, 60, tmp_path)
    waits = await pauses(host, "process_variant")
    print(f"S3 unreachable for 4s -> every upload ready {ready - back:.1f}s after it came back;"
          f" {len(waits)} render attempt(s) retried")  # RELIABILITY.md reports it (pytest -s)
    assert waits, logs(tmp_path)
    for attempt, pause in waits:  # exponential backoff: the pause doubles with each attempt
        assert pause >= BACKOFF * 2 ** (attempt - 1) - 0.05, waits
    assert worker.process.poll() is None, logs(tmp_path)
    await attach_all(host, ids)
    await no_orphans(host)


async def test_direct_and_proxied_uploads_through_faults(host, proxy, workers, tmp_path):
    workers("worker")
    data = jpeg(300, 200)
    proxy.inject("PUT", r"/upload\.", "reset", times=1)  # the client's upload
    proxy.inject("HEAD", r"/upload\.", "status", status=503, times=ATTEMPTS)  # verify_upload
    proxy.inject("DELETE", r"/upload\.", "status", status=500, times=ATTEMPTS)  # after promotion
    ticket = await host.initiate_upload("uploads", filename="direct.jpg", content_type="image/jpeg",
                                        byte_size=len(data))
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError):
            await client.request(ticket.method, ticket.url, headers=ticket.headers, content=data)
        sent = await client.request(ticket.method, ticket.url, headers=ticket.headers, content=data)
        assert sent.status_code == 200
    with pytest.raises(StorageError, match="S3 head of"):
        await host.verify_upload(ticket.session_id)
    direct = await host.verify_upload(ticket.session_id)  # the session stayed open for a retry
    await all_ready(host, [direct.id], 60, tmp_path)

    # the store keeps the object but its answer is lost, on every retry of the client's too
    proxy.inject("PUT", r"/original\.", "drop_response", times=2 * ATTEMPTS)
    with pytest.raises(StorageError, match="S3 put of"):
        await host.upload("uploads", data, filename="proxied.jpg")
    proxied = await host.upload("uploads", data, filename="proxied.jpg")
    await all_ready(host, [proxied.id], 60, tmp_path)
    await attach_all(host, [direct.id, proxied.id])

    report = await no_orphans(host)
    # the upload key whose delete failed after promotion, and the object of the lost answer
    assert report.counts.get("stray_objects") == 2, report.items
