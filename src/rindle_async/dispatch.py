"""Job pickup for rindle_async's arq workers: no polling latency, admission by lane.

arq reads its queue with ``ZRANGEBYSCORE`` every ``poll_delay`` and has no way to
be woken (python-arq/arq#404 asks for one).  A rindle worker therefore hands arq
a Redis client, :class:`WorkerRedis`, whose answer to that one read comes from a
:class:`Dispatcher`; everything else (the in-progress lease, retries, results,
cron, signals) is arq's own.  The dispatcher

- waits for work instead of sleeping: the relay announces each batch it sends
  on the queue's wake-up channel, a job that ends frees its slot at once, and a
  re-read every ``rescan`` seconds catches retries coming due and anything an
  announcement missed;
- admits by lane: renders hold render slots (``2 x processes`` by default, so a
  process never waits for its next job), every other kind holds slots of its
  own, so promotions, purges and maintenance never wait behind renders;
- claims, atomically in Redis (one script), the oldest due jobs each lane has
  room for, so workers sharing a queue never take the same job, and records
  each claim in the worker's held set (``liveness.py``), so the jobs of a
  worker that dies are freed within seconds.

A lane's jobs are looked for among the first ``window`` due jobs of the queue; a
deeper backlog of one lane delays the others until it shrinks (route renders to
a queue of their own for imports of that size).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ConfigurationError
from .ledger.relay import wake_channel
from .liveness import CLAIM_PREFIX, held_key, new_worker_id

log = logging.getLogger("rindle_async.dispatch")
T = TypeVar("T")

LANES = ("default", "render")
#: the worker ctx key of the dispatcher that admitted the job
DISPATCHER = "rindle_dispatcher"

# KEYS: the queue.  ARGV: now (ms), claim ttl (ms), claimant, window, kind -> lane (JSON),
# lane -> wanted (JSON), in-progress key prefix, claim key prefix, the claimant's held set,
# then the ids of jobs that ended here since the last call: their claims are dropped first,
# so a job sent again (a retry) can be claimed as soon as it is due.
# Returns {next due score or -1, claimed ids...}.
_CLAIM = """
local queue, now, ttl, owner, window = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local lanes, wanted = cjson.decode(ARGV[5]), cjson.decode(ARGV[6])
local running, claims, held = ARGV[7], ARGV[8], ARGV[9]
for i = 10, #ARGV do
  if redis.call('GET', claims .. ARGV[i]) == owner then redis.call('DEL', claims .. ARGV[i]) end
