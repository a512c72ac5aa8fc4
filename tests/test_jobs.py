"""Running ledger jobs in a real arq worker: success, retries, discard, attempts."""

from __future__ import annotations

import asyncio
import datetime

import asyncpg
import msgspec
import pytest

from rindle_async import ConfigurationError, JobKind, Rindle, ValidationError
from rindle_async.ledger.runner import run_job

from .conftest import run_worker


async def setup_effects(db, schema):
    await db.execute(f"CREATE TABLE {schema}.effects (job bigint, note text)")


async def stage_one(rindle, kind, args=None):
    return await rindle.stage_job(kind, args)


class NoteArgs(msgspec.Struct, frozen=True):
    note: str
    when: datetime.date


async def runs(db, schema, job_id):
    return [tuple(r) for r in await db.fetch(
        f"SELECT attempt, outcome, error IS NOT NULL FROM {schema}.processing_runs"
        " WHERE job_id = $1 ORDER BY attempt", job_id)]


async def test_a_succeeding_job_removes_its_row_with_its_own_change(make_rindle, db, schema, redis_url):
    async def record(job):
        async with job.complete() as uow:
            await uow.conn.execute(f"INSERT INTO {schema}.effects VALUES ($1, 'done')", job.id)

    rindle = await make_rindle(jobs=[JobKind(name="record", handler=record)], relay=False)
    await setup_effects(db, schema)
    job_id = await stage_one(rindle, "record", {"asset_id": None})
    await rindle.flush_jobs()
    await run_worker(rindle, redis_url)
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.jobs") == 0
    assert await db.fetchval(f"SELECT note FROM {schema}.effects WHERE job = $1", job_id) == "done"
    assert await runs(db, schema, job_id) == [(1, "succeeded", False)]


async def test_a_job_that_keeps_failing_ends_discarded_with_its_error(make_rindle, db, schema, redis_url):
    async def flaky(job):
        raise ConnectionError(f"store unreachable on attempt {job.attempt}")

    kind = JobKind(name="flaky", handler=flaky, tries=3, backoff=0.01)
    rindle = await make_rindle(jobs=[kind], relay=False)
    job_id = await stage_one(rindle, "flaky")
    await rindle.flush_jobs()
    await run_worker(rindle, redis_url)
    row = await db.fetchrow(f"SELECT status, attempts, error FROM {schema}.jobs WHERE id = $1", job_id)
    assert (row["status"], row["attempts"]) == ("discarded", 3)
    assert row["error"] == "ConnectionError: store unreachable on attempt 3"
    assert await runs(db, schema, job_id) == [(1, "retrying", True), (2, "retrying", True),
                                              (3, "failed", True)]
    summary = await rindle.ledger_summary()
    assert summary.discarded == 1


async def test_a_failure_that_is_not_retryable_is_discarded_at_once(make_rindle, db, schema, redis_url):
    async def refuse(job):
        raise ValidationError("the source is not an image")

    discarded = []

    async def on_discard(uow, job, error):
        discarded.append((job.id, error, uow.conn.is_in_transaction()))

    kind = JobKind(name="refuse", handler=refuse, tries=5, on_discard=on_discard)
    rindle = await make_rindle(jobs=[kind], relay=False)
    job_id = await stage_one(rindle, "refuse")
    await rindle.flush_jobs()
    await run_worker(rindle, redis_url)
    assert discarded == [(job_id, "ValidationError: the source is not an image", True)]
    assert await runs(db, schema, job_id) == [(1, "failed", True)]


