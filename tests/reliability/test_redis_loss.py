"""Redis lost under a busy worker: killed and restarted empty, or flushed.  The worker
stays up, every upload ends ready, and no variant is stored twice."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time

import pytest
import redis.asyncio as redis_asyncio

from ..media import jpeg
from ..servers import WorkerProcess
from .outcomes import all_ready, logs, one_object_per_variant


@pytest.fixture
def host_env(host_env, private_redis, monkeypatch):
    """The host app and its workers on a Redis of the test's own, which it may kill."""
    monkeypatch.setenv("T_REDIS_URL", private_redis.url)
    return {**host_env, "T_REDIS_URL": private_redis.url}


@pytest.fixture
def worker(host_env, tmp_path):
    process = WorkerProcess(host_env, tmp_path / "worker.log")
    process.start(T_SLOW_VARIANT_PUT="3")  # a render is storing its first variant when Redis goes
    yield process
    process.stop()


async def busy(host, tmp_path, count: int = 4) -> list[str]:
    marker = pathlib.Path(os.environ["T_ROOT"]) / ".first-variant-put"
    ids = [(await host.upload("photos", jpeg(300, 200), filename=f"{i}.jpg")).id for i in range(count)]
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, logs(tmp_path)
        await asyncio.sleep(0.05)
    return ids


async def test_a_worker_rides_out_redis_killed_and_restarted_empty(host, worker, private_redis,
                                                                  tmp_path):
    ids = await busy(host, tmp_path)
    private_redis.kill()  # everything in Redis is gone: queued jobs, leases, results
    await asyncio.sleep(4)
    assert worker.process.poll() is None, logs(tmp_path)
    private_redis.start()  # same port, empty

    await all_ready(host, ids, 60, tmp_path)
    assert worker.process.poll() is None, logs(tmp_path)
    log = (tmp_path / "worker.log").read_text()
    assert "waiting for Redis" in log
    assert "Redis came back without its data" in log
    await one_object_per_variant(host, "local")
    assert await host.runtime.pool.fetchval(f"SELECT count(*) FROM {host.schema}.jobs") == 0


async def test_flushall_under_a_busy_worker_loses_nothing(host, worker, private_redis, tmp_path):
    ids = await busy(host, tmp_path)
    client = redis_asyncio.from_url(private_redis.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()

    await all_ready(host, ids, 60, tmp_path)
    assert worker.process.poll() is None, logs(tmp_path)
    assert "Redis came back without its data" in (tmp_path / "worker.log").read_text()
    await one_object_per_variant(host, "local")
    runs = await host.runtime.pool.fetch(
        f"SELECT job_id, count(*) FILTER (WHERE outcome = 'succeeded') AS done,"
        f" count(*) FILTER (WHERE outcome = 'running') AS running"
        f" FROM {host.schema}.processing_runs GROUP BY job_id")
    assert all(r["done"] == 1 and r["running"] == 0 for r in runs), [tuple(r) for r in runs]
