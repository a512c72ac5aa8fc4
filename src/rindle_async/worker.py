"""The arq side: built-in job kinds, worker settings and cron.

    RINDLE_APP=myapp.media:rindle arq rindle_async.WorkerSettings

serves every job kind on the default queue.  ``RINDLE_QUEUE=name`` (or
``rindle.worker_settings(queue=name)``) serves only the kinds routed to that
queue with ``Rindle(queues=...)``, so e.g. variant rendering can get its own
pool of workers.  Cron (on the default queue's workers): the relay sweep and
the reconciler every minute, abort of incomplete uploads at 01:00, cleanup of
orphans at 02:00.  At startup a worker starts its processes, runs one relay
sweep and one reconciliation.

Jobs are handed to arq by a :class:`~rindle_async.dispatch.Dispatcher` (no
polling latency, admission by lane); see ``dispatch.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio
from arq.connections import RedisSettings
from arq.cron import cron

from .dispatch import DISPATCHER, Dispatcher, WorkerRedis, holding_slot, worker_connections
from .errors import ConfigurationError
from .ledger.kinds import SCHEDULES, Scheduled
from .ledger.runner import arq_function, runtime_of
from .ledger.stage import stage_scheduled
from .liveness import Liveness, WorkerInfo
from .processing.pool import ProcessingPool, default_size

if TYPE_CHECKING:
    from .app import Rindle
    from .ledger.kinds import JobKind
    from .ledger.relay import Ledger
    from .runtime import Runtime

log = logging.getLogger("rindle_async.worker")

#: Jobs of the default lane a worker runs at once (promotions, purges, maintenance, host kinds).
DEFAULT_LANE_SLOTS = 8


async def _send_and_reconcile(runtime: Runtime) -> tuple[int, int]:
    """Send pending ledger rows, then re-send what Redis lost; return both counts."""
    return await runtime.flush_jobs(), await runtime.reconcile_jobs()


async def relay_tick(ctx: dict[str, Any]) -> str:
    """Cron, every minute: send pending ledger rows and re-send what Redis lost."""
    with holding_slot(ctx):
        sent, resent = await _send_and_reconcile(runtime_of(ctx))
    return f"sent {sent}, re-sent {resent}"


def _scheduled(entry: Scheduled) -> Any:
    """The arq cron job that stages ``entry`` (once per day; a pending one is not doubled)."""

    async def stage(ctx: dict[str, Any]) -> str:
        runtime: Runtime = runtime_of(ctx)
        with holding_slot(ctx):
            async with runtime.db.transaction() as uow:
                job_id = await stage_scheduled(uow, entry.kind, entry.args)
        name = entry.kind.name
        return f"staged {name} as job {job_id}" if job_id else f"{name} is already pending"

    stage.__qualname__ = stage.__name__ = f"stage_{entry.kind.name}"
    return cron(stage, name=f"rindle_{entry.kind.name}", hour=entry.hour, minute=entry.minute,
                second=0)


@dataclass
class _Lifecycle:
    """What a worker does at arq's startup and shutdown, for one settings class."""

    rindle: Rindle
    queue: str
    size: int
    kinds: int
    lanes: dict[str, int]
    dispatcher: Dispatcher
    redis_pool: WorkerRedis
    in_progress_ttl: float
    leases: list[Liveness] = field(default_factory=list)

    async def startup(self, ctx: dict[str, Any]) -> None:
        """Open the Rindle, start the worker's processes and lease, send and re-send what is due."""
        rindle = self.rindle
        if not rindle.is_open:
            await rindle.open(as_worker=True)
        runtime = rindle.runtime
        if self.size != runtime.processing.size:  # the worker's own pool; the host's stays as it is
            runtime = replace(runtime, processing=ProcessingPool(self.size))
        ctx["rindle"], ctx["runtime"] = rindle, runtime
        await anyio.to_thread.run_sync(runtime.processing.start)
        liveness = Liveness(self.redis_pool, WorkerInfo.of(self.dispatcher.claimant, self.queue, self.size),
                            jobs=self.dispatcher.jobs, in_progress_ttl=self.in_progress_ttl,
                            on_redis_reset=lambda: _send_and_reconcile(runtime))
        await liveness.start()  # also frees the jobs of workers that died
        self.leases.append(liveness)
        sent, resent = await _send_and_reconcile(runtime)
        stale = await rindle.mark_stale_variants()
        log.info("rindle worker on queue %s: %d job kind(s), %d render process(es), lanes %s; "
                 "startup sent %d, re-sent %d, marked %d stale variant(s)", self.queue, self.kinds,
                 self.size, self.lanes, sent, resent, stale)

    async def shutdown(self, ctx: dict[str, Any]) -> None:
        """Stop handing out jobs and the lease; close the worker's own processes and the Rindle."""
        await self.dispatcher.close()
        for liveness in self.leases:
            await liveness.stop()
        runtime: Runtime | None = ctx.get("runtime")
        hosts = self.rindle.runtime.processing if self.rindle.is_open else None
        if runtime is not None and runtime.processing is not hosts:
            await anyio.to_thread.run_sync(runtime.processing.close)
        await self.rindle.close()


