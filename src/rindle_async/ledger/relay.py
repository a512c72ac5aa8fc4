"""The job ledger: background effects as rows, relayed to arq after commit.

A job is staged as a row of ``jobs`` inside the transaction that causes it; the
insert fires ``NOTIFY``, which PostgreSQL delivers only on commit.  The relay
claims pending rows with ``FOR UPDATE SKIP LOCKED``, sends each to arq with a
job id derived from the row id (so a second send is a no-op) and marks it
enqueued.  A batch is sent in one pipelined round trip, followed by an
announcement on each queue's wake-up channel, so idle workers start at once
(see ``dispatch.py``).  The reconciler re-sends enqueued rows that Redis no longer knows, so
a Redis that loses everything loses no work.  Rows leave the ledger when their
job succeeds (deleted in the job's own transaction) or give up (``discarded``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

import asyncpg
import msgspec
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms, in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

from ..errors import ConfigurationError, ValidationError

if TYPE_CHECKING:
    from ..db import Connection
    from .kinds import JobKind

log = logging.getLogger("rindle_async.ledger")

#: arq's ``enqueue_job`` for one job, without its three round trips: nothing is written
#: while the job or its result exists (so a second send is a no-op), as in arq.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[4])
return 1
"""


def wake_channel(queue: str) -> str:
    """The pub/sub channel on which sends to ``queue`` are announced (payload: the lanes)."""
    return f"rindle:wake:{queue}"


@dataclass(frozen=True)
class LedgerSummary:
    """Counts of ledger rows by status, and the age in seconds of the oldest of each."""

    pending: int
    enqueued: int
    discarded: int
    oldest_pending_age: float | None
    oldest_enqueued_age: float | None


