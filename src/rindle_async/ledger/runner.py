"""Running one ledger job inside arq: attempts, retries, completion and discard.

arq carries only the ledger row id; the row holds the kind, the arguments and
the attempt count, so the truth about a job lives in PostgreSQL.  Each attempt
is counted and recorded in ``processing_runs`` before the handler runs, which
also catches attempts that died with their worker.  A handler that succeeds
ends inside :meth:`JobRun.complete`, whose transaction deletes the ledger row
together with the handler's own state change.  A retryable failure becomes
``arq.Retry`` with exponential backoff; the last failure (or one that is not
retryable) runs the kind's ``on_discard`` hook and marks the row discarded, in
one transaction.  Counting an attempt is one statement; so is finishing a job
whose handler did not complete it itself.

An attempt's timeout does not run while the job waits for a processing slot
(:meth:`JobRun.paused`): a job admitted behind others loses nothing by waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from arq import Retry
from arq.worker import Function, func

from ..dispatch import DISPATCHER, holding_slot
from .kinds import JobKind

if TYPE_CHECKING:
    from ..db.transaction import UnitOfWork
    from ..runtime import Runtime

log = logging.getLogger("rindle_async.jobs")
#: seconds a job's own bookkeeping (recording a retry, a discard) waits for a database that
#: went away (a restart, a cut connection) before the job is handed back to arq anyway
BOOKKEEPING_PATIENCE = 10.0
#: arq deliveries allowed beyond the ledger's tries: deliveries that found the database away
#: count no attempt, and must not use up arq's own limit
OUTAGE_DELIVERIES = 10


class JobRun:
    """One attempt at one ledger job, handed to the kind's handler."""

    def __init__(self, runtime: Runtime, kind: JobKind, job_id: int, args: Any,
                 attempt: int, run_id: int) -> None:
        self.runtime = runtime
        self.kind = kind
        self.id = job_id
        self.args = args
        self.attempt = attempt
        self.run_id = run_id
        self.completed = False
        self._deadline: anyio.CancelScope | None = None

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.kind.tries

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Stop this attempt's timeout while the block runs (e.g. waiting for a pool process)."""
        scope = self._deadline
        if scope is None:
            yield
            return
        remaining = scope.deadline - anyio.current_time()
        scope.deadline = float("inf")
        try:
            yield
        finally:
            scope.deadline = anyio.current_time() + remaining

    @asynccontextmanager
    async def complete(self) -> AsyncIterator[UnitOfWork]:
        """A transaction that also removes this job from the ledger when it commits."""
        async with self.runtime.db.transaction() as uow:
            yield uow
            await uow.conn.execute(_succeed_sql(self.runtime.schema), self.id, self.run_id)
        self.completed = True


def _finish_run_sql(schema: str) -> str:
    """Close processing run $1 with outcome $2 and error $3."""
    return (f"UPDATE {schema}.processing_runs SET outcome = $2, error = $3, finished_at = now(),"
            " duration_ms = (extract(epoch FROM now() - started_at) * 1000)::int WHERE id = $1")


def _succeed_sql(schema: str) -> str:
    """Delete job $1 and close its run $2 as succeeded: one statement."""
    return (f"WITH done AS (DELETE FROM {schema}.jobs WHERE id = $1)"
            f" UPDATE {schema}.processing_runs SET outcome = 'succeeded', error = NULL,"
            " finished_at = now(), duration_ms = (extract(epoch FROM now() - started_at) * 1000)::int"
            " WHERE id = $2")


async def _finish_run(uow: UnitOfWork, schema: str, run_id: int, outcome: str,
                      error: str | None) -> None:
    await uow.conn.execute(_finish_run_sql(schema), run_id, outcome, error)


def describe(exc: BaseException) -> str:
    """The error text stored in the ledger and in processing runs."""
    text = str(exc) or "no message"
    if isinstance(exc, TimeoutError):
        text = f"attempt timed out ({text})"
    return f"{type(exc).__name__}: {text}"[:4000]


