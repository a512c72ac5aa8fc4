"""Worker liveness: a lease of seconds per worker, so a dead worker's jobs run again at once.

arq guards a running job with an in-progress key that lives as long as the
longest job timeout on the worker plus 10 s (half an hour on a queue serving
``cleanup_orphans``); a job whose worker was killed waits that long before
anyone may run it again.  arq has no notion of which worker holds a job, so
rindle adds one:

- each worker holds a lease, ``rindle:alive:<worker>``, of ``lease`` seconds,
  renewed every ``interval`` seconds while its event loop runs, and is listed in
  ``rindle:workers`` (worker -> queue, host, pid, start time);
- the dispatcher records every job it claims in ``rindle:held:<worker>``; each
  beat drops the entries whose job is neither claimed or started here nor holds
  arq's in-progress key (arq deletes that key when the job ends);
- every beat of every worker also looks for workers whose lease lapsed: it frees
  the in-progress keys of their jobs (unless a live worker holds the job now),
  removes them from the registry, and wakes the queues, so the jobs start again
  on a live worker within ``lease + grace + interval`` seconds of the death (17 s
  with the defaults) plus pickup.  (The grace keeps a worker that is reconnecting
  after a Redis outage from having its jobs taken before it renews.)
  The attempt that died is closed as ``abandoned`` by the next one and counts.

A live worker's jobs are never taken: its lease is renewed every few seconds
whatever its jobs' length.  A worker whose event loop stalls for longer than
``lease`` loses its jobs to another worker (it logs an error when it notices).

The beat also notices when Redis came back without its data (a restart, or a
failover to an empty replica): the registry entry is missing.  The worker then
puts back the in-progress keys of the jobs it is running (so they are not
started twice) and, one beat later, when every live worker has done the same,
runs the ledger's reconciler instead of waiting for the next minute's cron.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from .ledger.relay import wake_channel

log = logging.getLogger("rindle_async.liveness")

REGISTRY = "rindle:workers"
ALIVE_PREFIX = "rindle:alive:"
HELD_PREFIX = "rindle:held:"
SUSPECT_PREFIX = "rindle:suspect:"
#: the dispatcher's claim keys (``dispatch.py``): job id -> the worker that claimed it
CLAIM_PREFIX = "rindle:claim:"
#: seconds a worker's lease lasts without renewal; between renewals; and how long a lapsed
#: lease must stay lapsed before its jobs are freed (a worker reconnecting after a Redis
#: outage renews within that time)
LEASE, INTERVAL, GRACE = 10.0, 2.0, 5.0

# ARGV: registry, alive prefix, held prefix, in-progress prefix, suspect prefix, grace (ms).
# A worker without a lease is first suspected, and dead once suspected for ``grace``.
# Returns the number of dead workers, then for each: id, registry entry, n, n freed job ids.
_RECOVER = """
local registry, alive, held, running, suspect = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local grace = tonumber(ARGV[6])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local entries = redis.call('HGETALL', registry)
local dead, live_jobs = {}, {}
for i = 1, #entries, 2 do
  local worker = entries[i]
  if redis.call('EXISTS', alive .. worker) == 0 then
    local since = redis.call('GET', suspect .. worker)
    if not since then
      redis.call('SET', suspect .. worker, now, 'PX', 4 * grace + 60000)
    elseif now - tonumber(since) >= grace then
      dead[#dead + 1] = {worker, entries[i + 1]}
    end
  else
    for _, id in ipairs(redis.call('SMEMBERS', held .. worker)) do live_jobs[id] = true end
  end
end
local result = {#dead}
for _, entry in ipairs(dead) do
  local worker, info = entry[1], entry[2]
  local freed = {}
  for _, id in ipairs(redis.call('SMEMBERS', held .. worker)) do
    if not live_jobs[id] and redis.call('DEL', running .. id) == 1 then freed[#freed + 1] = id end
  end
  redis.call('DEL', held .. worker, suspect .. worker)
  redis.call('HDEL', registry, worker)
  result[#result + 1] = worker
  result[#result + 1] = info
  result[#result + 1] = #freed
  for _, id in ipairs(freed) do result[#result + 1] = id end
end
return result
"""

# KEYS: this worker's held set.  ARGV: in-progress prefix, claim prefix, this worker, the job
# ids it holds.  Drops held entries that are not held here, hold no in-progress key and are
# not claimed by this worker (a claim made after the list of ids was taken); returns how many.
_PRUNE = """
local here = {}
for i = 4, #ARGV do here[ARGV[i]] = true end
local dropped = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not here[id] and redis.call('EXISTS', ARGV[1] .. id) == 0
      and redis.call('GET', ARGV[2] .. id) ~= ARGV[3] then
    redis.call('SREM', KEYS[1], id)
    dropped = dropped + 1
  end
end
return dropped
"""


class WorkerInfo(msgspec.Struct, frozen=True):
    """A worker as the registry lists it."""

    id: str
    queue: str
    host: str
    pid: int
    started_at: float
    processes: int = 0

    @classmethod
    def of(cls, worker_id: str, queue: str, processes: int) -> WorkerInfo:
        """This process as worker ``worker_id`` (from :func:`new_worker_id`), starting now."""
        host, pid, _ = worker_id.rsplit(":", 2)
        return cls(worker_id, queue, host, int(pid), time.time(), processes)


@dataclass(frozen=True)
class Recovered:
    """A worker found dead by a beat, and the jobs whose in-progress keys were freed."""

    worker: WorkerInfo
    jobs: tuple[str, ...]


def new_worker_id() -> str:
    """``host:pid:token``; the token tells apart restarts that reuse a pid (pid 1 in containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def held_key(worker: str) -> str:
    return HELD_PREFIX + worker


async def live_workers(redis: ArqRedis) -> dict[str, list[WorkerInfo]]:
    """Queue -> the workers holding a lease on it now (what ``doctor`` and ``status`` show)."""
    entries = await redis.hgetall(REGISTRY)  # type: ignore[misc]  # redis-py's sync | async union
    if not entries:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for worker in entries:
            pipe.exists(ALIVE_PREFIX + worker.decode())
        alive = await pipe.execute()
    fleets: dict[str, list[WorkerInfo]] = {}
    for raw, up in zip(entries.values(), alive, strict=True):
        if up:
            info = msgspec.json.decode(raw, type=WorkerInfo)
            fleets.setdefault(info.queue, []).append(info)
    return fleets


class Liveness:
    """One worker's lease, its beat, and the recovery of dead workers' jobs.

    redis: the worker's Redis client.
    info: this worker as the registry lists it.
    jobs: the job ids this worker holds now -> whether arq has started them (read at every beat).
    in_progress_ttl: arq's in-progress lease on this worker (its longest job timeout + 10 s).
    on_redis_reset: awaited one beat after Redis came back without this worker's registry entry.
    lease, interval: seconds a lease lasts, and between renewals.
    grace: seconds a lapsed lease stays lapsed before the worker counts as dead.
    """

    def __init__(self, redis: ArqRedis, info: WorkerInfo, *, jobs: Callable[[], Mapping[str, bool]],
                 in_progress_ttl: float, on_redis_reset: Callable[[], Awaitable[object]] | None = None,
                 lease: float = LEASE, interval: float = INTERVAL, grace: float = GRACE) -> None:
        if not 0 < interval < lease:
            raise ValueError(f"interval={interval} must be positive and shorter than lease={lease}")
        if grace < 0:
            raise ValueError(f"grace={grace} must not be negative")
        self.grace = grace
        self.redis, self.info, self.jobs = redis, info, jobs
        self.in_progress_ttl = in_progress_ttl
        self.on_redis_reset = on_redis_reset
        self.lease, self.interval = lease, interval
        self._task: asyncio.Task[None] | None = None
        self._reset: asyncio.Task[None] | None = None
        self._renewed = 0.0  # monotonic time of the last renewal that Redis acknowledged

    @property
    def worker(self) -> str:
        return self.info.id

    async def start(self) -> None:
        """Take the lease (and recover what dead workers held), then keep renewing it."""
        await self.beat()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rindle-liveness")

    async def beat(self) -> list[Recovered]:
        """Renew the lease, prune this worker's held jobs, free the jobs of dead workers."""
        first = self._renewed == 0.0
        now = time.monotonic()
        if not first and now - self._renewed > self.lease:
            log.error("worker %s: lease lapsed (%.1fs since the last renewal, lease %.0fs); "
                      "its jobs may have been started again by another worker",
                      self.worker, now - self._renewed, self.lease)
        jobs = dict(self.jobs())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(ALIVE_PREFIX + self.worker, "1", px=int(self.lease * 1000))
            pipe.delete(SUSPECT_PREFIX + self.worker)
            # redis-py types values and script arguments as str; it encodes bytes and ints as well
            pipe.hset(REGISTRY, self.worker, msgspec.json.encode(self.info))  # type: ignore[arg-type]
            pipe.eval(_PRUNE, 1, held_key(self.worker), in_progress_key_prefix, CLAIM_PREFIX,
                      self.worker, *jobs)
            pipe.eval(_RECOVER, 0, REGISTRY, ALIVE_PREFIX, HELD_PREFIX, in_progress_key_prefix,
                      SUSPECT_PREFIX, int(self.grace * 1000))  # type: ignore[arg-type]
            _, _, added, _, found = await pipe.execute()
        self._renewed = now
        if added and not first:
            await self._redis_reset([job_id for job_id, started in jobs.items() if started])
        recovered = self._recovered(found)
        queues = {r.worker.queue for r in recovered if r.jobs}
        if queues:
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.publish(wake_channel(queue), "default,render")
                await pipe.execute()
        for r in recovered:
            log.warning("worker %s (%s, pid %d) stopped renewing its lease; %d job(s) it held "
                        "start again now: %s", r.worker.id, r.worker.host, r.worker.pid, len(r.jobs),
                        ", ".join(r.jobs) or "none")
        return recovered

    async def _redis_reset(self, started: list[str]) -> None:
        """Redis lost its data: guard the jobs running here again, reconcile one beat later."""
        log.warning("worker %s: Redis came back without its data (restarted or failed over empty); "
                    "%d job(s) running here keep their lease, unfinished jobs are re-sent from the "
                    "ledger in %.1fs", self.worker, len(started), 2 * self.interval)
        if started:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in started:
                    pipe.set(in_progress_key_prefix + job_id, b"1", px=int(self.in_progress_ttl * 1000),
                             nx=True)
                pipe.sadd(held_key(self.worker), *started)
                await pipe.execute()
        if self.on_redis_reset is not None and (self._reset is None or self._reset.done()):
            self._reset = asyncio.get_running_loop().create_task(self._reconcile_later())

    async def _reconcile_later(self) -> None:
        await asyncio.sleep(2 * self.interval)  # every live worker has guarded its jobs by then
        assert self.on_redis_reset is not None
        try:
            await self.on_redis_reset()
        except Exception as exc:
            log.warning("worker %s: re-sending from the ledger failed (%s); the minute's cron "
                        "tries again", self.worker, exc)

    @staticmethod
    def _recovered(found: list[Any]) -> list[Recovered]:
        out, i = [], 1
        for _ in range(int(found[0])):
            worker, info, count = found[i].decode(), found[i + 1], int(found[i + 2])
            jobs = tuple(item.decode() for item in found[i + 3:i + 3 + count])
            try:
                parsed = msgspec.json.decode(info, type=WorkerInfo)
            except msgspec.DecodeError:
                parsed = WorkerInfo(id=worker, queue="?", host="?", pid=0, started_at=0.0)
            out.append(Recovered(parsed, jobs))
            i += 3 + count
        return out

    async def _run(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
                if failures:
                    log.warning("worker %s: Redis answers again; lease renewed", self.worker)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis is away: keep trying; jobs carry on meanwhile
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("worker %s: cannot renew its lease (%s: %s); retrying every %.1fs",
                                self.worker, type(exc).__name__, exc, self.interval)

    async def stop(self) -> None:
        """Stop renewing and leave the registry (a clean shutdown: arq has handed its jobs back)."""
        for task in (self._task, self._reset):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._task = self._reset = None
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(ALIVE_PREFIX + self.worker, held_key(self.worker), SUSPECT_PREFIX + self.worker)
                pipe.hdel(REGISTRY, self.worker)
                await pipe.execute()
        except Exception as exc:  # Redis is away; the lease lapses by itself
            log.warning("worker %s: could not leave the registry (%s)", self.worker, exc)
