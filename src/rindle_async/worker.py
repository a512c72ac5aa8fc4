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
import os
import time
from typing import TYPE_CHECKING, Any

import anyio
from arq.connections import RedisSettings
from arq.cron import cron

from .dispatch import DISPATCHER, Dispatcher, WorkerRedis, holding_slot, worker_connections
from .ledger.kinds import SCHEDULES, Scheduled
from .ledger.stage import stage_scheduled
from .liveness import Liveness, WorkerInfo
from .processing.pool import ProcessingPool

if TYPE_CHECKING:
    from .app import Rindle

log = logging.getLogger("rindle_async.worker")

#: Jobs of the default lane a worker runs at once (promotions, purges, maintenance, host kinds).
DEFAULT_LANE_SLOTS = 8


async def _send_and_reconcile(rindle: Rindle) -> tuple[int, int]:
    """Send pending ledger rows, then re-send what Redis lost; return both counts."""
    return await rindle.flush_jobs(), await rindle.reconcile_jobs()


async def relay_tick(ctx: dict[str, Any]) -> str:
    """Cron, every minute: send pending ledger rows and re-send what Redis lost."""
    with holding_slot(ctx):
        sent, resent = await _send_and_reconcile(ctx["rindle"])
    return f"sent {sent}, re-sent {resent}"


def _scheduled(entry: Scheduled) -> Any:
    """The arq cron job that stages ``entry`` (once per day; a pending one is not doubled)."""

    async def stage(ctx: dict[str, Any]) -> str:
        rindle: Rindle = ctx["rindle"]
        with holding_slot(ctx):
            async with rindle.db.transaction() as uow:
                job_id = await stage_scheduled(uow, entry.kind, entry.args)
        name = entry.kind.name
        return f"staged {name} as job {job_id}" if job_id else f"{name} is already pending"

    stage.__qualname__ = stage.__name__ = f"stage_{entry.kind.name}"
    return cron(stage, name=f"rindle_{entry.kind.name}", hour=entry.hour, minute=entry.minute,
                second=0)


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
    queue = queue or rindle.ledger.queue
    kinds = [k for k in rindle.ledger.kinds.values() if rindle.ledger.queue_for(k.name) == queue]
    served_queues = {rindle.ledger.queue, *rindle.ledger.routes.values()}
    if queue not in served_queues:
        from .errors import ConfigurationError

        raise ConfigurationError(f"queue {queue!r} serves no job kind; queues in use: "
                                 f"{', '.join(sorted(served_queues))}")
    from .ledger.runner import arq_function

    size = processes or rindle.processing.size
    lanes = {"render": 2 * size, "default": DEFAULT_LANE_SLOTS, **(concurrency or {})}
    dispatcher = Dispatcher(queue, lanes, {k.name: k.lane for k in kinds})
    job_timeout = max((k.timeout for k in kinds), default=60.0) + 5
    functions = [arq_function(kind) for kind in kinds]
    # arq's in-progress lease: its longest function timeout + 10 s
    in_progress_ttl = max([job_timeout, *(f.timeout_s or 0 for f in functions)]) + 10
    redis_pool = WorkerRedis(worker_connections(rindle.redis_url), dispatcher=dispatcher,
                             default_queue_name=queue)
    leases: list[Liveness] = []

    async def on_startup(ctx: dict[str, Any]) -> None:
        if processes is not None and processes != rindle.processing.size:
            rindle.processing = ProcessingPool(processes)
        if not rindle.is_open:
            rindle.application_name = f"{rindle.application_name} worker"  # in pg_stat_activity
            await rindle.open()
        ctx["rindle"] = rindle
        await anyio.to_thread.run_sync(rindle.processing.start)
        host, pid, _ = dispatcher.claimant.rsplit(":", 2)
        liveness = Liveness(redis_pool, WorkerInfo(dispatcher.claimant, queue, host, int(pid), time.time(),
                                                   rindle.processing.size),
                            jobs=dispatcher.jobs, in_progress_ttl=in_progress_ttl,
                            on_redis_reset=lambda: _send_and_reconcile(rindle))
        await liveness.start()  # also frees the jobs of workers that died
        leases.append(liveness)
        sent, resent = await _send_and_reconcile(rindle)
        stale = await rindle.mark_stale_variants()
        log.info("rindle worker on queue %s: %d job kind(s), %d render process(es), lanes %s; "
                 "startup sent %d, re-sent %d, marked %d stale variant(s)", queue, len(kinds),
                 rindle.processing.size, lanes, sent, resent, stale)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await dispatcher.close()
        for liveness in leases:
            await liveness.stop()
        await rindle.close()

    settings: dict[str, Any] = {
        "functions": functions,
        "queue_name": queue,
        "redis_pool": redis_pool,
        "redis_settings": RedisSettings.from_dsn(rindle.redis_url),  # for `arq --check`
        "ctx": {DISPATCHER: dispatcher},
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
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
    if queue == rindle.ledger.queue:
        settings["cron_jobs"] = [cron(relay_tick, name="rindle_relay_tick", second=0),
                                 *(_scheduled(entry) for entry in SCHEDULES)]
    settings.update(overrides)
    return type(f"RindleWorkerSettings_{queue}", (), settings)


def from_environment() -> type:
    """``WorkerSettings`` for ``arq``: the Rindle named by RINDLE_APP, the queue in RINDLE_QUEUE."""
    from .app_loader import load_app

    spec = os.environ.get("RINDLE_APP")
    if not spec:
        raise RuntimeError("set RINDLE_APP=module:attribute to the host's Rindle object, e.g. "
                           "RINDLE_APP=myapp.media:rindle arq rindle_async.WorkerSettings")
    processes = os.environ.get("RINDLE_PROCESSES")
    return load_app(spec).worker_settings(queue=os.environ.get("RINDLE_QUEUE") or None,
                                          processes=int(processes) if processes else None)
