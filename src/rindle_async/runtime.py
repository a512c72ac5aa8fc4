"""What an opened Rindle runs on: its validated configuration and the parts built from it.

``Config`` is everything ``Rindle(...)`` validated, fixed at construction.  ``Runtime``
is built once by :func:`open_runtime`, in dependency order (database pool, arq client,
relay, units of work, storages), and never changed afterwards: services and job handlers
receive it, or the one part they need, instead of the facade.  A worker that wants its
own process pool makes a copy with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import anyio
import asyncpg
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from .db import server_settings
from .db.transaction import Database, keep_session
from .events import EventBus
from .ledger.relay import Ledger, Relay
from .processing.pool import ProcessingPool
from .profiles import Profile
from .storage.base import Storage


@dataclass(frozen=True)
class RelaySettings:
    """Whether and how this process relays committed jobs to arq.

    enabled: run the relay in this process.
    interval: seconds between sweeps (commits and NOTIFY wake it sooner).
    listen: wake it with LISTEN/NOTIFY.
    """

    enabled: bool = True
    interval: float = 5.0
    listen: bool = True


@dataclass(frozen=True)
class Config:
    """A Rindle's validated configuration (see :class:`~rindle_async.Rindle` for each field)."""

    database_url: str | None
    pool: asyncpg.Pool | None
    redis_url: str
    schema: str
    storages: Mapping[str, Storage]
    profiles: Mapping[str, Profile]
    ledger: Ledger
    relay: RelaySettings
    pool_size: int
    application_name: str
    processes: int | None
    detect_stale: bool


@dataclass(frozen=True)
class Runtime:
    """The opened parts of one Rindle.

    config: the configuration they were opened from (profiles, storages, ledger, ...).
    db: the asyncpg pool and the units of work on it.
    events: the hook bus events are delivered on after commit.
    processing: the libvips process pool (started by workers).
    arq: the Redis client jobs are sent with.
    relay: this process's relay, or None when it runs none.
    """

    config: Config
    db: Database
    events: EventBus
    processing: ProcessingPool
    arq: ArqRedis
    relay: Relay | None = None

    @property
    def profiles(self) -> Mapping[str, Profile]:
        """The upload profiles by name."""
        return self.config.profiles

    @property
    def storages(self) -> Mapping[str, Storage]:
        """The storage adapters by name."""
        return self.config.storages

    @property
    def ledger(self) -> Ledger:
        """The job ledger (kinds, queues, staging, flush, reconcile)."""
        return self.config.ledger

    @property
    def pool(self) -> asyncpg.Pool:
        """The asyncpg pool."""
        return self.db.pool

    @property
    def schema(self) -> str:
        """rindle_async's PostgreSQL schema."""
        return self.db.schema

    async def flush_jobs(self) -> int:
        """Send committed, unsent jobs to arq now; return how many were sent."""
        if self.relay is not None:
            return await self.relay.flush()
        return await self.ledger.flush(self.pool, self.arq)

    async def reconcile_jobs(self) -> int:
        """Re-send jobs that Redis lost; return how many were re-sent."""
        return await self.ledger.reconcile(self.pool, self.arq)


async def open_runtime(config: Config, bus: EventBus, *, application_name: str | None = None,
                       processing: ProcessingPool | None = None) -> Runtime:
    """Open the pool, the arq client, the relay and the storages; return the runtime.

    config: the Rindle's configuration.
    bus: the Rindle's event bus (its subscriptions outlive an open/close).
    application_name: how the connections appear in ``pg_stat_activity`` (default: the config's).
    processing: the process pool (default: a new one of ``config.processes``).
    What did open is closed again when a later step fails.
    """
    name = application_name or config.application_name
    pool = config.pool or await asyncpg.create_pool(
        config.database_url, min_size=1, max_size=config.pool_size, reset=keep_session,
        server_settings=server_settings(config.database_url or "", name))
    # No ping: a Redis that is down must not stop the host; jobs wait in the ledger.
    arq = ArqRedis(ConnectionPool.from_url(config.redis_url), default_queue_name=config.ledger.queue)
    relay = None
    if config.relay.enabled:
        relay = Relay(config.ledger, pool, arq, interval=config.relay.interval,
                      listen=config.relay.listen, application_name=f"{name} listener")
    runtime = Runtime(config, Database(pool, config.schema, config.ledger, bus, relay=relay), bus,
                      processing or ProcessingPool(config.processes), arq, relay)
    try:
        try:
            await config.ledger.load_instance(pool)
        except asyncpg.UndefinedTableError:
            pass  # not migrated yet: migrate() loads it
        for storage in config.storages.values():
            await storage.open()
        if relay is not None:
            relay.start()
    except BaseException:
        await close_runtime(runtime)
        raise
    return runtime


async def close_runtime(runtime: Runtime) -> None:
    """Stop the relay and close what :func:`open_runtime` opened (not a host's own pool)."""
    if runtime.relay is not None:
        await runtime.relay.stop()
    await runtime.arq.aclose()
    for storage in runtime.storages.values():
        await storage.close()
    if runtime.config.pool is None:
        await runtime.pool.close()
    await anyio.to_thread.run_sync(runtime.processing.close)
