"""``Rindle``: the object a host creates; it wires the parts and holds no logic."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

import asyncpg
from arq.worker import Function

from . import attachments, delivery, erasure, recipes, responsive, uploads
from .assets import get_asset
from .db import check_schema_name
from .db import migrate as migrations
from .errors import ConfigurationError, RindleError
from .events import BaseEvent, EventBus, Handler
from .ledger.kinds import JobKind, builtin_kinds
from .ledger.relay import Ledger, LedgerSummary
from .ledger.runner import arq_function
from .models import Asset, Attachment, Picture, UploadSession, UploadTicket
from .profiles import Profile, index_profiles
from .runtime import Config, RelaySettings, Runtime, close_runtime, open_runtime
from .storage.base import Part, PresignedRequest, Source, Storage, StoredPart
from .uploads.resumable import ResumableUpload
from .worker import worker_settings

if TYPE_CHECKING:
    from .db import Connection
    from .maintenance.report import Report

log = logging.getLogger("rindle_async.app")


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
    detect_stale: on open, mark variants whose recipe changed as stale and plan new variants
      (default off: every worker does it at startup; a web process need not).
    """

    def __init__(self, *, database_url: str | None = None, pool: asyncpg.Pool | None = None,
                 redis_url: str = "redis://127.0.0.1:6379/0",
                 storages: Mapping[str, Storage] | None = None, profiles: Iterable[Profile] = (),
                 schema: str = "rindle", queue: str = "rindle",
                 queues: Mapping[str, str] | None = None, relay: bool = True,
                 relay_interval: float = 5.0, relay_listen: bool = True, pool_size: int = 10,
                 application_name: str = "rindle_async",
                 jobs: Iterable[JobKind] = (), job_settings: Mapping[str, Mapping[str, Any]] | None = None,
                 processes: int | None = None, detect_stale: bool = False) -> None:
        if (database_url is None) == (pool is None):
            raise ConfigurationError("Rindle() needs exactly one of database_url= or pool=")
        if relay_interval <= 0:
            raise ConfigurationError(f"relay_interval={relay_interval} must be positive")
        schema = check_schema_name(schema)
        storages = dict(storages or {})
        for name, storage in storages.items():
            if not isinstance(storage, Storage):
                raise ConfigurationError(f"storages[{name!r}] is {type(storage).__name__}, not a "
                                         "storage adapter (LocalStorage, S3Storage or one that "
                                         "implements rindle_async.storage.Storage)")
        indexed = index_profiles(profiles)
        for profile in indexed.values():
            if profile.storage not in storages:
                raise ConfigurationError(
                    f"profile {profile.name!r} uses storage {profile.storage!r}, but storages= has "
                    f"{sorted(storages) or 'none'}; add it or change Profile.storage")
        kinds: dict[str, JobKind] = {kind.name: kind for kind in builtin_kinds(job_settings)}
        for kind in jobs:
            if kind.name in kinds:
                raise ConfigurationError(f"job kind {kind.name!r} is registered twice")
            kinds[kind.name] = kind
        self._config = Config(
            database_url=database_url, pool=pool, redis_url=redis_url, schema=schema,
            storages=MappingProxyType(storages), profiles=MappingProxyType(indexed),
            ledger=Ledger(schema=schema, kinds=kinds, queue=queue, routes=queues),
            relay=RelaySettings(relay, relay_interval, relay_listen), pool_size=pool_size,
            application_name=application_name, processes=processes, detect_stale=detect_stale)
        self._bus = EventBus()
        self._runtime: Runtime | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Rindle:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def open(self, *, as_worker: bool = False) -> None:
        """Open the database pool, the arq client and the relay (``async with`` does this).

        as_worker: name the connections "<application_name> worker" in ``pg_stat_activity``
            and skip stale detection (the worker runs it itself); what worker settings do.
        """
        if self._runtime is not None:
            raise RindleError("this Rindle is already open")
        config = self._config
        name = f"{config.application_name} worker" if as_worker else None
        self._runtime = await open_runtime(config, self._bus, application_name=name)
        if config.detect_stale and not as_worker:
            try:
                await self.mark_stale_variants()
            except asyncpg.UndefinedTableError:
                log.debug("stale detection skipped: schema %s is not migrated yet", config.schema)
            except BaseException:
                await self.close()
                raise

    @property
    def is_open(self) -> bool:
        """Whether ``open()`` ran and ``close()`` did not."""
        return self._runtime is not None

    async def close(self) -> None:
        """Stop the relay and close what :meth:`open` opened."""
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await close_runtime(runtime)

    @property
    def runtime(self) -> Runtime:
        """The opened parts (database, ledger, storages, ...) that services and jobs run on."""
        if self._runtime is None:
            raise RindleError("Rindle is not open; use `async with rindle:` or `await rindle.open()`")
        return self._runtime

    @property
    def config(self) -> Config:
        """The validated configuration (schema, storages, profiles, job kinds, queues, ...)."""
        return self._config

    @property
    def schema(self) -> str:
        """The PostgreSQL schema of rindle_async's tables."""
        return self._config.schema

    @property
    def storages(self) -> Mapping[str, Storage]:
        """The storage adapters by name (read-only)."""
        return self._config.storages

    @property
    def profiles(self) -> Mapping[str, Profile]:
        """The profiles by name (read-only)."""
        return self._config.profiles

    # -- schema --------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply pending migrations (idempotent, safe from several processes at once).

        Returns the versions this call applied.
        """
        runtime = self.runtime
        async with runtime.pool.acquire() as conn:
            applied = await migrations.migrate(conn, self.schema)
            await runtime.ledger.load_instance(conn)
        if runtime.relay is not None:
            runtime.relay.wake()
        return applied

    # -- transactions and events ---------------------------------------------------

    @asynccontextmanager
    async def transaction(self, conn: Connection | None = None
                          ) -> AsyncIterator[Connection]:
        """Yield a connection in an open transaction; staged jobs and events flush on commit.

        conn: the host's own connection (outside a transaction); a pooled one when None.
        Pass the yielded connection as ``conn=`` to Rindle calls to join the transaction.
        Nothing is sent or emitted if the block raises.
        """
        async with self.runtime.db.transaction(conn, hosted=True) as uow:
            yield uow.conn

    def subscribe(self, handler: Handler, *event_types: type[BaseEvent]) -> Callable[[], None]:
        """Deliver events (all, or only ``event_types``) to ``handler`` after commit.

        handler: a function or coroutine function taking one event; errors are logged.
        event_types: event classes from ``rindle_async.events``; none means all.
        Returns a function that unsubscribes the handler.
        """
        return self._bus.subscribe(handler, *event_types)

    # -- ledger --------------------------------------------------------------------

    async def flush_jobs(self) -> int:
        """Send committed, unsent jobs to arq now; return how many were sent."""
        return await self.runtime.flush_jobs()

    async def reconcile_jobs(self) -> int:
        """Re-send jobs that Redis lost; return how many were re-sent."""
        return await self.runtime.reconcile_jobs()

    async def stage_job(self, kind: str, args: Any = None, *, dedupe_key: str | None = None,
                        run_after: datetime | None = None,
                        conn: Connection | None = None) -> int | None:
        """Stage a job of a registered kind; it is sent to arq after the transaction commits.

        kind: the job kind's name (``Rindle(jobs=[...])`` or a built-in one).
        args: its arguments: a dict or a msgspec struct, JSON-encodable (default: none).
        dedupe_key: at most one pending job per key; a duplicate is not staged (returns None).
        run_after: do not run before this time.
        conn: a connection from ``rindle.transaction()`` to stage in the host's transaction.
        Returns the ledger row id.
        """
        async with self.runtime.db.transaction(conn) as uow:
            return await uow.stage(kind, {} if args is None else args, dedupe_key=dedupe_key,
                                   run_after=run_after)

    async def ledger_summary(self) -> LedgerSummary:
        """Pending, enqueued and discarded job counts with the oldest ages."""
        runtime = self.runtime
        async with runtime.pool.acquire() as conn:
            return await runtime.ledger.summary(conn)

    async def mark_stale_variants(self) -> int:
        """Mark ready variants whose recipe changed as stale and plan variants a profile gained.

        Returns how many variants were marked stale.
        """
        report = await recipes.reconcile_profiles(self.runtime)
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
        return [arq_function(kind) for kind in self._config.ledger.kinds.values()]

    # -- uploads -------------------------------------------------------------------

    async def initiate_upload(self, profile: str, *, filename: str | None, content_type: str,
                              byte_size: int | None = None, checksum: str | None = None,
                              multipart: bool = False, part_size: int | None = None,
                              presigned_post: bool = False, owner: str | None = None) -> UploadTicket:
        """Open a direct-upload session; the client sends the bytes with the ticket.

        profile: the profile name.
        filename: the client's file name.
        content_type: the declared type (refused at once if the profile forbids it).
        byte_size: the declared size (refused at once if over the profile's max_bytes); required
            for a presigned PUT, optional with ``presigned_post`` or ``multipart``.
        checksum: optional ``md5:<hex>`` or ``sha256:<hex>``, checked by ``verify_upload``.
        multipart: S3 multipart upload, part URLs from ``presign_part``.
        part_size: the suggested bytes per part for multipart uploads (5 MiB..5 GiB).
        presigned_post: an S3 POST policy (``ticket.fields``) that S3 itself holds to the type,
            the key and 1..max_bytes.
        owner: who the upload is for (e.g. the user's id); kept on the session for the host.
        """
        return await uploads.initiate_upload(self.runtime, profile, filename=filename,
                                             content_type=content_type, byte_size=byte_size,
                                             checksum=checksum, multipart=multipart,
                                             part_size=part_size, presigned_post=presigned_post,
                                             owner=owner)

    async def sign_upload(self, session_id: str) -> UploadTicket:
        """A fresh ticket for an open session whose URL expired.

        session_id: the ticket's session_id.
        """
        return await uploads.sign_upload(self.runtime, session_id)

    async def presign_part(self, session_id: str, part_number: int) -> PresignedRequest:
        """A PUT for one part of a multipart session.

        session_id: the ticket's session_id.
        part_number: 1-based part number.
        """
        return await uploads.presign_part(self.runtime, session_id, part_number)

    async def verify_upload(self, session_id: str, *, parts: list[Part] | None = None) -> Asset:
        """Check the uploaded object and hand it to promotion; returns the asset (validating).

        session_id: the ticket's session_id.
        parts: for multipart sessions, the uploaded parts to assemble first.
        """
        return await uploads.verify_upload(self.runtime, session_id, parts=parts)

    async def get_upload(self, session_id: str) -> UploadSession:
        """The upload session (state, deadline, multipart id, the parts the store holds).

        session_id: the ticket's session_id.
        """
        return await uploads.get_upload(self.runtime, session_id)

    async def find_upload(self, storage_key: str, *, profile: str) -> UploadSession:
        """The newest upload session of ``profile`` writing ``storage_key`` (NotFound if none).

        storage_key: the ticket's storage_key (what Uppy reports as the upload's key).
        profile: the profile the upload was started under.
        """
        return await uploads.find_upload(self.runtime, profile, storage_key)

    async def list_parts(self, session_id: str) -> list[StoredPart]:
        """The parts the store holds for an open multipart session (number, ETag, size).

        session_id: the ticket's session_id.
        """
        return await uploads.list_parts(self.runtime, session_id)

    async def abort_upload(self, session_id: str) -> None:
        """Abandon an open upload session; its asset and any stored bytes are purged.

        session_id: the ticket's session_id.
        """
        await uploads.abort_upload(self.runtime, session_id)

    # -- resumable uploads (tus) ---------------------------------------------------

    async def create_resumable_upload(self, profile: str, *, length: int, filename: str | None,
                                      content_type: str | None, owner: str | None = None,
                                      metadata: Mapping[str, str] | None = None) -> ResumableUpload:
        """Open a resumable upload session (the tus routes' creation); chunks follow.

        profile: the profile name.
        length: the file's size (refused at once if over the profile's max_bytes).
        filename: the client's file name.
        content_type: the declared type; None takes the type the filename's extension names.
        owner: who may read, append to and terminate it (None: anyone with its id).
        metadata: the client's metadata, kept with the session.
        """
        return await uploads.create_resumable(self.runtime, profile, length=length, filename=filename,
                                              content_type=content_type, owner=owner, metadata=metadata)

    async def resumable_upload(self, session_id: str, *, owner: str | None = None) -> ResumableUpload:
        """A resumable upload's stored offset, length and deadline.

        session_id: the upload's session_id.
        owner: the caller (NotFound unless it owns the upload).
        """
        return await uploads.resumable_upload(self.runtime, session_id, owner=owner)

    async def append_resumable_upload(self, session_id: str, *, offset: int,
                                      chunks: AsyncIterable[bytes],
                                      owner: str | None = None) -> ResumableUpload:
        """Store the next chunk of a resumable upload; the last one verifies the file.

        session_id: the upload's session_id.
        offset: where the chunk starts (OffsetMismatch unless the stored bytes end there).
        chunks: the chunk's bytes, streamed.
        owner: the caller (NotFound unless it owns the upload).
        """
        return await uploads.append_resumable(self.runtime, session_id, offset=offset, chunks=chunks,
                                              owner=owner)

    async def terminate_resumable_upload(self, session_id: str, *, owner: str | None = None) -> None:
        """Abandon an unfinished resumable upload; its asset and stored bytes are purged.

        session_id: the upload's session_id.
        owner: the caller (NotFound unless it owns the upload).
        """
        await uploads.terminate_resumable(self.runtime, session_id, owner=owner)

    async def upload(self, profile: str, data: Source, *, filename: str | None = None,
                     content_type: str | None = None) -> Asset:
        """Store a file that passes through the host (bytes, a path or an async iterator).

        profile: the profile name.
        data: the file's bytes, a path to it, or an async iterator of chunks.
        filename: the client's file name.
        content_type: the declared type, if any (refused unless the bytes are of that type).
        """
        return await uploads.upload(self.runtime, profile, data, filename=filename,
                                    content_type=content_type)

    async def get_asset(self, asset_id: str) -> Asset:
        """The asset with its state and variants.

        asset_id: the asset.
        """
        return await get_asset(self.runtime.pool, self.schema, asset_id)

    # -- attachments ---------------------------------------------------------------

    async def attach(self, asset_id: str, *, owner_type: str, owner_id: str | int, slot: str,
                     conn: Connection | None = None) -> Attachment:
        """Attach an asset to a host record's slot, replacing (and purging) what it held.

        asset_id: the asset.
        owner_type: the host record's type, e.g. ``"user"``.
        owner_id: the host record's id.
        slot: the slot, e.g. ``"avatar"``.
        conn: a connection from ``rindle.transaction()`` to join the host's transaction.
        """
        async with self.runtime.db.transaction(conn) as uow:
            return await attachments.attach(uow, asset_id, owner_type=owner_type,
                                            owner_id=owner_id, slot=slot)

    async def detach(self, *, owner_type: str, owner_id: str | int, slot: str,
                     conn: Connection | None = None) -> Attachment | None:
        """Empty a slot; the asset is purged unless something else holds it.

        owner_type: the host record's type.
        owner_id: the host record's id.
        slot: the slot.
        conn: a connection from ``rindle.transaction()`` to join the host's transaction.
        Returns the removed attachment, or None when the slot was empty.
        """
        async with self.runtime.db.transaction(conn) as uow:
            return await attachments.detach(uow, owner_type=owner_type, owner_id=owner_id,
                                            slot=slot)

    async def erase_owner(self, owner_type: str, owner_id: str | int, *, dry_run: bool = False,
                          conn: Connection | None = None) -> Report:
        """Detach every slot of a host record and purge the assets no other record holds.

        owner_type: the host record's type.
        owner_id: the host record's id.
        dry_run: report what would be erased, change nothing.
        conn: a connection from ``rindle.transaction()`` to join the host's transaction.
        Returns a Report counting and listing ``attachments_detached``, ``assets_erased`` and
        ``assets_retained`` (shared with another record).
        """
        return await erasure.erase_owner(self.runtime, owner_type, owner_id, dry_run=dry_run, conn=conn)

    async def attachment(self, owner_type: str, owner_id: str | int, slot: str) -> Attachment | None:
        """The attachment in a slot, or None.

        owner_type: the host record's type.
        owner_id: the host record's id.
        slot: the slot.
        """
        return await attachments.attachment(self.runtime.pool, self.schema, owner_type=owner_type,
                                            owner_id=owner_id, slot=slot)

    async def attachments(self, owner_type: str, owner_ids: Iterable[str | int],
                          slot: str) -> dict[str, Attachment]:
        """The attachments of many records' slot in one query, keyed by owner id as text.

        owner_type: the host records' type.
        owner_ids: the host records' ids.
        slot: the slot.
        """
        return await attachments.attachments(self.runtime.pool, self.schema, owner_type=owner_type,
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
        return await delivery.url(self.runtime, asset_id, variant=variant, ttl=ttl,
                                  disposition=disposition, filename=filename, fallback=fallback)

    async def urls(self, asset_ids: Iterable[str], variant: str | None = None, *,
                   variants: Iterable[str] | None = None, ttl: int | None = None,
                   fallback: str | None = None, placeholders: bool = False) -> dict[str, Any]:
        """URLs for a page of assets: one query, no storage round trip; None where not deliverable.

        asset_ids: the assets.
        variant: a variant name; None for the originals.  Returns {asset id: url or None}.
        variants: several variant names instead, e.g. ("thumb", "large").  Returns
          {asset id: {variant name: url or None}}; not together with ``variant``.
        ttl: seconds the URLs stay valid.
        fallback: ``"original"`` to use the original where a variant is not ready.
        placeholders: map each asset to a ``Delivered`` (``url`` or ``urls``, and ``placeholder``).
        """
        return await delivery.urls(self.runtime, asset_ids, variant=variant, variants=variants, ttl=ttl,
                                   fallback=fallback, placeholders=placeholders)

    async def srcset(self, asset_id: str, *, variants: Iterable[str] | None = None,
                     format: str | None = None, ttl: int | None = None) -> str:
        """A ``srcset`` value ("url 320w, url 640w") from the rendered variants' stored widths.

        asset_id: the asset.
        variants: variant names of one format; default: the profile's ladder in ``format``.
        format: the srcset's format, when the ladder has several (e.g. "webp").
        ttl: seconds the URLs stay valid.
        Raises NotFound, DeliveryForbidden, or NotReady while none of them is rendered.
        """
        return await responsive.srcset(self.runtime, asset_id, variants=variants, format=format, ttl=ttl)

    async def srcsets(self, asset_ids: Iterable[str], *, variants: Iterable[str] | None = None,
                      format: str | None = None, ttl: int | None = None) -> dict[str, str | None]:
        """``srcset`` values for a page of assets (one query, no storage round trip); None where
        nothing is rendered.

        asset_ids: the assets.
        variants: variant names of one format; default: each profile's ladder in ``format``.
        format: the srcsets' format, when a ladder has several.
        ttl: seconds the URLs stay valid.
        """
        return await responsive.srcsets(self.runtime, asset_ids, variants=variants, format=format, ttl=ttl)

    async def picture_sources(self, asset_id: str, *, variants: Iterable[str] | None = None,
                              ttl: int | None = None) -> Picture:
        """What a ``<picture>`` needs: a ``<source>`` per better format (AVIF, WebP) and the
        ``<img>`` in the most widely readable one, with its size and the placeholder.

        asset_id: the asset.
        variants: the variant names to offer, grouped by format; default: the profile's ladder.
        ttl: seconds the URLs stay valid.
        Raises NotFound, DeliveryForbidden, or NotReady while none of them is rendered.
        """
        return await responsive.picture(self.runtime, asset_id, variants=variants, ttl=ttl)

    async def pictures(self, asset_ids: Iterable[str], *, variants: Iterable[str] | None = None,
                       ttl: int | None = None) -> dict[str, Picture | None]:
        """``picture_sources`` for a page of assets (one query, no storage round trip); None
        where nothing is rendered.

        asset_ids: the assets.
        variants: the variant names to offer, grouped by format; default: each profile's ladder.
        ttl: seconds the URLs stay valid.
        """
        return await responsive.pictures(self.runtime, asset_ids, variants=variants, ttl=ttl)