async def _begin(runtime: Runtime, kind: JobKind, job_id: int, worker: str | None) -> JobRun | None:
    """Count the attempt and open its processing run, in one statement; None if the job is gone.

    A run of the job still "running" here died with its worker: it is closed as abandoned.
    """
    schema = runtime.schema
    row = await runtime.pool.fetchrow(
        f"WITH job AS (UPDATE {schema}.jobs SET attempts = attempts + 1, status = 'enqueued',"
        "   enqueued_at = coalesce(enqueued_at, now())"
        "   WHERE id = $1 AND status IN ('pending', 'enqueued') RETURNING attempts, args),"
        f" abandoned AS (UPDATE {schema}.processing_runs SET outcome = 'abandoned',"
        "   finished_at = now(), error = 'its worker ' || coalesce(worker, '(unknown)')"
        "   || ' stopped before the attempt finished (killed, crashed or lost its lease)'"
        "   WHERE job_id = $1 AND outcome = 'running' AND EXISTS (SELECT 1 FROM job)),"
        f" run AS (INSERT INTO {schema}.processing_runs (job_id, kind, asset_id, variant, attempt, worker)"
        "   SELECT $1, $2, (args->>'asset_id')::uuid, args->>'variant', attempts, $3 FROM job"
        "   RETURNING id)"
        " SELECT job.attempts, job.args, run.id AS run_id FROM job, run", job_id, kind.name, worker)
    if row is None:
        return None
    return JobRun(runtime, kind, job_id, kind.decode(row["args"]), row["attempts"],
                  row["run_id"])


async def _through_outage(statement: Callable[[], Awaitable[Any]]) -> None:
    """Run a bookkeeping statement, again and again while the database is away, for up to
    ``BOOKKEEPING_PATIENCE`` seconds; then raise the last error."""
    deadline, pause = time.monotonic() + BOOKKEEPING_PATIENCE, 0.1
    while True:
        try:
            await statement()
            return
        except Exception:
            if time.monotonic() + pause > deadline:
                raise
            await anyio.sleep(pause)
            pause = min(2 * pause, 2.0)


async def _discard(job: JobRun, error: str) -> None:
    schema = job.runtime.schema
    async with job.runtime.db.transaction() as uow:
        hook = job.kind.discard_hook
        if hook is not None:
            await hook(uow, job, error)
        await uow.conn.execute(
            f"UPDATE {schema}.jobs SET status = 'discarded', error = $2, discarded_at = now()"
            " WHERE id = $1", job.id, error)
        await _finish_run(uow, schema, job.run_id, "failed", error)
    log.error("job %s %s discarded after %d attempt(s): %s", job.kind.name, job.id, job.attempt, error)


async def run_job(runtime: Runtime, kind: JobKind, job_id: int, *, worker: str | None = None,
                  delivery: int = 1) -> str:
    """Run one attempt of ledger job ``job_id``; what arq calls for every kind.

    runtime: the opened runtime of this worker.
    kind: the job's kind.
    job_id: the ledger row id sent by the relay.
    worker: this worker's id, recorded on the attempt's processing run.
    delivery: how many times arq has handed over this job (its ``job_try``).
    """
    try:
        job = await _begin(runtime, kind, job_id, worker)
    except Exception as exc:  # the database is unreachable: nothing was counted, try later
        log.warning("job %s %s could not start: %s", kind.name, job_id, describe(exc))
        raise Retry(defer=kind.delay(delivery)) from exc
    if job is None:
        return "skipped: the job is no longer in the ledger (done or discarded)"
    if job.attempt > kind.tries:
        await _discard(job, f"gave up: {kind.tries} attempt(s) started and none finished; each "
                            "ended with its worker (killed, crashed or stalled: the input may be "
                            "what kills it)")
        return "discarded"
    started = time.monotonic()
    try:
        await _attempt(job)
    except Exception as exc:
        return await _failed(job, exc, delivery)
    log.debug("job %s %s succeeded in %.3fs", kind.name, job_id, time.monotonic() - started)
    return "succeeded"