class Ledger:
    """Stages, relays and reconciles the jobs of one schema."""

    def __init__(self, *, schema: str, kinds: Mapping[str, JobKind], queue: str,
                 routes: Mapping[str, str] | None = None) -> None:
        unknown = set(routes or ()) - set(kinds)
        if unknown:
            raise ConfigurationError(f"queues= names unknown job kinds {sorted(unknown)}; "
                                     f"known kinds are {sorted(kinds)}")
        self.schema = schema
        self.kinds = kinds
        self.queue = queue
        self.routes = dict(routes or {})
        self.instance: str | None = None  # read from the schema on first use

    def queue_for(self, kind: str) -> str:
        """The arq queue that serves ``kind``."""
        return self.routes.get(kind, self.queue)

    @property
    def queues(self) -> list[str]:
        """The arq queues that serve at least one job kind, sorted."""
        return sorted({self.queue_for(kind) for kind in self.kinds})

    def lane_for(self, kind: str) -> str:
        """The worker lane that runs ``kind`` ("render" or "default")."""
        job_kind = self.kinds.get(kind)
        return job_kind.lane if job_kind is not None else "default"

    def job_id(self, row_id: int, kind: str) -> str:
        """The arq job id of ledger row ``row_id``: queue, schema, schema instance, kind, row.

        The kind is part of the id so a worker can admit jobs by lane before reading them.
        """
        if self.instance is None:
            raise RuntimeError("the ledger's schema instance is not loaded yet")
        return f"{self.queue}:{self.schema}:{self.instance}:{kind}:{row_id}"

    async def load_instance(self, conn: Connection | asyncpg.Pool) -> str:
        """Read (once) the id that makes this schema's job ids unique across re-creations."""
        if self.instance is None:
            instance = await conn.fetchval(f"SELECT id FROM {self.schema}.instance LIMIT 1")
            self.instance = str(instance)[:8]
        return self.instance

    async def stage(self, conn: Connection, kind: str, args: Mapping[str, Any] | msgspec.Struct, *,
                    dedupe_key: str | None = None, run_after: datetime | None = None) -> int | None:
        """Insert a pending job in the caller's transaction; return its id.

        conn: a connection inside the transaction that causes the job.
        kind: a registered job kind.
        args: JSON-encodable arguments the job reads back from its row.
        dedupe_key: at most one pending job per key; a duplicate returns None.
        run_after: do not run before this time (default: now).
        """
        job_kind = self.kinds.get(kind)
        if job_kind is None:
            raise ValidationError(f"unknown job kind {kind!r}; registered kinds are {sorted(self.kinds)}")
        if not conn.is_in_transaction():
            raise ConfigurationError("jobs are staged inside a transaction; use rindle.transaction()")
        return cast(int | None, await conn.fetchval(
            f"INSERT INTO {self.schema}.jobs (kind, args, queue, dedupe_key, run_after, max_tries)"
            " VALUES ($1, $2::jsonb, $3, $4, coalesce($5, now()), $6)"
            " ON CONFLICT (dedupe_key) WHERE status = 'pending' AND dedupe_key IS NOT NULL"
            " DO NOTHING RETURNING id",
            kind, msgspec.json.encode(args).decode(), self.queue_for(kind), dedupe_key,
            run_after, job_kind.tries))

    async def flush(self, pool: asyncpg.Pool, arq: ArqRedis, *, batch: int = 200) -> int:
        """Send every pending row to arq and mark it enqueued; return how many were sent.

        pool: the database pool.
        arq: the arq Redis client.
        batch: rows claimed per transaction.
        """
        sent = 0
        await self.load_instance(pool)
        # Most wake-ups find nothing (another relay took the rows): one read, no transaction.
        if not await pool.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {self.schema}.jobs WHERE status = 'pending')"):
            return 0
        while True:
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    f"SELECT id, kind, queue, run_after FROM {self.schema}.jobs"
                    " WHERE status = 'pending' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED", batch)
                if not rows:
                    return sent
                # Redis is written while the rows are locked, so concurrent relays never
                # both send one row; a crash before commit leaves the rows pending and
                # the next send is a no-op thanks to the derived job id.
                await self._send(arq, rows)
                await conn.execute(
                    f"UPDATE {self.schema}.jobs SET status = 'enqueued', enqueued_at = now(),"
                    " sent_count = sent_count + 1 WHERE id = ANY($1::bigint[])",
                    [r["id"] for r in rows])
            sent += len(rows)
            if len(rows) < batch:
                return sent

    async def reconcile(self, pool: asyncpg.Pool, arq: ArqRedis, *, batch: int = 500) -> int:
        """Re-send enqueued rows whose job Redis no longer holds; return how many.

        pool: the database pool.
        arq: the arq Redis client.
        batch: rows examined per transaction.
        """
        resent, after = 0, 0
        await self.load_instance(pool)
        while True:
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    f"SELECT id, kind, queue, run_after FROM {self.schema}.jobs"
                    " WHERE status = 'enqueued' AND id > $1 ORDER BY id LIMIT $2"
                    " FOR UPDATE SKIP LOCKED", after, batch)
                if not rows:
                    break
                after = rows[-1]["id"]
                async with arq.pipeline(transaction=False) as pipe:
                    for r in rows:
                        job_id = self.job_id(r["id"], r["kind"])
                        pipe.exists(in_progress_key_prefix + job_id)
                        pipe.exists(job_key_prefix + job_id)
                        pipe.zscore(r["queue"], job_id)
                    found = await pipe.execute()
                lost = [r for i, r in enumerate(rows)
                        if not found[3 * i] and not (found[3 * i + 1] and found[3 * i + 2] is not None)]
                if lost:
                    # Leftovers (a result of a run that never finished the row, a job key
                    # without a queue entry) would make arq refuse the same job id.
                    await arq.delete(*[prefix + self.job_id(r["id"], r["kind"]) for r in lost
                                       for prefix in (job_key_prefix, result_key_prefix)])
                    await self._send(arq, lost)
                    await conn.execute(
                        f"UPDATE {self.schema}.jobs SET enqueued_at = now(), sent_count = sent_count + 1"
                        " WHERE id = ANY($1::bigint[])", [r["id"] for r in lost])
                resent += len(lost)
        if resent:
            log.warning("reconciler re-sent %d job(s) that Redis had lost", resent)
        return resent

    async def _send(self, arq: ArqRedis, rows: list[asyncpg.Record]) -> None:
        """Enqueue ``rows`` the way arq's ``enqueue_job`` does, in one round trip, and announce them."""
        now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
        lanes: dict[str, set[str]] = {}
        async with arq.pipeline(transaction=False) as pipe:
            for r in rows:
                job_id = self.job_id(r["id"], r["kind"])
                score = max(now_ms, int(r["run_after"].timestamp() * 1000))
                payload = serialize_job(r["kind"], (r["id"],), {}, None, now_ms)
                # redis-py types script arguments as str; it encodes bytes and ints as well
                pipe.eval(_ENQUEUE, 3, job_key_prefix + job_id, result_key_prefix + job_id, r["queue"],
                          payload, score, score - now_ms + expires_extra_ms, job_id)  # type: ignore[arg-type]
                lanes.setdefault(r["queue"], set()).add(self.lane_for(r["kind"]))
            for queue, names in lanes.items():
                pipe.publish(wake_channel(queue), ",".join(sorted(names)))
            await pipe.execute()

    async def has_pending(self, conn: Connection, dedupe_key: str, *, other_than: int) -> bool:
        """Whether a pending job with ``dedupe_key`` exists beside the row ``other_than``."""
        return bool(await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {self.schema}.jobs WHERE dedupe_key = $1 AND status = 'pending'"
            " AND id <> $2)", dedupe_key, other_than))

    async def summary(self, conn: Connection | asyncpg.Pool) -> LedgerSummary:
        """Counts by status and the oldest pending and enqueued ages."""
        row = await conn.fetchrow(
            "SELECT"
            " count(*) FILTER (WHERE status = 'pending') AS pending,"
            " count(*) FILTER (WHERE status = 'enqueued') AS enqueued,"
            " count(*) FILTER (WHERE status = 'discarded') AS discarded,"
            " extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')) AS p_age,"
            " extract(epoch FROM now() - min(enqueued_at) FILTER (WHERE status = 'enqueued')) AS e_age"
            f" FROM {self.schema}.jobs")
        assert row is not None  # an aggregate without GROUP BY returns one row
        return LedgerSummary(row["pending"], row["enqueued"], row["discarded"],
                             None if row["p_age"] is None else float(row["p_age"]),
                             None if row["e_age"] is None else float(row["e_age"]))


