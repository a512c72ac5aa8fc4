"""Running one ledger job inside arq: attempts, retries, completion and discard.

arq carries only the ledger row id; the row holds the kind, the arguments and
the attempt count, so the truth about a job lives in PostgreSQL.  Each attempt
is counted and recorded in ``processing_runs`` before the handler runs, which
also catches attempts that died with their worker.  A handler that succeeds
ends inside :meth:`JobRun.complete`, whose transaction deletes the ledger row
together with the handler's own state change.  A retryable failure becomes
``arq.Retry`` with exponential backoff; the last failure (or one that is not
retryable) runs the kind's ``on_discard`` hook and marks the row discarded, in
one transaction.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from arq import Retry
from arq.worker import Function, func

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .app import Rindle
    from .db.transaction import UnitOfWork

log = logging.getLogger("rindle_async.jobs")


@dataclass(frozen=True)
class JobKind:
    """A kind of background job: its handler and how hard to try.

    name: the arq function name and the ``kind`` stored in ledger rows.
    handler: ``async def handler(job: JobRun) -> None``.
    tries: attempts before the job is discarded.
    timeout: seconds one attempt may run before it counts as failed.
    backoff: seconds before the second attempt; doubles each try.
    max_backoff: upper bound of the delay between attempts.
    on_discard: ``async def on_discard(uow, job, error) -> None``, run in the discard transaction.
    """

    name: str
    handler: Callable[[JobRun], Awaitable[None]]
    tries: int = 3
    timeout: float = 300.0
    backoff: float = 2.0
    max_backoff: float = 600.0
    on_discard: Callable[[UnitOfWork, JobRun, str], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise ConfigurationError(f"JobKind {self.name!r}: tries={self.tries} must be at least 1")
        if self.timeout <= 0:
            raise ConfigurationError(f"JobKind {self.name!r}: timeout={self.timeout} must be positive")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (with up to 25% jitter)."""
        base = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return base * (1 + random.random() / 4)


class JobRun:
    """One attempt at one ledger job, handed to the kind's handler."""

    def __init__(self, rindle: Rindle, kind: JobKind, job_id: int, args: dict[str, Any],
                 attempt: int, run_id: int) -> None:
        self.rindle = rindle
        self.kind = kind
        self.id = job_id
        self.args = args
        self.attempt = attempt
        self.run_id = run_id
        self.completed = False

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.kind.tries

    @asynccontextmanager
    async def complete(self) -> AsyncIterator[UnitOfWork]:
        """A transaction that also removes this job from the ledger when it commits."""
        schema = self.rindle.schema
        async with self.rindle.db.transaction() as uow:
            yield uow
            await uow.conn.execute(f"DELETE FROM {schema}.jobs WHERE id = $1", self.id)
            await _finish_run(uow, schema, self.run_id, "succeeded", None)
        self.completed = True


async def _finish_run(uow: UnitOfWork, schema: str, run_id: int, outcome: str,
                      error: str | None) -> None:
    await uow.conn.execute(
        f"UPDATE {schema}.processing_runs SET outcome = $2, error = $3, finished_at = now(),"
        " duration_ms = (extract(epoch FROM now() - started_at) * 1000)::int WHERE id = $1",
        run_id, outcome, error)


def describe(exc: BaseException) -> str:
    """The error text stored in the ledger and in processing runs."""
    text = str(exc) or "no message"
    if isinstance(exc, TimeoutError):
        text = f"attempt timed out ({text})"
    return f"{type(exc).__name__}: {text}"[:4000]


