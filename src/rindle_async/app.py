"""``Rindle``: the object a host creates; it wires the parts and holds no logic."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import asyncpg
from arq.connections import ArqRedis
from arq.worker import Function
from redis.asyncio import ConnectionPool

from . import attachments, delivery, maintenance, uploads
from .assets import get_asset
from .db import check_schema_name, server_settings
from .db import migrate as migrations
from .db.transaction import Database, keep_session
from .errors import ConfigurationError, RindleError
from .events import BaseEvent, EventBus, Handler
from .ledger.kinds import JobKind
from .ledger.runner import arq_function
from .ledger.relay import Ledger, LedgerSummary, Relay
from .models import Asset, Attachment, UploadTicket
from .processing.pool import ProcessingPool
from .profiles import Profile, index_profiles
from .storage.base import Part, PresignedRequest, Source, Storage
from .ledger.kinds import builtin_kinds
from .worker import worker_settings


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
    application_name: how that pool's connections appear in ``pg_stat_activity`` (a worker
      adds " worker", the relay's LISTEN connection " listener"), unless the DSN sets one.
    jobs: extra job kinds to register beside the built-in ones.
    job_settings: per built-in kind overrides, e.g. ``{"process_variant": {"tries": 8, "timeout": 600}}``.
    processes: size of the libvips process pool (default: cores - 1, at least 1).
    detect_stale: on open, mark variants whose recipe changed as stale and plan new variants.
    """

    def __init__(self, *, database_url: str | None = None, pool: asyncpg.Pool | None = None,
                 redis_url: str = "redis://127.0.0.1:6379/0",
                 storages: Mapping[str, Storage] | None = None, profiles: Iterable[Profile] = (),
                 schema: str = "rindle", queue: str = "rindle",
                 queues: Mapping[str, str] | None = None, relay: bool = True,
                 relay_interval: float = 5.0, relay_listen: bool = True, pool_size: int = 10,
                 application_name: str = "rindle_async",
                 jobs: Iterable[JobKind] = (), job_settings: Mapping[str, Mapping[str, Any]] | None = None,
                 processes: int | None = None, detect_stale: bool = True) -> None:
        if (database_url is None) == (pool is None):
            raise ConfigurationError("Rindle() needs exactly one of database_url= or pool=")
        if relay_interval <= 0:
            raise ConfigurationError(f"relay_interval={relay_interval} must be positive")
        self.database_url = database_url
        self.redis_url = redis_url
        self.schema = check_schema_name(schema)
        self.storages = dict(storages or {})
        for name, storage in self.storages.items():
            if not isinstance(storage, Storage):
                raise ConfigurationError(f"storages[{name!r}] is {type(storage).__name__}, not a "
                                         "storage adapter (LocalStorage, S3Storage or one that "
                                         "implements rindle_async.storage.Storage)")
        self.profiles = index_profiles(profiles)
        for profile in self.profiles.values():
            if profile.storage not in self.storages:
                raise ConfigurationError(
                    f"profile {profile.name!r} uses storage {profile.storage!r}, but storages= has "
                    f"{sorted(self.storages) or 'none'}; add it or change Profile.storage")
        kinds: dict[str, JobKind] = {
            kind.name: kind for kind in builtin_kinds(job_settings)}
        for kind in jobs:
            if kind.name in kinds:
                raise ConfigurationError(f"job kind {kind.name!r} is registered twice")
            kinds[kind.name] = kind
        self.ledger = Ledger(schema=self.schema, kinds=kinds, queue=queue, routes=queues)
        self.bus = EventBus()
        self._given_pool = pool
        self._pool_size = pool_size
        self.application_name = application_name
        self._relay_options = (relay, relay_interval, relay_listen)
        self.processing = ProcessingPool(processes)
        self._detect_stale = detect_stale
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
        try:
            await self._open()
        except BaseException:
            await self.close()  # whatever did open is closed again; open() may be retried
            raise

    async def _open(self) -> None:
        pool = self._given_pool or await asyncpg.create_pool(
            self.database_url, min_size=1, max_size=self._pool_size, reset=keep_session,
            server_settings=server_settings(self.database_url, self.application_name))
        # No ping: a Redis that is down must not stop the host; jobs wait in the ledger.
        self._arq = ArqRedis(ConnectionPool.from_url(self.redis_url),
                             default_queue_name=self.ledger.queue)
        self._db = Database(pool, self.ledger, self.bus)
        for storage in self.storages.values():
            await storage.open()
        enabled, interval, listen = self._relay_options
        if enabled:
            self._relay = Relay(self.ledger, pool, self._arq, interval=interval, listen=listen,
                                application_name=f"{self.application_name} listener")
            self._db.relay = self._relay
            self._relay.start()
        if self._detect_stale:
            try:
                await self.mark_stale_variants()
            except asyncpg.UndefinedTableError:
                pass  # not migrated yet

    @property
    def is_open(self) -> bool:
        """Whether ``open()`` ran and ``close()`` did not."""
        return self._db is not None

    async def close(self) -> None:
        """Stop the relay and close what :meth:`open` opened."""
        if self._relay is not None:
            await self._relay.stop()
            self._relay = None
        if self._arq is not None:
            await self._arq.aclose()
            self._arq = None
        if self._db is not None:
            for storage in self.storages.values():
                await storage.close()
        if self._db is not None and self._given_pool is None:
            await self._db.pool.close()
        self._db = None
        await anyio.to_thread.run_sync(self.processing.close)

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
            await self.ledger.load_instance(conn)
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
        async with self.db.transaction(conn, hosted=True) as uow:
            yield uow.conn

    def subscribe(self, handler: Handler, *event_types: type[BaseEvent]) -> Callable[[], None]:
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

    async def mark_stale_variants(self) -> int:
        """Mark ready variants whose recipe changed as stale and plan variants a profile gained.

        Returns how many variants were marked stale.
        """
        report = await maintenance.reconcile_profiles(self)
        return report.counts.get("stale", 0)

    def worker_settings(self, *, queue: str | None = None, processes: int | None = None,
                        **overrides: Any) -> type:
        """An arq settings class for a worker serving this Rindle's jobs.

        queue: the queue to serve (default: the default queue, which also runs cron).
        processes: size of the libvips process pool.
        overrides: other arq settings (max_jobs, poll_delay, ...).
        """
        return worker_settings(self, queue=queue, processes=processes, **overrides)

    def arq_functions(self) -> list[Function]:
        """One arq function per registered job kind (the worker's ctx must hold ``rindle``)."""
        return [arq_function(kind) for kind in self.ledger.kinds.values()]

    # -- uploads -------------------------------------------------------------------

    async def initiate_upload(self, profile: str, *, filename: str | None, content_type: str,
                              byte_size: int, checksum: str | None = None, multipart: bool = False,
                              part_size: int | None = None) -> UploadTicket:
        """Open a direct-upload session; the client sends the bytes with the ticket.

        profile: the profile name.
        filename: the client's file name.
        content_type: the declared type (refused at once if the profile forbids it).
        byte_size: the declared size (refused at once if over the profile's max_bytes).
        checksum: optional ``md5:<hex>`` or ``sha256:<hex>``, checked by ``verify_upload``.
        multipart: S3 multipart upload, part URLs from ``presign_part``.
        part_size: bytes per part for multipart uploads.
        """
        return await uploads.initiate_upload(self, profile, filename=filename,
                                             content_type=content_type, byte_size=byte_size,
                                             checksum=checksum, multipart=multipart,
                                             part_size=part_size)

    async def sign_upload(self, session_id: str) -> UploadTicket:
        """A fresh ticket for an open session whose URL expired.

        session_id: the ticket's session_id.
        """
        return await uploads.sign_upload(self, session_id)

    async def presign_part(self, session_id: str, part_number: int) -> PresignedRequest:
        """A PUT for one part of a multipart session.

        session_id: the ticket's session_id.
        part_number: 1-based part number.
        """
        return await uploads.presign_part(self, session_id, part_number)

    async def verify_upload(self, session_id: str, *, parts: list[Part] | None = None) -> Asset:
        """Check the uploaded object and hand it to promotion; returns the asset (validating).

        session_id: the ticket's session_id.
        parts: for multipart sessions, the uploaded parts to assemble first.
        """
        return await uploads.verify_upload(self, session_id, parts=parts)

    async def abort_upload(self, session_id: str) -> None:
        """Abandon an open upload session; its asset and any stored bytes are purged.

        session_id: the ticket's session_id.
        """
        await uploads.abort_upload(self, session_id)

    async def upload(self, profile: str, data: Source, *, filename: str | None = None,
                     content_type: str | None = None) -> Asset:
        """Store a file that passes through the host (bytes, a path or an async iterator).

        profile: the profile name.
        data: the file's bytes, a path to it, or an async iterator of chunks.
        filename: the client's file name.
        content_type: the declared type, if any (refused unless the bytes are of that type).
        """
        return await uploads.upload(self, profile, data, filename=filename,
                                    content_type=content_type)

    async def get_asset(self, asset_id: str) -> Asset:
        """The asset with its state and variants.

        asset_id: the asset.
        """
        return await get_asset(self.pool, self.schema, asset_id)

    # -- attachments ---------------------------------------------------------------

    async def attach(self, asset_id: str, *, owner_type: str, owner_id: str | int, slot: str,
                     conn: asyncpg.Connection | None = None) -> Attachment:
        """Attach an asset to a host record's slot, replacing (and purging) what it held.

        asset_id: the asset.
        owner_type: the host record's type, e.g. ``"user"``.
        owner_id: the host record's id.
        slot: the slot, e.g. ``"avatar"``.
        conn: a connection from ``rindle.transaction()`` to join the host's transaction.
        """
        async with self.db.transaction(conn) as uow:
            return await attachments.attach(uow, asset_id, owner_type=owner_type,
                                            owner_id=owner_id, slot=slot)

    async def detach(self, *, owner_type: str, owner_id: str | int, slot: str,
                     conn: asyncpg.Connection | None = None) -> Attachment | None:
        """Empty a slot; the asset is purged unless something else holds it.

        owner_type: the host record's type.
        owner_id: the host record's id.
        slot: the slot.
        conn: a connection from ``rindle.transaction()`` to join the host's transaction.
        Returns the removed attachment, or None when the slot was empty.
        """
        async with self.db.transaction(conn) as uow:
            return await attachments.detach(uow, owner_type=owner_type, owner_id=owner_id,
                                            slot=slot)

    async def attachment(self, owner_type: str, owner_id: str | int, slot: str) -> Attachment | None:
        """The attachment in a slot, or None.

        owner_type: the host record's type.
        owner_id: the host record's id.
        slot: the slot.
        """
        return await attachments.attachment(self.pool, self.schema, owner_type=owner_type,
                                            owner_id=owner_id, slot=slot)

    async def attachments(self, owner_type: str, owner_ids: Iterable[str | int],
                          slot: str) -> dict[str, Attachment]:
        """The attachments of many records' slot in one query, keyed by owner id as text.

        owner_type: the host records' type.
        owner_ids: the host records' ids.
        slot: the slot.
        """
        return await attachments.attachments(self.pool, self.schema, owner_type=owner_type,
                                             owner_ids=owner_ids, slot=slot)

    # -- delivery ------------------------------------------------------------------

    async def url(self, asset_id: str, variant: str | None = None, *, ttl: int | None = None,
                  disposition: str | None = None, filename: str | None = None,
                  fallback: str | None = None) -> str:
        """A delivery URL, signed and expiring unless the profile is public.

        asset_id: the asset.
        variant: a variant name; None for the original.
        ttl: seconds the URL stays valid (default: the profile's url_ttl).
        disposition: ``inline`` or ``attachment``.
        filename: the download name (default: the uploaded file's name).
        fallback: ``"original"`` to get the original while the variant is not ready.
        """
        return await delivery.url(self, asset_id, variant=variant, ttl=ttl,
                                  disposition=disposition, filename=filename, fallback=fallback)

    async def urls(self, asset_ids: Iterable[str], variant: str | None = None, *,
                   variants: Iterable[str] | None = None, ttl: int | None = None,
                   fallback: str | None = None) -> dict[str, Any]:
        """URLs for a page of assets: one query, no storage round trip; None where not deliverable.

        asset_ids: the assets.
        variant: a variant name; None for the originals.  Returns {asset id: url or None}.
        variants: several variant names instead, e.g. ("thumb", "large").  Returns
          {asset id: {variant name: url or None}}; not together with ``variant``.
        ttl: seconds the URLs stay valid.
        fallback: ``"original"`` to use the original where a variant is not ready.
        """
        return await delivery.urls(self, asset_ids, variant=variant, variants=variants, ttl=ttl,
                                   fallback=fallback)