def _served_kinds(ledger: Ledger, queue: str) -> list[JobKind]:
    """The job kinds routed to ``queue``; ConfigurationError when none is."""
    served_queues = {ledger.queue, *ledger.routes.values()}
    if queue not in served_queues:
        raise ConfigurationError(f"queue {queue!r} serves no job kind; queues in use: "
                                 f"{', '.join(sorted(served_queues))}")
    return [k for k in ledger.kinds.values() if ledger.queue_for(k.name) == queue]


def worker_settings(rindle: Rindle, *, queue: str | None = None, processes: int | None = None,
                    concurrency: dict[str, int] | None = None, **overrides: Any) -> type:
    """An arq settings class serving ``rindle``'s jobs on one queue.

    rindle: the host's Rindle (opened by the worker at startup, closed at shutdown).
    queue: the arq queue to serve (default: the Rindle's default queue, with cron).
    processes: libvips render processes (default: the Rindle's, i.e. every usable core).
    concurrency: jobs run at once per lane: "render" (default 2 x processes, so each
        process has its next job ready) and "default" (8: promotions, purges, maintenance).
    overrides: other arq Worker settings (poll_delay, job_timeout, ...).
    """
    config = rindle.config
    queue = queue or config.ledger.queue
    kinds = _served_kinds(config.ledger, queue)
    size = processes or config.processes or default_size()
    lanes = {"render": 2 * size, "default": DEFAULT_LANE_SLOTS, **(concurrency or {})}
    dispatcher = Dispatcher(queue, lanes, {k.name: k.lane for k in kinds})
    job_timeout = max((k.timeout for k in kinds), default=60.0) + 5
    functions = [arq_function(kind) for kind in kinds]
    redis_pool = WorkerRedis(worker_connections(config.redis_url), dispatcher=dispatcher,
                             default_queue_name=queue)
    # arq's in-progress lease: its longest function timeout + 10 s
    lifecycle = _Lifecycle(rindle, queue, size, len(kinds), lanes, dispatcher, redis_pool,
                           in_progress_ttl=max([job_timeout, *(f.timeout_s or 0 for f in functions)]) + 10)
    settings: dict[str, Any] = {
        "functions": functions,
        "queue_name": queue,
        "redis_pool": redis_pool,
        "redis_settings": RedisSettings.from_dsn(config.redis_url),  # for `arq --check`
        "ctx": {DISPATCHER: dispatcher},
        "on_startup": lifecycle.startup,
        "on_shutdown": lifecycle.shutdown,
        "cron_jobs": [],
        # results are not read (the ledger is the record); kept a minute so a duplicate send is a no-op
        "keep_result": 60,
        # the dispatcher admits jobs by lane; arq's own limit only needs to stay out of its way
        "max_jobs": dispatcher.capacity + 1,
        # the dispatcher waits for work itself; arq must not add a sleep after each handover
        "poll_delay": 0.005,
        # arq's in-progress lease follows from it; a dead worker's jobs are freed sooner (liveness.py)
        "job_timeout": job_timeout,
    }
    if queue == config.ledger.queue:
        settings["cron_jobs"] = [cron(relay_tick, name="rindle_relay_tick", second=0),
                                 *(_scheduled(entry) for entry in SCHEDULES)]
    settings.update(overrides)
    return type(f"RindleWorkerSettings_{queue}", (), settings)