async def _begin(rindle: Rindle, kind: JobKind, job_id: int) -> JobRun | None:
    """Count the attempt and open its processing run; None if the job is gone."""
    schema = rindle.schema
    async with rindle.db.transaction() as uow:
        row = await uow.conn.fetchrow(
            f"UPDATE {schema}.jobs SET attempts = attempts + 1, status = 'enqueued',"
            " enqueued_at = coalesce(enqueued_at, now())"
            " WHERE id = $1 AND status IN ('pending', 'enqueued') RETURNING attempts, args", job_id)
        if row is None:
            return None
        # An attempt still "running" here died with its worker.
        await uow.conn.execute(
            f"UPDATE {schema}.processing_runs SET outcome = 'abandoned', finished_at = now(),"
            " error = 'the worker stopped before the attempt finished'"
            " WHERE job_id = $1 AND outcome = 'running'", job_id)
        args = msgspec.json.decode(row["args"])
        run_id = await uow.conn.fetchval(
            f"INSERT INTO {schema}.processing_runs (job_id, kind, asset_id, variant, attempt)"
            " VALUES ($1, $2, $3::uuid, $4, $5) RETURNING id",
            job_id, kind.name, args.get("asset_id"), args.get("variant"), row["attempts"])
    return JobRun(rindle, kind, job_id, args, row["attempts"], run_id)


async def _discard(job: JobRun, error: str) -> None:
    schema = job.rindle.schema
    async with job.rindle.db.transaction() as uow:
        if job.kind.on_discard is not None:
            await job.kind.on_discard(uow, job, error)
        await uow.conn.execute(
            f"UPDATE {schema}.jobs SET status = 'discarded', error = $2, discarded_at = now()"
            " WHERE id = $1", job.id, error)
        await _finish_run(uow, schema, job.run_id, "failed", error)
    log.error("job %s %s discarded after %d attempt(s): %s", job.kind.name, job.id, job.attempt, error)


async def run_job(rindle: Rindle, kind: JobKind, job_id: int) -> str:
    """Run one attempt of ledger job ``job_id``; what arq calls for every kind.

    rindle: the opened Rindle of this worker.
    kind: the job's kind.
    job_id: the ledger row id sent by the relay.
    """
    try:
        job = await _begin(rindle, kind, job_id)
    except Exception as exc:  # the database is unreachable: nothing was counted, try later
        log.warning("job %s %s could not start: %s", kind.name, job_id, describe(exc))
        raise Retry(defer=kind.delay(1)) from exc
    if job is None:
        return "skipped: the job is no longer in the ledger (done or discarded)"
    if job.attempt > kind.tries:
        await _discard(job, f"gave up: {kind.tries} attempt(s) started and none finished")
        return "discarded"
    started = time.monotonic()
    try:
        with anyio.fail_after(kind.timeout):
            await kind.handler(job)
        if not job.completed:
            async with job.complete():
                pass
    except Exception as exc:
        error = describe(exc)
        if job.completed:
            log.exception("job %s %s failed after completing", kind.name, job_id)
            return "succeeded"
        if getattr(exc, "retryable", True) and not job.last_attempt:
            async with rindle.db.transaction() as uow:
                await uow.conn.execute(
                    f"UPDATE {rindle.schema}.jobs SET error = $2 WHERE id = $1", job_id, error)
                await _finish_run(uow, rindle.schema, job.run_id, "retrying", error)
            # an error may ask for a longer pause (e.g. workers of two deploys disagreeing)
            delay = max(kind.delay(job.attempt), getattr(exc, "retry_after", 0.0))
            log.warning("job %s %s attempt %d/%d failed, retrying in %.1fs: %s",
                        kind.name, job_id, job.attempt, kind.tries, delay, error)
            raise Retry(defer=delay) from exc
        await _discard(job, error)
        return "discarded"
    log.debug("job %s %s succeeded in %.3fs", kind.name, job_id, time.monotonic() - started)
    return "succeeded"


def arq_function(kind: JobKind) -> Function:
    """The arq function that serves ``kind`` (the worker's ctx holds ``rindle``)."""

    async def coroutine(ctx: dict[str, Any], job_id: int) -> str:
        return await run_job(ctx["rindle"], kind, job_id)

    coroutine.__qualname__ = coroutine.__name__ = kind.name
    # arq's own limits sit above ours so the ledger, not arq, decides when to give up.
    return func(coroutine, name=kind.name, max_tries=kind.tries + 2, timeout=kind.timeout + 5)
