"""Job pickup of ``rindle.worker_settings`` workers, run in this process on real Redis and
PostgreSQL: woken by the relay (not a poll), admission by lane, one run per job when
workers share a queue, and timeouts that do not run while a job waits for a process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from arq.worker import create_worker

from rindle_async import JobKind
from rindle_async.dispatch import DISPATCHER


class Recorder:
    """What the test jobs did, in order, and gates that hold them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.gate = asyncio.Event()
        self.done: asyncio.Queue[tuple[str, int]] = asyncio.Queue()


RECORD = Recorder()


async def quick(job) -> None:
    RECORD.events.append(("quick", job.id))
    await RECORD.done.put(("quick", job.id))


async def held(job) -> None:
    RECORD.events.append(("held-start", job.id))
    await RECORD.gate.wait()
    RECORD.events.append(("held-end", job.id))
    await RECORD.done.put(("held", job.id))


async def sleeps_in_pool(job) -> None:
    await job.runtime.processing.run(time.sleep, job.args["seconds"], timeout=30,
                                    waiting=job.paused)
    await RECORD.done.put(("slept", job.id))


KINDS = [JobKind(name="quick", handler=quick),
         JobKind(name="held", handler=held, lane="render"),
         JobKind(name="sleeps_in_pool", handler=sleeps_in_pool, tries=1, timeout=1.0, lane="render")]


@pytest.fixture(autouse=True)
def recorder() -> Recorder:
    global RECORD
    RECORD = Recorder()
    return RECORD


@pytest.fixture
async def run_workers(make_rindle) -> AsyncIterator[Callable]:
    """Start in-process workers built by ``rindle.worker_settings``; all stop at the end."""
    running: list[tuple] = []

    async def start(rindle, *, rescan: float | None = None, **settings):
        cls = rindle.worker_settings(**settings)
        dispatcher = cls.ctx[DISPATCHER]
        if rescan is not None:  # push pickup only: the fallback re-read would come too late
            dispatcher.rescan = dispatcher.max_wait = rescan
        worker = create_worker(cls, handle_signals=False)
        task = asyncio.create_task(worker.async_run())
        running.append((worker, task))
        return worker

    yield start
    for worker, task in running:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
        try:
            await worker.close()  # gathers the job tasks, which may have been cancelled with it
        except asyncio.CancelledError:
            # a CancelledError escaping a fixture's teardown leaves pytest's fixtures of this
            # test process cached: every later test would reuse this test's schema
            if asyncio.current_task().cancelling():
                raise


async def stage(rindle, kind: str, n: int = 1, **args) -> list[int]:
    async with rindle.runtime.db.transaction() as uow:
        return [await uow.stage(kind, args) for _ in range(n)]


async def finished(recorder: Recorder, n: int, timeout: float = 20.0) -> list[tuple[str, int]]:
    async with asyncio.timeout(timeout):
        return [await recorder.done.get() for _ in range(n)]


async def test_an_idle_worker_is_woken_by_the_relay_not_by_a_poll(make_rindle, run_workers, recorder):
    rindle = await make_rindle(jobs=KINDS, processes=1)
    await run_workers(rindle, rescan=120.0)
    await asyncio.sleep(0.5)  # the worker is idle, waiting on its wake-up channel
    [job_id] = await stage(rindle, "quick")
    # the next re-read is two minutes away: only the relay's announcement can start it now
    assert await finished(recorder, 1) == [("quick", job_id)]


async def test_a_job_sent_without_an_announcement_is_found_by_the_rescan(make_rindle, run_workers,
                                                                         recorder):
    rindle = await make_rindle(jobs=KINDS, relay=False, processes=1)
    await run_workers(rindle)
    [job_id] = await stage(rindle, "quick")
    # sent as a plain arq job: no announcement on the wake-up channel
    await rindle.config.ledger.load_instance(rindle.runtime.pool)
    await rindle.runtime.arq.enqueue_job("quick", job_id, _job_id=rindle.config.ledger.job_id(job_id, "quick"),
                                 _queue_name=rindle.config.ledger.queue)
    assert await finished(recorder, 1) == [("quick", job_id)]


async def test_renders_filling_their_lane_do_not_hold_back_other_jobs(make_rindle, run_workers,
                                                                      recorder):
    rindle = await make_rindle(jobs=KINDS, processes=1)
    await run_workers(rindle, concurrency={"render": 2, "default": 2})
    renders = await stage(rindle, "held", 5)  # more than the render lane holds
    async with asyncio.timeout(20):
        while sum(1 for kind, _ in recorder.events if kind == "held-start") < 2:
            await asyncio.sleep(0.02)
    [promotion] = await stage(rindle, "quick")
    assert await finished(recorder, 1) == [("quick", promotion)]  # the render lane is still full
    started = {job for kind, job in recorder.events if kind == "held-start"}
    assert len(started) == 2 and started < set(renders)  # two held renders, three queued
    recorder.gate.set()
    assert sorted(job for _, job in await finished(recorder, 5)) == renders


async def test_workers_sharing_a_queue_run_each_job_once(make_rindle, run_workers, recorder, db,
                                                         schema):
    rindle = await make_rindle(jobs=KINDS, processes=1)
    await run_workers(rindle)
    await run_workers(rindle)
    ids = await stage(rindle, "quick", 60)
    assert sorted(job for _, job in await finished(recorder, 60)) == ids
    await asyncio.sleep(0.5)  # a second run, if any, would show up now
    assert sorted(job for kind, job in recorder.events) == ids
    attempts = await db.fetch(f"SELECT job_id, count(*) AS n FROM {schema}.processing_runs"
                              " GROUP BY job_id")
    assert {r["n"] for r in attempts} == {1} and len(attempts) == 60


async def test_waiting_for_a_process_does_not_count_against_the_timeout(make_rindle, run_workers,
                                                                         recorder, db, schema):
    rindle = await make_rindle(jobs=KINDS, processes=1)
    await run_workers(rindle, concurrency={"render": 3})
    # one process, three 0.5 s calls: the last waits about 1 s for it, then runs 0.5 s more,
    # past its 1 s timeout if the wait counted
    ids = await stage(rindle, "sleeps_in_pool", 3, seconds=0.5)
    assert sorted(job for _, job in await finished(recorder, 3, timeout=60)) == ids
    async with asyncio.timeout(10):  # the runs close just after the handlers return
        while await db.fetchval(f"SELECT count(*) FROM {schema}.processing_runs"
                                " WHERE outcome = 'running'"):
            await asyncio.sleep(0.05)
    outcomes = await db.fetch(f"SELECT outcome FROM {schema}.processing_runs")
    assert [r["outcome"] for r in outcomes] == ["succeeded"] * 3


async def test_a_retry_starts_after_its_backoff_not_after_the_claim_of_its_first_try(
        make_rindle, run_workers, recorder):
    started: list[float] = []

    async def flaky(job) -> None:
        started.append(time.monotonic())
        if job.attempt == 1:
            raise ConnectionError("the store blinked")
        await RECORD.done.put(("flaky", job.id))

    rindle = await make_rindle(jobs=[JobKind(name="flaky", handler=flaky, backoff=0.2,
                                             max_backoff=0.2)])
    await run_workers(rindle)
    await stage(rindle, "flaky")
    await finished(recorder, 1)
    # a claim reserves a job for 5 s; the retry is a new delivery that it must not hold back
    assert started[1] - started[0] < 2.5, started
