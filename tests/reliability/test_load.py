"""Load: 200 uploads at once (half direct to S3, half proxied to local storage) through a
host pool of 10 database connections, with two real workers on the machine's two cores.

Every upload completes and ends ready; the pool never runs dry (asyncpg would raise on
acquire) and nothing deadlocks.  ``pytest -s`` prints the latencies and peak memory.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest

from ..media import jpeg
from ..servers import WorkerProcess, children, peak_rss_mb
from .outcomes import all_ready

UPLOADS = 200


@pytest.fixture
def host_env(host_env, s3_endpoint, s3_bucket, monkeypatch):
    extra = {"T_S3": s3_endpoint, "T_BUCKET": s3_bucket, "T_TIMEOUT": "120"}
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    return {**host_env, **extra}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_200_concurrent_uploads_through_a_pool_of_10_connections(host, host_env, tmp_path):
    assert host.config.pool_size == 10
    workers = [WorkerProcess(host_env, tmp_path / f"worker-{i}.log") for i in range(2)]
    for worker in workers:
        worker.start()
    timings: dict[str, list[float]] = {"initiate_upload": [], "verify_upload": [], "upload": []}

    async def timed(name: str, call):
        started = time.perf_counter()
        result = await call
        timings[name].append(time.perf_counter() - started)
        return result

    async def direct(n: int, client: httpx.AsyncClient) -> str:
        data = jpeg(64 + n % 5, 48)
        ticket = await timed("initiate_upload", host.initiate_upload(
            "uploads", filename=f"{n}.jpg", content_type="image/jpeg", byte_size=len(data)))
        (await client.request(ticket.method, ticket.url, headers=ticket.headers, content=data)
         ).raise_for_status()
        return (await timed("verify_upload", host.verify_upload(ticket.session_id))).id

    async def proxied(n: int) -> str:
        return (await timed("upload", host.upload("photos", jpeg(64 + n % 5, 48),
                                                  filename=f"{n}.jpg"))).id

    try:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=60) as client:
            ids = await asyncio.gather(*(direct(n, client) if n % 2 else proxied(n)
                                         for n in range(UPLOADS)))
        accepted = time.monotonic() - started
        ready_at = await all_ready(host, list(ids), 240, tmp_path)
        peaks = [peak_rss_mb(w.process.pid) for w in workers]
        peaks += [peak_rss_mb(pid) for w in workers for pid in children(w.process.pid)]
    finally:
        for worker in workers:
            worker.stop()

    assert len(set(ids)) == UPLOADS
    assert await host.runtime.pool.fetchval(f"SELECT count(*) FROM {host.schema}.jobs") == 0
    assert max(peaks) < 256, peaks
    print(f"\nload: {UPLOADS} uploads accepted in {accepted:.1f}s, all ready {ready_at - started:.1f}s "
          f"after the first; peak RSS of a worker or render process {max(peaks):.0f} MB")
    for name, samples in timings.items():
        print(f"  {name}: p50 {1000 * statistics.median(samples):.0f} ms, "
              f"p99 {1000 * percentile(samples, 0.99):.0f} ms over {len(samples)}")
