"""Worker leases on a real Redis: a dead worker's jobs are freed, a live worker's never are,
and a Redis that came back empty gets the running jobs' guards back."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from rindle_async.ledger.relay import wake_channel
from rindle_async.liveness import CLAIM_PREFIX, REGISTRY, Liveness, WorkerInfo, held_key, live_workers


@pytest.fixture
async def arq(redis_url):
    client = ArqRedis.from_url(redis_url)
    yield client
    await client.aclose()


def lease(arq, name: str, queue: str, jobs: dict[str, bool] | None = None, **options) -> Liveness:
    held = jobs if jobs is not None else {}
    return Liveness(arq, WorkerInfo(name, queue, "host", 1, 0.0), jobs=lambda: held,
                    in_progress_ttl=600, **{"lease": 1.0, "interval": 0.2, "grace": 0.3, **options})


async def recovered_here(liveness: Liveness) -> list:
    """One beat's recoveries of workers on this test's queue: the registry is shared by every
    worker on the Redis db, and another test's killed worker may lapse during this one."""
    return [r for r in await liveness.beat() if r.worker.queue == liveness.info.queue]


async def run_as_arq(arq, worker: str, job_id: str) -> None:
    """What a claim and arq's start leave in Redis for a job running on ``worker``."""
    await arq.sadd(held_key(worker), job_id)
    await arq.set(in_progress_key_prefix + job_id, b"1", px=600_000)


async def test_the_jobs_of_a_worker_whose_lease_lapsed_are_freed_and_its_queue_woken(arq):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    dead_id, live_id = f"dead-{uuid.uuid4().hex[:6]}", f"live-{uuid.uuid4().hex[:6]}"
    dead, live = lease(arq, dead_id, queue), lease(arq, live_id, queue)
    await dead.beat()
    await live.beat()
    await run_as_arq(arq, dead_id, f"{queue}:job-1")
    await run_as_arq(arq, live_id, f"{queue}:job-2")
    assert sorted(w.id for w in (await live_workers(arq))[queue]) == sorted([dead_id, live_id])

    pubsub = arq.pubsub()
    await pubsub.subscribe(wake_channel(queue))
    assert await recovered_here(live) == []  # the dead worker's lease has not lapsed yet
    await asyncio.sleep(1.2)  # the dead worker stopped beating (SIGKILL, lost node)
    assert await recovered_here(live) == []  # lapsed: suspected first
    await asyncio.sleep(0.4)
    recovered = await recovered_here(live)  # and still lapsed after the grace: dead

    assert [(r.worker.id, r.jobs) for r in recovered] == [(dead_id, (f"{queue}:job-1",))]
    assert not await arq.exists(in_progress_key_prefix + f"{queue}:job-1")
    assert await arq.exists(in_progress_key_prefix + f"{queue}:job-2")  # the live worker's stays
    assert [w.id for w in (await live_workers(arq))[queue]] == [live_id]
    assert not await arq.hexists(REGISTRY, dead_id)
    messages = []
    for _ in range(2):
        message = await pubsub.get_message(timeout=1.0)
        if message and message["type"] == "message":
            messages.append(message["data"])
    assert messages == [b"default,render"]
    await pubsub.aclose()
    assert await recovered_here(live) == []  # recovered once
    await live.stop()


