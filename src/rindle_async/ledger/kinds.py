"""Job kinds as data: the built-in kinds, their argument structs, limits and schedules.

A kind names its handler by import path (``"module:function"``), as arq's ``func()``
accepts dotted names, so this table imports no service module and anything may import it.
The built-in kinds carry typed arguments (a msgspec struct decoded from the ledger row);
a host's own kinds may leave ``args`` unset and receive the row's JSON object as a dict.
``Rindle(job_settings={"process_variant": {"tries": 8}})`` is applied here with
:func:`dataclasses.replace`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields, replace
from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..db.transaction import UnitOfWork
    from .runner import JobRun

Handler = Callable[["JobRun"], Awaitable[None]]
DiscardHook = Callable[["UnitOfWork", "JobRun", str], Awaitable[None]]
LANES = ("default", "render")


class AssetArgs(msgspec.Struct, frozen=True):
    """Arguments of the jobs about one asset (promotion, rendering, purge)."""

    asset_id: UUID


class MaintenanceArgs(msgspec.Struct, frozen=True):
    """Arguments of the scheduled maintenance jobs."""

    dry_run: bool = False


@cache
def _resolve(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class JobKind:
    """A kind of background job: its handler and how hard to try.

    name: the arq function name and the ``kind`` stored in ledger rows.
    handler: ``async def handler(job: JobRun) -> None``, or its import path ``"module:name"``.
    tries: attempts before the job is discarded.
    timeout: seconds one attempt may run before it counts as failed.
    backoff: seconds before the second attempt; doubles each try.
    max_backoff: upper bound of the delay between attempts.
    on_discard: ``async def on_discard(uow, job, error) -> None`` (or its import path), run
        in the discard transaction.
    lane: the worker slots it runs in: "render" (sized by the processing pool) or "default".
    args: the msgspec struct its arguments decode to; None hands the handler a dict.
    """

    name: str
    handler: Handler | str
    tries: int = 3
    timeout: float = 300.0
    backoff: float = 2.0
    max_backoff: float = 600.0
    on_discard: DiscardHook | str | None = None
    lane: str = "default"
    args: type[msgspec.Struct] | None = None

    def __post_init__(self) -> None:
        if self.lane not in LANES:
            raise ConfigurationError(f"JobKind {self.name!r}: lane={self.lane!r} must be 'default' "
                                     "or 'render'")
        if self.tries < 1:
            raise ConfigurationError(f"JobKind {self.name!r}: tries={self.tries} must be at least 1")
        if self.timeout <= 0:
            raise ConfigurationError(f"JobKind {self.name!r}: timeout={self.timeout} must be positive")

    @property
    def run(self) -> Handler:
        """The handler, imported on first use when given as a path."""
        handler = self.handler
        return _resolve(handler) if isinstance(handler, str) else handler

    @property
    def discard_hook(self) -> DiscardHook | None:
        """The ``on_discard`` hook, imported on first use when given as a path."""
        hook = self.on_discard
        return _resolve(hook) if isinstance(hook, str) else hook

    def decode(self, raw: bytes | str) -> Any:
        """A ledger row's JSON arguments as this kind's struct (a dict when it has none)."""
        if self.args is None:
            return msgspec.json.decode(raw)
        return msgspec.json.decode(raw, type=self.args)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (with up to 25% jitter)."""
        base = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return float(base) * (1 + random.random() / 4)


PROMOTE = JobKind("promote_asset", "rindle_async.promotion:promote_asset", tries=3, timeout=120.0,
                  on_discard="rindle_async.promotion:promotion_failed", args=AssetArgs)
RENDER = JobKind("process_variant", "rindle_async.rendering:process_variant", tries=5,
                 timeout=300.0, on_discard="rindle_async.rendering:variant_failed", lane="render",
                 args=AssetArgs)
PURGE = JobKind("purge_storage", "rindle_async.purge:purge_storage", tries=3, timeout=300.0,
                args=AssetArgs)
CLEANUP = JobKind("cleanup_orphans", "rindle_async.maintenance.cleanup:cleanup_orphans_job", tries=3,
                  timeout=1800.0, args=MaintenanceArgs)
ABORT = JobKind("abort_incomplete_uploads", "rindle_async.maintenance.abort:abort_incomplete_uploads_job",
                tries=3, timeout=600.0, args=MaintenanceArgs)
BUILTIN = (PROMOTE, RENDER, PURGE, CLEANUP, ABORT)


@dataclass(frozen=True)
class Scheduled:
    """A built-in kind staged by cron on the default queue's workers (deduplicated per kind).

    kind: the job kind.
    args: the arguments it is staged with.
    hour, minute: when, every day (UTC, as arq's cron).
    """

    kind: JobKind
    args: msgspec.Struct
    hour: int
    minute: int = 0


SCHEDULES = (
    Scheduled(ABORT, MaintenanceArgs(dry_run=False), hour=1),
    Scheduled(CLEANUP, MaintenanceArgs(dry_run=False), hour=2),
)

#: The fields of a built-in kind ``job_settings`` may change.
TUNABLE = frozenset({"tries", "timeout", "backoff", "max_backoff"})


def builtin_kinds(settings: Mapping[str, Mapping[str, Any]] | None = None) -> list[JobKind]:
    """The built-in job kinds with per-kind overrides applied.

    settings: kind name -> fields to override (tries, timeout, backoff, max_backoff).
    """
    overrides = {name: dict(values) for name, values in (settings or {}).items()}
    known = {kind.name for kind in BUILTIN}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigurationError(f"job_settings names unknown job kinds {sorted(unknown)}; "
                                 f"built-in kinds are {sorted(known)}")
    for name, values in overrides.items():
        bad = set(values) - TUNABLE
        if bad:
            allowed = sorted(f.name for f in fields(JobKind) if f.name in TUNABLE)
            raise ConfigurationError(f"job_settings[{name!r}] cannot set {sorted(bad)}; "
                                     f"it may set {', '.join(allowed)}")
    return [replace(kind, **overrides.get(kind.name, {})) for kind in BUILTIN]