class Relay:
    """Moves committed jobs to arq: woken by LISTEN and by local commits, with a sweep.

    application_name: how the LISTEN connection appears in ``pg_stat_activity`` while it
        listens (it is a pooled connection, named back when it returns to the pool).
    """

    def __init__(self, ledger: Ledger, pool: asyncpg.Pool, arq: ArqRedis, *,
                 interval: float = 5.0, listen: bool = True,
                 application_name: str = "rindle_async listener") -> None:
        self.ledger = ledger
        self.application_name = application_name
        self.pool = pool
        self.arq = arq
        self.interval = interval
        self.listen = listen
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._listener: asyncpg.pool.PoolConnectionProxy | None = None
        self._closing = False

    def wake(self) -> None:
        """Ask for a flush now (called after a local commit that staged jobs)."""
        self._wake.set()

    async def flush(self) -> int:
        """Flush pending rows now; one flush at a time per process."""
        async with self._lock:
            return await self.ledger.flush(self.pool, self.arq)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rindle-relay")

    async def stop(self, timeout: float = 5.0) -> None:
        """Let a flush in progress finish (cancel it after ``timeout``), then stop."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            self._wake.set()
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        await self._unlisten()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self.listen and (self._listener is None or self._listener.is_closed()):
                    await self._subscribe()
                await self.flush()
                failures = 0
            except asyncpg.UndefinedTableError:
                # quiet the first time: a host may open Rindle and then migrate
                log.log(logging.WARNING if failures else logging.DEBUG,
                        "relay: table %s.jobs does not exist; run rindle.migrate()",
                        self.ledger.schema)
                failures += 1
            except Exception as exc:
                # Rows stay pending; the next wake-up or sweep sends them.
                log.warning("relay: flush failed (%s: %s); retrying", type(exc).__name__, exc)
                await self._unlisten()
                failures += 1
            if self._closing:  # stop() woke us: that was the last flush
                return
            timeout = self.interval if failures == 0 else min(self.interval, 0.5 * 2 ** failures)
            try:
                # asyncio.timeout, not wait_for: wait_for can swallow a cancel on 3.11
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def _subscribe(self) -> None:
        await self._unlisten()
        conn = await self.pool.acquire()
        try:
            await conn.execute("SELECT set_config('application_name', $1, false)",
                               self.application_name)
            await conn.add_listener(f"{self.ledger.schema}_jobs", self._on_notify)
            # a cut connection wakes the loop, which subscribes again at once
            conn.add_termination_listener(self._on_notify)
        except BaseException:
            await self.pool.release(conn)
            raise
        self._listener = conn

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _unlisten(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            try:
                conn.remove_termination_listener(self._on_notify)
                await conn.remove_listener(f"{self.ledger.schema}_jobs", self._on_notify)
                if not conn.is_closed():
                    await conn.execute("RESET application_name")  # the pool's own name again
            except Exception:  # a dead listener connection is closed by the pool anyway
                log.debug("relay: unlistening failed", exc_info=True)
            finally:  # whatever failed above, the pool gets its connection back
                try:
                    await self.pool.release(conn, timeout=5)
                except Exception:
                    log.debug("relay: releasing the listener connection failed", exc_info=True)