async def test_a_failure_inside_complete_rolls_back_and_retries(make_rindle, db, schema, redis_url):
    async def half(job):
        async with job.complete() as uow:
            await uow.conn.execute(f"INSERT INTO {schema}.effects VALUES ($1, $2)", job.id,
                                   f"attempt {job.attempt}")
            if job.attempt == 1:
                raise OSError("connection reset while finishing")

    rindle = await make_rindle(jobs=[JobKind(name="half", handler=half, backoff=0.01)], relay=False)
    await setup_effects(db, schema)
    job_id = await stage_one(rindle, "half")
    await rindle.flush_jobs()
    await run_worker(rindle, redis_url)
    notes = [r["note"] for r in await db.fetch(f"SELECT note FROM {schema}.effects")]
    assert notes == ["attempt 2"]  # attempt 1's change rolled back with its failure
    assert await runs(db, schema, job_id) == [(1, "retrying", True), (2, "succeeded", False)]
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.jobs") == 0


async def test_a_duplicate_delivery_is_a_no_op(make_rindle, db, schema):
    calls = []

    async def count(job):
        calls.append(job.id)

    kind = JobKind(name="count", handler=count)
    rindle = await make_rindle(jobs=[kind], relay=False)
    job_id = await stage_one(rindle, "count")
    assert await run_job(rindle.runtime, kind, job_id) == "succeeded"
    assert (await run_job(rindle.runtime, kind, job_id)).startswith("skipped")
    assert calls == [job_id]


async def test_attempts_that_died_with_their_worker_count_and_end_in_discard(make_rindle, db, schema):
    calls = []

    async def never_finishes(job):
        calls.append(job.attempt)
        raise asyncio.CancelledError()  # the worker stops mid-attempt

    kind = JobKind(name="dies", handler=never_finishes, tries=2)
    rindle = await make_rindle(jobs=[kind], relay=False)
    job_id = await stage_one(rindle, "dies")
    for worker in ("host:11:aaa", "host:12:bbb"):
        with pytest.raises(asyncio.CancelledError):
            await run_job(rindle.runtime, kind, job_id, worker=worker)
    assert await run_job(rindle.runtime, kind, job_id, worker="host:13:ccc") == "discarded"
    assert calls == [1, 2]
    row = await db.fetchrow(f"SELECT status, error FROM {schema}.jobs WHERE id = $1", job_id)
    assert row["status"] == "discarded"
    assert row["error"] == ("gave up: 2 attempt(s) started and none finished; each ended with its "
                            "worker (killed, crashed or stalled: the input may be what kills it)")
    assert [r[1] for r in await runs(db, schema, job_id)] == ["abandoned", "abandoned", "failed"]
    lost = await db.fetch(f"SELECT worker, error FROM {schema}.processing_runs WHERE job_id = $1"
                          " AND outcome = 'abandoned' ORDER BY attempt", job_id)
    assert [(r["worker"], r["error"]) for r in lost] == [
        (name, f"its worker {name} stopped before the attempt finished (killed, crashed or lost its lease)")
        for name in ("host:11:aaa", "host:12:bbb")]


async def test_an_attempt_that_runs_too_long_counts_as_a_failed_try(make_rindle, db, schema, redis_url):
    async def slow(job):
        if job.attempt == 1:
            await asyncio.sleep(30)

    kind = JobKind(name="slow", handler=slow, timeout=0.2, backoff=0.01)
    rindle = await make_rindle(jobs=[kind], relay=False)
    job_id = await stage_one(rindle, "slow")
    await rindle.flush_jobs()
    await run_worker(rindle, redis_url)
    outcomes = await db.fetch(f"SELECT outcome, error FROM {schema}.processing_runs"
                              " WHERE job_id = $1 ORDER BY attempt", job_id)
    assert [r["outcome"] for r in outcomes] == ["retrying", "succeeded"]
    assert outcomes[0]["error"].startswith("TimeoutError: attempt timed out")


def test_job_kind_validation():
    with pytest.raises(ValueError, match="tries=0 must be at least 1"):
        JobKind(name="x", handler=lambda job: None, tries=0)
    kind = JobKind(name="x", handler=lambda job: None, backoff=2, max_backoff=10)
    assert 2 <= kind.delay(1) <= 2.5 and 8 <= kind.delay(3) <= 10
    assert 10 <= kind.delay(9) <= 12.5


