"""``Rindle``: the object a host creates; it wires the parts and holds no logic."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from arq.worker import Function
from redis.asyncio import ConnectionPool

from .db import check_schema_name
from .db import migrate as migrations
from .db.transaction import Database
from .errors import ConfigurationError, RindleError
from .events import BaseEvent, EventBus, Handler
from .jobs import JobKind, arq_function
from .ledger import Ledger, LedgerSummary, Relay
from .profiles import Profile, index_profiles


class Rindle:
    """The media lifecycle of one application.

    database_url: PostgreSQL DSN; or pass ``pool``.
    pool: an asyncpg pool the host owns (Rindle does not close it).
    redis_url: where arq's queues live.
    storages: storage adapters by name; profiles refer to them by that name.
    profiles: the upload profiles.
    schema: the PostgreSQL schema of rindle_async's tables.
    queue: the arq queue every job kind uses unless ``queues`` routes it elsewhere.
    queues: job kind -> queue name, to scale kinds apart.
    relay: run the ledger relay in this process (on by default).
    relay_interval: seconds between relay sweeps (commits and NOTIFY wake it sooner).
    relay_listen: wake the relay with LISTEN/NOTIFY.
    pool_size: the size of the pool Rindle opens from ``database_url``.
    jobs: extra job kinds to register beside the built-in ones.
    """

    def __init__(self, *, database_url: str | None = None, pool: asyncpg.Pool | None = None,
                 redis_url: str = "redis://127.0.0.1:6379/0",
                 storages: Mapping[str, Any] | None = None, profiles: Iterable[Profile] = (),
                 schema: str = "rindle", queue: str = "rindle",
                 queues: Mapping[str, str] | None = None, relay: bool = True,
                 relay_interval: float = 5.0, relay_listen: bool = True, pool_size: int = 10,
                 jobs: Iterable[JobKind] = ()) -> None:
        if (database_url is None) == (pool is None):
            raise ConfigurationError("Rindle() needs exactly one of database_url= or pool=")
        if relay_interval <= 0:
            raise ConfigurationError(f"relay_interval={relay_interval} must be positive")
        self.database_url = database_url
        self.redis_url = redis_url
        self.schema = check_schema_name(schema)
        self.storages = dict(storages or {})
        self.profiles = index_profiles(profiles)
        for profile in self.profiles.values():
            if profile.storage not in self.storages:
                raise ConfigurationError(
                    f"profile {profile.name!r} uses storage {profile.storage!r}, but storages= has "
                    f"{sorted(self.storages) or 'none'}; add it or change Profile.storage")
        kinds: dict[str, JobKind] = {}
        for kind in jobs:
            if kind.name in kinds:
                raise ConfigurationError(f"job kind {kind.name!r} is registered twice")
            kinds[kind.name] = kind
        self.ledger = Ledger(schema=self.schema, kinds=kinds, queue=queue, routes=queues)
        self.bus = EventBus()
        self._given_pool = pool
        self._pool_size = pool_size
        self._relay_options = (relay, relay_interval, relay_listen)
        self._db: Database | None = None
        self._arq: ArqRedis | None = None
        self._relay: Relay | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Rindle:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the database pool, the arq client and the relay (``async with`` does this)."""
        if self._db is not None:
            raise RindleError("this Rindle is already open")
        pool = self._given_pool or await asyncpg.create_pool(
            self.database_url, min_size=1, max_size=self._pool_size)
        # No ping: a Redis that is down must not stop the host; jobs wait in the ledger.
        self._arq = ArqRedis(ConnectionPool.from_url(self.redis_url),
                             default_queue_name=self.ledger.queue)
        self._db = Database(pool, self.ledger, self.bus)
        enabled, interval, listen = self._relay_options
        if enabled:
            self._relay = Relay(self.ledger, pool, self._arq, interval=interval, listen=listen)
            self._db.relay = self._relay
            self._relay.start()

    async def close(self) -> None:
        """Stop the relay and close what :meth:`open` opened."""
        if self._relay is not None:
            await self._relay.stop()
            self._relay = None
        if self._arq is not None:
            await self._arq.aclose()
            self._arq = None
        if self._db is not None and self._given_pool is None:
            await self._db.pool.close()
        self._db = None

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RindleError("Rindle is not open; use `async with rindle:` or `await rindle.open()`")
        return self._db

    @property
    def pool(self) -> asyncpg.Pool:
        """The asyncpg pool in use."""
        return self.db.pool

    @property
    def arq(self) -> ArqRedis:
        """The arq Redis client in use."""
        self.db  # noqa: B018 - raises the "not open" error
        assert self._arq is not None
        return self._arq

    # -- schema --------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply pending migrations (idempotent, safe from several processes at once).

        Returns the versions this call applied.
        """
        async with self.pool.acquire() as conn:
            applied = await migrations.migrate(conn, self.schema)
        if self._relay is not None:
            self._relay.wake()
        return applied

    # -- transactions and events ---------------------------------------------------

    @asynccontextmanager
    async def transaction(self, conn: asyncpg.Connection | None = None
                          ) -> AsyncIterator[asyncpg.Connection]:
        """Yield a connection in an open transaction; staged jobs and events flush on commit.

        conn: the host's own connection (outside a transaction); a pooled one when None.
        Pass the yielded connection as ``conn=`` to Rindle calls to join the transaction.
        Nothing is sent or emitted if the block raises.
        """
        async with self.db.transaction(conn) as uow:
            yield uow.conn

    def subscribe(self, handler: Handler, *event_types: type[BaseEvent]):
        """Deliver events (all, or only ``event_types``) to ``handler`` after commit.

        handler: a function or coroutine function taking one event; errors are logged.
        event_types: event classes from ``rindle_async.events``; none means all.
        Returns a function that unsubscribes the handler.
        """
        return self.bus.subscribe(handler, *event_types)

    # -- ledger --------------------------------------------------------------------

    async def flush_jobs(self) -> int:
        """Send committed, unsent jobs to arq now; return how many were sent."""
        if self._relay is not None:
            return await self._relay.flush()
        return await self.ledger.flush(self.pool, self.arq)

    async def reconcile_jobs(self) -> int:
        """Re-send jobs that Redis lost; return how many were re-sent."""
        return await self.ledger.reconcile(self.pool, self.arq)

    async def ledger_summary(self) -> LedgerSummary:
        """Pending, enqueued and discarded job counts with the oldest ages."""
        async with self.pool.acquire() as conn:
            return await self.ledger.summary(conn)

    def arq_functions(self) -> list[Function]:
        """One arq function per registered job kind (the worker's ctx must hold ``rindle``)."""
        return [arq_function(kind) for kind in self.ledger.kinds.values()]