end
local remaining = 0
for _, n in pairs(wanted) do remaining = remaining + n end
local claimed, offset = {}, 0
while remaining > 0 and offset < window do
  local ids = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'LIMIT', offset, 256)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local kind = string.match(id, ':([%w_%-]+):%d+$')
    local lane = (kind and lanes[kind]) or 'default'
    if (wanted[lane] or 0) > 0 and redis.call('EXISTS', running .. id) == 0
        and redis.call('SET', claims .. id, owner, 'NX', 'PX', ttl) then
      claimed[#claimed + 1] = id
      redis.call('SADD', held, id)
      wanted[lane] = wanted[lane] - 1
      remaining = remaining - 1
      if remaining == 0 then break end
    end
  end
  offset = offset + #ids
end
local nxt = redis.call('ZRANGEBYSCORE', queue, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local result = {nxt[2] or '-1'}
for _, id in ipairs(claimed) do result[#result + 1] = id end
return result
"""


class Lane:
    """Slots for one kind of work; a slot is held from claim to the job's end."""

    def __init__(self, name: str, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigurationError(f"lane {name!r}: capacity={capacity!r} must be a positive int")
        self.name = name
        self.capacity = capacity
        self.held: dict[str, float] = {}  # job id -> monotonic claim time (inf once started)
        self.hint = True  # jobs of this lane may be waiting

    @property
    def free(self) -> int:
        return self.capacity - len(self.held)


class Dispatcher:
    """Chooses which jobs of ``queue`` this worker starts, and when.

    queue: the arq queue the worker serves.
    lanes: lane name -> slots ("default" and "render").
    kinds: job kind -> lane name; kinds not listed run in "default".
    max_wait: longest wait before handing control back to arq (its cron and health check).
    rescan: seconds between reads that do not wait for an announcement.
    window: due jobs examined per read.
    claim_ttl: seconds a claimed job stays reserved for this worker before arq starts it.
    claimant: this worker's id (``liveness.new_worker_id()`` unless given).
    """

    def __init__(self, queue: str, lanes: Mapping[str, int], kinds: Mapping[str, str], *,
                 max_wait: float = 0.5, rescan: float = 1.0, window: int = 10_000,
                 claim_ttl: float = 5.0, claimant: str | None = None) -> None:
        unknown = set(lanes) - set(LANES) | {lane for lane in kinds.values() if lane not in lanes}
        if unknown:
            raise ConfigurationError(f"unknown or unsized lanes {sorted(unknown)}; lanes are "
                                     f"{', '.join(LANES)}")
        self.queue = queue
        self.lanes = {name: Lane(name, capacity) for name, capacity in lanes.items()}
        self.kinds = dict(kinds)
        self.max_wait, self.rescan, self.window, self.claim_ttl = max_wait, rescan, window, claim_ttl
        self.claimant = claimant or new_worker_id()
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._next_rescan = 0.0
        self._next_due: float | None = None
        self._ended: set[str] = set()  # jobs that ended here whose claims are still in Redis

    @property
    def capacity(self) -> int:
        return sum(lane.capacity for lane in self.lanes.values())

    def jobs(self) -> dict[str, bool]:
        """The job ids this worker holds -> whether arq has started them."""
        return {job_id: held_at == float("inf") for lane in self.lanes.values()
                for job_id, held_at in lane.held.items()}

    def lane_of(self, job_id: str) -> Lane:
        """The lane of an arq job id (``...:<kind>:<row>`` for ledger jobs; cron jobs: default)."""
        head, _, row = job_id.rpartition(":")
        kind = head.rpartition(":")[2] if row.isdigit() else ""
        return self.lanes[self.kinds.get(kind, "default")]

    def started(self, job_id: str) -> None:
        """arq started ``job_id``: its slot is held until :meth:`finished`."""
        lane = self.lane_of(job_id)
        lane.held[job_id] = float("inf")

    def finished(self, job_id: str) -> None:
        """``job_id`` ended (whatever the outcome): free its slot and look for more work."""
        lane = self.lane_of(job_id)
        if lane.held.pop(job_id, None) is not None:
            lane.hint = True
        self._ended.add(job_id)  # its claim goes with the next claim call (no extra round trip)
        self._wake.set()

    def announce(self, lanes: list[str]) -> None:
        """New jobs of ``lanes`` were sent to the queue."""
        for name in lanes:
            lane = self.lanes.get(name, self.lanes["default"])
            lane.hint = True
        self._wake.set()

    async def poll(self, redis: ArqRedis) -> list[bytes]:
        """The job ids arq should start now; waits up to ``max_wait`` for some."""
        loop = asyncio.get_running_loop()
        if self._listener is None or self._listener.done():
            self._listener = loop.create_task(self._listen(redis), name="rindle-dispatch-listen")
        deadline = loop.time() + self.max_wait
        while True:
            self._wake.clear()
            now = loop.time()
            self._release_unstarted(time.monotonic())
            if now >= self._next_rescan or (self._next_due is not None and now >= self._next_due):
                for lane in self.lanes.values():
                    lane.hint = True
                self._next_rescan, self._next_due = now + self.rescan, None
            wanted = {lane.name: lane.free for lane in self.lanes.values() if lane.hint and lane.free > 0}
            if wanted:
                claimed = await self._claim(redis, wanted, loop)
                if claimed:
                    return [job_id.encode() for job_id in claimed]
            until = min(t for t in (deadline, self._next_rescan, self._next_due) if t is not None)
            if until <= loop.time():
                return []
            try:
                async with asyncio.timeout(until - loop.time()):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _claim(self, redis: ArqRedis, wanted: dict[str, int],
                     loop: asyncio.AbstractEventLoop) -> list[str]:
        now_ms = int(time.time() * 1000)
        # redis-py types script arguments as str (it encodes ints too) and the result as sync | async
        result = await redis.eval(  # type: ignore[misc]
            _CLAIM, 1, self.queue, now_ms, int(self.claim_ttl * 1000), self.claimant, self.window,  # type: ignore[arg-type]
            json.dumps(self.kinds), json.dumps(wanted), in_progress_key_prefix, CLAIM_PREFIX,
            held_key(self.claimant), *(ended := list(self._ended)))
        self._ended.difference_update(ended)
        next_due, claimed = float(result[0]), [item.decode() for item in result[1:]]
        if next_due >= 0:
            self._next_due = loop.time() + max(0.0, (next_due - now_ms) / 1000)
        held_at = time.monotonic()
        got: dict[str, int] = {}
        for job_id in claimed:
            lane = self.lane_of(job_id)
            lane.held[job_id] = held_at
            got[lane.name] = got.get(lane.name, 0) + 1
        for name, count in wanted.items():
            if got.get(name, 0) < count:
                self.lanes[name].hint = False  # drained: wait for an announcement or a rescan
        return claimed

    def _release_unstarted(self, now: float) -> None:
        """Free slots of claimed jobs that arq never started (it found them running elsewhere)."""
        for lane in self.lanes.values():
            for job_id, held_at in list(lane.held.items()):
                if now - held_at > self.claim_ttl:
                    del lane.held[job_id]
                    lane.hint = True

    async def _listen(self, redis: ArqRedis) -> None:
        """Turn announcements on the wake-up channel into wake-ups; reconnect when cut."""
        failures = 0
        while True:
            pubsub = redis.pubsub()
            try:
                await pubsub.subscribe(wake_channel(self.queue))
                failures = 0
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.announce(message["data"].decode().split(","))
                    elif message.get("type") == "subscribe":
                        self.announce(list(self.lanes))  # (re)connected: look once
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: the rescans keep jobs moving meanwhile
                failures += 1
                log.warning("dispatch: wake-up channel lost (%s: %s); reconnecting", type(exc).__name__, exc)
                await asyncio.sleep(min(5.0, 0.1 * 2 ** failures))
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                except Exception:  # the connection is gone already
                    log.debug("dispatch: closing the wake-up subscription failed", exc_info=True)

    async def close(self) -> None:
        """Stop listening for announcements."""
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):
                pass
            self._listener = None


@contextmanager
def holding_slot(ctx: Mapping[str, Any]) -> Iterator[None]:
    """Hold the lane slot of the arq job running with ``ctx`` until the block ends.

    A no-op for workers without a dispatcher (e.g. a plain arq ``Worker``).
    """
    dispatcher: Dispatcher | None = ctx.get(DISPATCHER)
    if dispatcher is None:
        yield
        return
    dispatcher.started(ctx["job_id"])
    try:
        yield
    finally:
        dispatcher.finished(ctx["job_id"])


class OutageRetry(Retry):
    """The worker's Redis commands wait out an outage of up to ``budget`` seconds.

    arq's worker exits on the first Redis connection error (its poll, a job's
    bookkeeping); with this retry policy a command that cannot reach Redis is
    retried with backoff (50 ms doubling to 1 s) and a log line, so a worker rides
    out a Redis restart or failover and keeps its render processes.  After the
    budget the error is raised and the worker exits, for its supervisor to restart.
    """

    __slots__ = ("budget",)

    def __init__(self, budget: float = 120.0) -> None:
        # redis-py types supported_errors as RedisError subclasses; any exception class works
        super().__init__(ExponentialBackoff(cap=1.0, base=0.025), -1,
                         (RedisConnectionError, RedisTimeoutError, OSError))  # type: ignore[arg-type]
        self.budget = budget

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[[Any], Any]) -> T:
        self._backoff.reset()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        failures, started = 0, time.monotonic()
        while True:
            try:
                result = await do()
            except self._supported_errors as error:
                failures += 1
                await fail(error)
                waited = time.monotonic() - started
                if waited > self.budget:
                    log.error("Redis unreachable for %.0fs (%s); giving up", waited, error)
                    raise
                if failures == 1 or failures % 20 == 0:
                    log.warning("waiting for Redis (%s: %s); %.0fs so far, giving up after %.0fs",
                                type(error).__name__, error, waited, self.budget)
                await asyncio.sleep(self._backoff.compute(failures))
            else:
                if failures:
                    log.warning("Redis answers again after %.1fs", time.monotonic() - started)
                return result


def worker_connections(url: str) -> ConnectionPool:
    """The worker's Redis connections: commands wait out outages (:class:`OutageRetry`)."""
    return ConnectionPool.from_url(url, retry=OutageRetry(),
                                   retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError])


class WorkerRedis(ArqRedis):
    """The worker's Redis client: arq's queue read is answered by the dispatcher.

    dispatcher: decides which jobs of its queue to hand to arq; other calls are plain Redis.
    """

    def __init__(self, *args: Any, dispatcher: Dispatcher, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dispatcher = dispatcher

    async def zrangebyscore(self, name: Any, min: Any, max: Any, start: int | None = None,
                            num: int | None = None, withscores: bool = False,
                            score_cast_func: Any = float) -> Any:
        if name == self.dispatcher.queue and num is not None and not withscores:
            return await self.dispatcher.poll(self)  # arq's poll of its queue
        return await super().zrangebyscore(name, min, max, start=start, num=num, withscores=withscores,
                                           score_cast_func=score_cast_func)

    async def enqueue_job(self, function: str, *args: Any, **kwargs: Any) -> Any:
        job = await super().enqueue_job(function, *args, **kwargs)
        self.dispatcher.announce(["default"])  # arq's own cron jobs are enqueued through here
        return job
