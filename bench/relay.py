"""Ledger relay benchmark: commit -> arq latency and relay throughput.

Each figure is printed beside a baseline measured in the same run: a bare
``enqueue_job`` call (no database) for latency, sequential ``enqueue_job`` calls
for throughput.  Run:  .venv/bin/python bench/relay.py  [--samples N] [--jobs N]

Uses RINDLE_TEST_DATABASE_URL / RINDLE_TEST_REDIS_URL like the tests (defaults:
the local PostgreSQL and Redis db 15).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import asyncpg
import redis.asyncio as redis_asyncio
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from redis.asyncio import ConnectionPool

from rindle_async import JobKind, Rindle

DATABASE_URL = os.environ.get("RINDLE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RINDLE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


async def noop(job):
    return None


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.95) - 1]


async def latency(writer: Rindle, redis, samples: int) -> list[float]:
    """Seconds from the commit returning to the job key existing in Redis."""
    out = []
    for _ in range(samples):
        async with writer.db.transaction() as uow:
            job_id = await uow.stage("noop", {})
        started = time.perf_counter()
        key = job_key_prefix + writer.ledger.job_id(job_id)
        while not await redis.exists(key):
            await asyncio.sleep(0)
        out.append(time.perf_counter() - started)
    return out


async def baseline_latency(arq: ArqRedis, redis, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        job_id = uuid.uuid4().hex
        started = time.perf_counter()
        await arq.enqueue_job("noop", 0, _job_id=job_id, _queue_name="bench-baseline")
        while not await redis.exists(job_key_prefix + job_id):
            await asyncio.sleep(0)
        out.append(time.perf_counter() - started)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=5000)
    args = parser.parse_args()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    redis = redis_asyncio.from_url(REDIS_URL)
    await redis.flushdb()
    arq = ArqRedis(ConnectionPool.from_url(REDIS_URL))
    kind = JobKind(name="noop", handler=noop)
    common = dict(database_url=DATABASE_URL, redis_url=REDIS_URL, schema=schema, jobs=[kind],
                  queue=f"q-{schema}")
    results: dict[str, tuple[float, float]] = {}
    try:
        results["bare enqueue_job (baseline)"] = summary(await baseline_latency(arq, redis, args.samples))

        async with Rindle(**common, relay_listen=False, relay_interval=3600) as local:
            await local.migrate()
            results["same process, commit wakes relay"] = summary(await latency(local, redis, args.samples))

        async with Rindle(**common, relay=False) as writer, \
                Rindle(**common, relay_interval=3600) as _listener:
            await asyncio.sleep(0.2)
            results["other process, NOTIFY"] = summary(await latency(writer, redis, args.samples))

        async with Rindle(**common, relay=False) as writer, \
                Rindle(**common, relay_listen=False, relay_interval=0.5) as _sweeper:
            results["NOTIFY missed, sweep every 0.5 s"] = summary(
                await latency(writer, redis, max(20, args.samples // 10)))

        base = results["bare enqueue_job (baseline)"][0]
        print(f"commit -> job in Redis, {args.samples} samples (median / p95, ratio of medians to baseline)")
        for name, (median, p95) in results.items():
            print(f"  {name:<36} {median * 1000:8.2f} ms / {p95 * 1000:8.2f} ms   x{median / base:7.1f}")

        # throughput: one flush of N staged rows vs N sequential enqueue_job calls
        started = time.perf_counter()
        for i in range(args.jobs):
            await arq.enqueue_job("noop", i, _job_id=f"base-{i}", _queue_name="bench-baseline-2")
        base_rate = args.jobs / (time.perf_counter() - started)
        async with Rindle(**common, relay=False) as rindle:
            async with rindle.db.transaction() as uow:
                await uow.conn.executemany(
                    f"INSERT INTO {schema}.jobs (kind, queue, max_tries) VALUES ('noop', $1, 3)",
                    [(f"q-{schema}",)] * args.jobs)
            started = time.perf_counter()
            sent = await rindle.flush_jobs()
            rate = sent / (time.perf_counter() - started)
            started = time.perf_counter()
            await redis.flushdb()
            resent = await rindle.reconcile_jobs()
            re_rate = resent / (time.perf_counter() - started)
        print(f"throughput, {args.jobs} jobs")
        print(f"  {'sequential enqueue_job (baseline)':<36} {base_rate:8.0f} jobs/s")
        print(f"  {'relay flush':<36} {rate:8.0f} jobs/s   x{rate / base_rate:5.2f}")
        print(f"  {'reconcile after FLUSHDB':<36} {re_rate:8.0f} jobs/s   x{re_rate / base_rate:5.2f}")
    finally:
        conn = await asyncpg.connect(DATABASE_URL)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
        await redis.flushdb()
        await redis.aclose()
        await arq.aclose()


if __name__ == "__main__":
    asyncio.run(main())