async def test_an_error_can_ask_for_a_longer_pause(make_rindle, db, schema):
    from arq import Retry

    class Busy(ConnectionError):
        retry_after = 90.0

    async def busy(job):
        raise Busy("the other side asked us to wait")

    kind = JobKind(name="busy", handler=busy, tries=3, backoff=0.01)
    rindle = await make_rindle(jobs=[kind], relay=False)
    job_id = await stage_one(rindle, "busy")
    with pytest.raises(Retry) as info:
        await run_job(rindle.runtime, kind, job_id)
    assert info.value.defer_score == 90_000


async def test_a_failure_that_finds_the_database_away_is_still_handed_back_for_a_retry(
        make_rindle, db, schema):
    """The attempt's own record waits out a database that refuses connections for a second;
    a Retry goes back to arq either way (any other exception would make arq drop the job)."""
    from arq import Retry

    from .conftest import BASE_DATABASE_URL

    database = await db.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(BASE_DATABASE_URL)  # a database cannot lock itself out

    async def allow(allowed: bool) -> None:
        await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS {allowed}")

    async def allow_again() -> None:
        await asyncio.sleep(1.0)
        await allow(True)

    async def cut(job):
        await allow(False)
        await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = current_database() AND application_name = 'rindle_async'")
        reopening.append(asyncio.create_task(allow_again()))
        raise ConnectionError("the database went away under the job")

    reopening: list[asyncio.Task] = []
    kind = JobKind(name="cut", handler=cut, tries=3, backoff=0.01)
    rindle = await make_rindle(jobs=[kind], relay=False)
    job_id = await stage_one(rindle, "cut")
    try:
        with pytest.raises(Retry):
            await run_job(rindle.runtime, kind, job_id)
    finally:
        await allow(True)
        await admin.close()
    assert await db.fetchval(f"SELECT error FROM {schema}.processing_runs WHERE job_id = $1",
                             job_id) == "ConnectionError: the database went away under the job"
    assert await runs(db, schema, job_id) == [(1, "retrying", True)]


async def test_a_host_kind_with_typed_args_staged_in_the_hosts_transaction(make_rindle, db, schema,
                                                                          redis_url):
    seen = []

    async def note(job):
        seen.append(job.args)
        async with job.complete() as uow:
            await uow.conn.execute(f"INSERT INTO {schema}.effects VALUES ($1, $2)", job.id,
                                   f"{job.args.note} {job.args.when.isoformat()}")

    rindle = await make_rindle(jobs=[JobKind(name="note", handler=note, args=NoteArgs)], relay=False)
    await setup_effects(db, schema)
    args = NoteArgs(note="hello", when=datetime.date(2026, 12, 2))
    with pytest.raises(RuntimeError, match="host rolled back"):
        async with rindle.transaction() as conn:
            await rindle.stage_job("note", args, conn=conn)
            raise RuntimeError("host rolled back")
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.jobs") == 0  # went with the rollback
    async with rindle.transaction() as conn:
        first = await rindle.stage_job("note", args, dedupe_key="note:1", conn=conn)
        assert await rindle.stage_job("note", args, dedupe_key="note:1", conn=conn) is None
    await rindle.flush_jobs()
    await run_worker(rindle, redis_url)
    assert seen == [args]  # decoded as the kind's struct, not a dict
    assert await db.fetchval(f"SELECT note FROM {schema}.effects WHERE job = $1", first) == \
        "hello 2026-12-02"
    with pytest.raises(ValidationError, match="unknown job kind 'nope'"):
        await rindle.stage_job("nope")


def test_job_settings_may_tune_only_limits():
    with pytest.raises(ConfigurationError, match=r"job_settings\['purge_storage'\] cannot set \['lane'\]"):
        Rindle(database_url="postgresql://x", job_settings={"purge_storage": {"lane": "render"}})
    tuned = Rindle(database_url="postgresql://x", job_settings={"process_variant": {"tries": 8}})
    kind = tuned.config.ledger.kinds["process_variant"]
    assert (kind.tries, kind.lane, kind.timeout) == (8, "render", 300.0)