async def _attempt(job: JobRun) -> None:
    """Run the handler within the kind's timeout; record the success unless it completed itself."""
    kind, runtime = job.kind, job.runtime
    try:
        with anyio.fail_after(kind.timeout) as deadline:
            job._deadline = deadline
            await kind.run(job)
    except TimeoutError:
        if not deadline.cancelled_caught:
            raise  # a timeout of the handler's own
        raise TimeoutError(f"{kind.name} ran longer than its {kind.timeout:g}s timeout") from None
    if not job.completed:  # nothing of its own to commit: one statement
        await runtime.pool.execute(_succeed_sql(runtime.schema), job.id, job.run_id)
        job.completed = True


async def _failed(job: JobRun, exc: Exception, delivery: int) -> str:
    """After an attempt raised: record a retry (and raise arq's Retry), or discard the job."""
    kind, runtime, error = job.kind, job.runtime, describe(exc)
    if job.completed:
        log.error("job %s %s failed after completing", kind.name, job.id, exc_info=exc)
        return "succeeded"
    if getattr(exc, "retryable", True) and not job.last_attempt:
        schema = runtime.schema
        # an error may ask for a longer pause (e.g. workers of two deploys disagreeing)
        delay = max(kind.delay(job.attempt), getattr(exc, "retry_after", 0.0))
        log.warning("job %s %s attempt %d/%d failed, retrying in %.1fs: %s",
                    kind.name, job.id, job.attempt, kind.tries, delay, error)
        try:
            await _through_outage(lambda: runtime.pool.execute(
                f"WITH noted AS (UPDATE {schema}.jobs SET error = $3 WHERE id = $4) "
                + _finish_run_sql(schema), job.run_id, "retrying", error, job.id))
        except Exception as lost:  # arq must still get the job back, or it drops it
            log.warning("job %s %s: attempt %d could not be recorded (%s); the next attempt "
                        "closes it", kind.name, job.id, job.attempt, describe(lost))
        raise Retry(defer=delay) from exc
    try:
        await _through_outage(lambda: _discard(job, error))
    except Exception as lost:  # the attempt stays counted; the next delivery discards
        log.warning("job %s %s: its discard could not be recorded (%s); trying again later",
                    kind.name, job.id, describe(lost))
        raise Retry(defer=kind.delay(delivery)) from exc
    return "discarded"


def runtime_of(ctx: dict[str, Any]) -> Runtime:
    """The runtime a job runs on: ``ctx["runtime"]`` (set by rindle's worker settings), or
    that of the opened Rindle in ``ctx["rindle"]`` (a host's own arq settings)."""
    runtime: Runtime | None = ctx.get("runtime")
    return runtime if runtime is not None else ctx["rindle"].runtime


def arq_function(kind: JobKind) -> Function:
    """The arq function that serves ``kind`` (the worker's ctx holds ``runtime`` or ``rindle``).

    When ctx holds a dispatcher (``rindle.worker_settings`` workers), the job's lane
    slot is held while it runs and freed the moment it ends.
    """

    async def coroutine(ctx: dict[str, Any], job_id: int) -> str:
        dispatcher = ctx.get(DISPATCHER)
        with holding_slot(ctx):
            return await run_job(runtime_of(ctx), kind, job_id,
                                 worker=dispatcher.claimant if dispatcher is not None else None,
                                 delivery=ctx.get("job_try") or 1)

    coroutine.__qualname__ = coroutine.__name__ = kind.name
    # arq's own limits sit above ours so the ledger, not arq, decides when to give up; an
    # attempt may run its own timeout plus at most as long again waiting for a process.
    return func(coroutine, name=kind.name, max_tries=kind.tries + OUTAGE_DELIVERIES,
                timeout=2 * kind.timeout + 10)
