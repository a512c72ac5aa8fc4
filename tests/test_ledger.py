"""The job ledger on real PostgreSQL and Redis: nothing sent before commit,
nothing lost after it, nothing sent twice."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest
from arq.constants import job_key_prefix

from rindle_async import JobKind, ValidationError

from .conftest import run_worker


async def noop(job) -> None:
    return None


NOOP = JobKind(name="noop", handler=noop, tries=3)


async def stage(rindle, n=1, **options):
    ids = []
    async with rindle.runtime.db.transaction() as uow:
        for i in range(n):
            ids.append(await uow.stage("noop", {"n": i}, **options))
    return ids


async def job_keys(redis, rindle, ids):
    return [await redis.exists(job_key_prefix + rindle.config.ledger.job_id(i, "noop")) for i in ids]


async def wait_until(predicate, timeout=5.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return time.monotonic()
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


async def wait_sent(db, schema, redis, rindle, job_id, timeout=5.0):
    """Wait until the relay has sent the job and committed it as enqueued."""
    key = job_key_prefix + rindle.config.ledger.job_id(job_id, "noop")

    async def sent():
        status = await db.fetchval(f"SELECT status FROM {schema}.jobs WHERE id = $1", job_id)
        return status == "enqueued" and await redis.exists(key)

    return await wait_until(sent, timeout)


async def listener_pids(db, schema):
    return [r["pid"] for r in await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE query = $1", f'LISTEN "{schema}_jobs"')]


async def statuses(db, schema):
    return [tuple(r) for r in await db.fetch(f"SELECT id, status FROM {schema}.jobs ORDER BY id")]


async def test_rolled_back_transaction_leaves_no_row_and_no_job(make_rindle, db, schema, redis):
    rindle = await make_rindle(jobs=[NOOP], relay_interval=0.05)
    with pytest.raises(RuntimeError):
        async with rindle.runtime.db.transaction() as uow:
            await uow.stage("noop", {})
            raise RuntimeError("the host's handler failed")
    await asyncio.sleep(0.3)  # several relay sweeps
    assert await statuses(db, schema) == []
    assert await redis.zcard(rindle.config.ledger.queue) == 0


async def test_commit_reaches_arq_promptly_through_notify(make_rindle, db, schema, redis):
    writer = await make_rindle(jobs=[NOOP], relay=False)
    await make_rindle(jobs=[NOOP], relay_interval=3600, migrate=False)  # listens, never sweeps
    await wait_until(lambda: listener_pids(db, schema))  # subscribed before the commit
    started = time.monotonic()
    [job_id] = await stage(writer)
    arrived = await wait_sent(db, schema, redis, writer, job_id)
    assert arrived - started < 2.0


async def test_sweep_sends_when_notify_is_missed(make_rindle, db, schema, redis):
    writer = await make_rindle(jobs=[NOOP], relay=False)
    await make_rindle(jobs=[NOOP], relay_interval=0.2, relay_listen=False, migrate=False)
    [job_id] = await stage(writer)
    await wait_sent(db, schema, redis, writer, job_id)


async def test_rows_stay_pending_without_a_relay(make_rindle, db, schema, redis):
    rindle = await make_rindle(jobs=[NOOP], relay=False)
    ids = await stage(rindle, 3)
    await asyncio.sleep(0.2)
    assert await statuses(db, schema) == [(i, "pending") for i in ids]
    assert await rindle.flush_jobs() == 3
    assert await job_keys(redis, rindle, ids) == [1, 1, 1]
    assert await rindle.flush_jobs() == 0


def test_a_process_that_dies_after_commit_loses_nothing(tmp_path, database_url, redis_url, schema):
    script = tmp_path / "dies.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, os
        from rindle_async import JobKind, Rindle

        async def noop(job):
            pass

        async def main():
            rindle = Rindle(database_url={database_url!r}, redis_url={redis_url!r},
                            schema={schema!r}, queue="q-{schema}", relay_listen=False,
                            jobs=[JobKind(name="noop", handler=noop)])
            await rindle.open()
            await rindle.migrate()
            async with rindle.runtime.db.transaction() as uow:
                await uow.stage("noop", {{}})
            os._exit(0)  # dies right after commit, before its relay runs

        asyncio.run(main())
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr

    async def check():
        import asyncpg
        import redis.asyncio as redis_asyncio

        from rindle_async import Rindle

        db = await asyncpg.connect(database_url)
        redis = redis_asyncio.from_url(redis_url)
        try:
            # committed, never marked sent (its relay may or may not have reached Redis first)
            assert await statuses(db, schema) == [(1, "pending")]
            async with Rindle(database_url=database_url, redis_url=redis_url, schema=schema,
                              queue=f"q-{schema}", jobs=[NOOP], relay_interval=0.1) as fresh:
                async def sent():
                    return await statuses(db, schema) == [(1, "enqueued")]

                await wait_until(sent)
                assert await redis.exists(job_key_prefix + fresh.config.ledger.job_id(1, "noop"))
                assert await redis.zcard(f"q-{schema}") == 1
        finally:
            await db.execute(f"DROP SCHEMA {schema} CASCADE")
            await db.close()
            await redis.aclose()

    asyncio.run(check())


async def test_the_relay_listens_again_after_its_connection_is_cut(make_rindle, db, schema, redis):
    writer = await make_rindle(jobs=[NOOP], relay=False)
    await make_rindle(jobs=[NOOP], relay_interval=3600, migrate=False)  # only NOTIFY wakes it
    await wait_until(lambda: listener_pids(db, schema))
    [old_pid] = await listener_pids(db, schema)
    await db.execute("SELECT pg_terminate_backend($1)", old_pid)

    async def new_listener():
        pids = await listener_pids(db, schema)
        return pids and pids != [old_pid]

    await wait_until(new_listener)
    [job_id] = await stage(writer)
    await wait_sent(db, schema, redis, writer, job_id, timeout=2.0)


async def test_two_relays_flushing_at_once_send_each_job_once(make_rindle, db, schema, redis):
    a = await make_rindle(jobs=[NOOP], relay=False)
    b = await make_rindle(jobs=[NOOP], relay=False, migrate=False)
    ids = await stage(a, 600)
    sent = await asyncio.gather(a.flush_jobs(), b.flush_jobs(), a.flush_jobs(), b.flush_jobs())
    assert sum(sent) == 600
    assert await redis.zcard(a.config.ledger.queue) == 600
    counts = await db.fetch(f"SELECT sent_count, count(*) FROM {schema}.jobs GROUP BY 1")
    assert [tuple(r) for r in counts] == [(1, 600)]
    assert await job_keys(redis, a, ids[:5]) == [1] * 5


async def test_reconciler_resends_everything_redis_lost(make_rindle, db, schema, private_redis):
    import redis.asyncio as redis_asyncio

    rindle = await make_rindle(jobs=[NOOP], relay=False, redis_url=private_redis.url)
    ids = await stage(rindle, 25)
    assert await rindle.flush_jobs() == 25
    assert await rindle.reconcile_jobs() == 0  # all known to Redis: nothing to do
    private_redis.kill()  # a Redis without persistence dies: every queued job is gone
    private_redis.start()
    redis = redis_asyncio.from_url(private_redis.url)
    try:
        assert await redis.dbsize() == 0
        assert await rindle.reconcile_jobs() == 25
        assert await job_keys(redis, rindle, ids) == [1] * 25
        assert await rindle.reconcile_jobs() == 0
    finally:
        await redis.aclose()
    await run_worker(rindle, private_redis.url)
    assert await statuses(db, schema) == []


async def test_reconciler_resends_a_job_that_finished_in_arq_without_the_ledger(
        make_rindle, db, schema, redis, redis_url):
    rindle = await make_rindle(jobs=[NOOP], relay=False)
    [job_id] = await stage(rindle)
    await rindle.flush_jobs()
    # arq ran out of its own tries (e.g. the worker kept dying): a result, no job, row enqueued
    key = rindle.config.ledger.job_id(job_id, "noop")
    await redis.delete(job_key_prefix + key)
    await redis.zrem(rindle.config.ledger.queue, key)
    await redis.set("arq:result:" + key, b"x")
    assert await rindle.reconcile_jobs() == 1
    await run_worker(rindle, redis_url)
    assert await statuses(db, schema) == []


async def test_redis_down_does_not_break_the_host_and_nothing_is_lost(make_rindle, db, schema, redis):
    down = await make_rindle(jobs=[NOOP], redis_url="redis://127.0.0.1:1/0", relay_interval=0.05)
    ids = await stage(down, 2)  # the host's transaction commits although Redis is unreachable
    await asyncio.sleep(0.3)
    assert await statuses(db, schema) == [(i, "pending") for i in ids]
    await down.close()  # its relay's failing flushes hold the rows locked while they try
    healthy = await make_rindle(jobs=[NOOP], relay=False, migrate=False)
    assert await healthy.flush_jobs() == 2
    assert await job_keys(redis, healthy, ids) == [1, 1]


async def test_dedupe_key_allows_one_pending_job(make_rindle, db, schema):
    rindle = await make_rindle(jobs=[NOOP], relay=False)
    first = await stage(rindle, 1, dedupe_key="render:v1")
    again = await stage(rindle, 1, dedupe_key="render:v1")
    assert first[0] is not None and again == [None]
    await rindle.flush_jobs()
    # once sent, a new request for the same key is a new job (the state may have moved on)
    later = await stage(rindle, 1, dedupe_key="render:v1")
    assert later[0] is not None
    assert len(await statuses(db, schema)) == 2


async def test_run_after_defers_the_arq_job(make_rindle, redis):
    from datetime import datetime, timedelta, timezone
    rindle = await make_rindle(jobs=[NOOP], relay=False)
    when = datetime.now(timezone.utc) + timedelta(minutes=10)
    [job_id] = await stage(rindle, 1, run_after=when)
    await rindle.flush_jobs()
    score = await redis.zscore(rindle.config.ledger.queue, rindle.config.ledger.job_id(job_id, "noop"))
    assert abs(score / 1000 - when.timestamp()) < 1


async def test_unknown_kind_and_staging_outside_a_transaction_are_refused(make_rindle):
    rindle = await make_rindle(jobs=[NOOP], relay=False)
    with pytest.raises(ValidationError, match="unknown job kind 'nope'; registered kinds are"):
        async with rindle.runtime.db.transaction() as uow:
            await uow.stage("nope", {})
    async with rindle.runtime.pool.acquire() as conn:
        with pytest.raises(Exception, match="inside a transaction"):
            await rindle.config.ledger.stage(conn, "noop", {})


async def test_queue_routing(make_rindle, db, schema, redis):
    other = JobKind(name="render", handler=noop)
    rindle = await make_rindle(jobs=[NOOP, other], queues={"render": f"render-{schema}"}, relay=False)
    async with rindle.runtime.db.transaction() as uow:
        await uow.stage("noop", {})
        await uow.stage("render", {})
    await rindle.flush_jobs()
    assert await redis.zcard(rindle.config.ledger.queue) == 1
    assert await redis.zcard(f"render-{schema}") == 1
    with pytest.raises(Exception, match="queues= names unknown job kinds \\['paint'\\]"):
        await make_rindle(jobs=[NOOP], queues={"paint": "x"})


async def test_ledger_summary(make_rindle, db, schema):
    rindle = await make_rindle(jobs=[NOOP], relay=False)
    await stage(rindle, 3)
    summary = await rindle.ledger_summary()
    assert (summary.pending, summary.enqueued, summary.discarded) == (3, 0, 0)
    assert summary.oldest_pending_age is not None and summary.oldest_enqueued_age is None
    await rindle.flush_jobs()
    summary = await rindle.ledger_summary()
    assert (summary.pending, summary.enqueued) == (0, 3)