async def test_a_worker_that_renews_within_the_grace_keeps_its_jobs(arq):
    """As after a Redis outage longer than the lease: the first beat back renews in time."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    slow, other = lease(arq, f"slow-{uuid.uuid4().hex[:6]}", queue), \
        lease(arq, f"other-{uuid.uuid4().hex[:6]}", queue)
    await slow.beat()
    await run_as_arq(arq, slow.worker, f"{queue}:kept")
    await asyncio.sleep(1.2)
    assert await recovered_here(other) == []  # suspected
    await slow.beat()  # back within the grace
    await asyncio.sleep(0.4)
    assert await recovered_here(other) == []
    assert await arq.exists(in_progress_key_prefix + f"{queue}:kept")
    await slow.stop()
    await other.stop()


async def test_a_job_a_live_worker_holds_is_never_freed_however_long_it_runs(arq):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    holder, other = lease(arq, f"holder-{uuid.uuid4().hex[:6]}", queue), \
        lease(arq, f"other-{uuid.uuid4().hex[:6]}", queue)
    await holder.start()  # renews every 0.2 s: a long job on a healthy worker
    await other.beat()
    await run_as_arq(arq, holder.worker, f"{queue}:long")
    for _ in range(15):  # 3 s: three leases long
        assert await recovered_here(other) == []
        await asyncio.sleep(0.2)
    assert await arq.exists(in_progress_key_prefix + f"{queue}:long")
    await holder.stop()
    await other.stop()
    assert queue not in await live_workers(arq)


async def test_a_dead_workers_stale_entry_never_frees_a_job_a_live_worker_runs_now(arq):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    dead_id = f"dead-{uuid.uuid4().hex[:6]}"
    dead, live = lease(arq, dead_id, queue), lease(arq, f"live-{uuid.uuid4().hex[:6]}", queue)
    await dead.beat()
    await arq.sadd(held_key(dead_id), f"{queue}:retried")  # it ran the job's first try, then died
    await run_as_arq(arq, live.worker, f"{queue}:retried")  # the retry runs on the live worker
    await live.beat()
    await asyncio.sleep(1.2)
    await live.beat()
    await asyncio.sleep(0.4)
    recovered = await recovered_here(live)
    assert [(r.worker.id, r.jobs) for r in recovered] == [(dead_id, ())]
    assert await arq.exists(in_progress_key_prefix + f"{queue}:retried")
    await live.stop()


async def test_each_beat_drops_held_jobs_that_ended_and_keeps_those_being_started(arq):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    jobs = {f"{queue}:claimed": False}
    worker = lease(arq, f"w-{uuid.uuid4().hex[:6]}", queue, jobs)
    await worker.beat()
    await arq.sadd(held_key(worker.worker), f"{queue}:claimed", f"{queue}:ended", f"{queue}:running",
                   f"{queue}:just-claimed")
    await arq.set(in_progress_key_prefix + f"{queue}:running", b"1", px=60_000)
    # claimed by the dispatcher after the beat listed the jobs held here, not started yet
    await arq.set(CLAIM_PREFIX + f"{queue}:just-claimed", worker.worker, px=5_000)
    await worker.beat()
    assert sorted(await arq.smembers(held_key(worker.worker))) == [
        f"{queue}:claimed".encode(), f"{queue}:just-claimed".encode(), f"{queue}:running".encode()]
    await worker.stop()
    assert not await arq.exists(held_key(worker.worker))


async def test_redis_back_empty_guards_the_running_jobs_again_then_reconciles(arq):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    reconciled = asyncio.Event()

    async def reconcile() -> None:
        # the running job's guard is back before the ledger is reconciled
        assert await arq.exists(in_progress_key_prefix + f"{queue}:running")
        reconciled.set()

    worker = lease(arq, f"w-{uuid.uuid4().hex[:6]}", queue, {f"{queue}:running": True},
                   on_redis_reset=reconcile)
    await worker.beat()
    # what FLUSHALL does to this worker's keys (the test's Redis db is shared, so no FLUSHALL)
    await arq.delete(in_progress_key_prefix + f"{queue}:running", held_key(worker.worker))
    await arq.hdel(REGISTRY, worker.worker)
    await worker.beat()
    assert await arq.exists(in_progress_key_prefix + f"{queue}:running")
    assert await arq.sismember(held_key(worker.worker), f"{queue}:running")
    await asyncio.wait_for(reconciled.wait(), timeout=5)
    await worker.stop()


def test_a_lease_must_outlast_its_renewal_interval(arq):
    with pytest.raises(ValueError, match="interval=5.0 must be positive and shorter than lease=5.0"):
        lease(arq, "w", "q", lease=5.0, interval=5.0)
    with pytest.raises(ValueError, match="grace=-1 must not be negative"):
        lease(arq, "w", "q", grace=-1)
