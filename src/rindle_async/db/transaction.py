"""Units of work: a transaction that stages jobs and events for after commit.

Every write rindle_async makes goes through :meth:`Database.transaction`.  Jobs
are ledger rows, so they commit or vanish with the transaction; events wait in
memory and are delivered only after the outermost transaction commits.  A nested
unit (a Rindle call made with ``conn=`` inside ``rindle.transaction()``) runs in
a savepoint, and its events are dropped if that savepoint rolls back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec

from ..errors import TransactionError
from ..events import BaseEvent, EventBus

if TYPE_CHECKING:
    from ..ledger.relay import Ledger, Relay
    from . import Connection


_in_transaction: ContextVar[bool] = ContextVar("rindle_in_transaction", default=False)


def in_transaction() -> bool:
    """Whether the current task is inside a Rindle unit of work (storage I/O must not be)."""
    return _in_transaction.get()


class UnitOfWork:
    """One open transaction: its connection, staged events and staged jobs."""

    def __init__(self, conn: Connection, schema: str, ledger: Ledger) -> None:
        self.conn = conn
        self.schema = schema
        self.ledger = ledger
        self.events: list[BaseEvent] = []
        self.staged_jobs = 0
        #: callbacks run inside the transaction just before it commits, in order
        self.before_commit: list[Callable[[UnitOfWork], Awaitable[None]]] = []

    def emit(self, event: BaseEvent) -> None:
        """Queue ``event`` for delivery after commit."""
        self.events.append(event)

    async def stage(self, kind: str, args: Mapping[str, Any] | msgspec.Struct, *, dedupe_key: str | None = None,
                    run_after: datetime | None = None) -> int | None:
        """Stage a background job in this transaction; see :meth:`Ledger.stage`."""
        job_id = await self.ledger.stage(self.conn, kind, args, dedupe_key=dedupe_key,
                                         run_after=run_after)
        if job_id is not None:
            self.staged_jobs += 1
        return job_id


async def keep_session(conn: Connection) -> None:
    """The ``reset`` of rindle_async's own pool: skip asyncpg's reset query on release.

    asyncpg resets every connection it takes back (one more round trip each time).
    rindle_async's own statements leave no session state behind (its advisory locks are
    released in ``finally``, its LISTEN is undone before release), and connections that
    ran host statements are reset explicitly (``Database.transaction(hosted=True)``).
    """


class Database:
    """The pool, and the units of work open on its connections.

    pool: the asyncpg pool.
    schema: rindle_async's schema.
    ledger: where units of work stage jobs.
    bus: where their events are delivered after commit.
    relay: woken after a commit that staged jobs (None: another process relays).
    """

    def __init__(self, pool: asyncpg.Pool, schema: str, ledger: Ledger, bus: EventBus, *,
                 relay: Relay | None = None) -> None:
        self.pool = pool
        self.schema = schema
        self.ledger = ledger
        self.bus = bus
        self.relay = relay
        self._open: dict[int, UnitOfWork] = {}

    @asynccontextmanager
    async def transaction(self, conn: Connection | None = None, *,
                          hosted: bool = False) -> AsyncIterator[UnitOfWork]:
        """Open a unit of work, on ``conn`` when given, else on a pooled connection.

        conn: a connection of the host's; inside ``rindle.transaction(conn)`` the
            work joins that transaction (as a savepoint).
        hosted: the host runs its own statements in it; a pooled connection is then reset
            (session settings, advisory locks, LISTEN) before it goes back to the pool.
        """
        if conn is None:
            async with self.pool.acquire() as pooled:
                try:
                    async with self._outermost(pooled) as uow:
                        yield uow
                finally:
                    if hosted:
                        await pooled.reset()
            # after the connection went back: a hook that calls Rindle needs one of its own
            await self._after_commit(uow)
            return
        joined = self._open.get(id(conn))
        if joined is None:
            if conn.is_in_transaction():
                raise TransactionError(
                    "this connection is in a transaction that rindle_async did not open, so the "
                    "jobs and events it stages could not be flushed after commit; open it with "
                    "`async with rindle.transaction(conn) as conn:` instead")
            async with self._outermost(conn) as uow:
                yield uow
            await self._after_commit(uow)
            return
        marks = len(joined.events), len(joined.before_commit)
        try:
            async with conn.transaction():
                yield joined
        except BaseException:  # the savepoint rolled back: so does what it queued
            del joined.events[marks[0]:]
            del joined.before_commit[marks[1]:]
            raise

    @asynccontextmanager
    async def _outermost(self, conn: Connection) -> AsyncIterator[UnitOfWork]:
        uow = UnitOfWork(conn, self.schema, self.ledger)
        self._open[id(conn)] = uow
        token = _in_transaction.set(True)
        failure: BaseException | None = None
        try:
            async with conn.transaction():
                try:
                    yield uow
                    for callback in uow.before_commit:
                        await callback(uow)
                except BaseException as exc:
                    failure = exc
                    raise
        except asyncpg.InterfaceError as exc:
            # On a connection the server cut, asyncpg's rollback raises "the underlying
            # connection is closed" in place of what ended the block (the server's reason,
            # a timeout's cancellation): raise that instead.
            if failure is not None and exc is not failure:
                raise failure from None
            raise
        finally:
            _in_transaction.reset(token)
            del self._open[id(conn)]

    async def _after_commit(self, uow: UnitOfWork) -> None:
        """Wake the relay and deliver the events of a committed unit of work."""
        if uow.staged_jobs and self.relay is not None:
            self.relay.wake()
        if uow.events:
            await self.bus.deliver(uow.events)
