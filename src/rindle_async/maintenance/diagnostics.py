"""Diagnostics that change nothing: ``status`` (counts, stuck work, the ledger, the workers)
and ``doctor`` (every dependency checked, each failure saying what to do).  They return what
they read (a JSON-ready snapshot, a list of checks) rather than a ``Report``: a snapshot has
nested parts and a check a verdict, which counts of affected ids cannot carry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..db import migrate
from ..db import status as counts
from ..liveness import live_workers
from ..profiles import libvips_can_save, libvips_version
from .report import now_utc

if TYPE_CHECKING:
    from ..runtime import Runtime


async def status(rt: Runtime, *, stuck_after: timedelta = timedelta(hours=1)) -> dict[str, Any]:
    """Counts by state, work stuck longer than ``stuck_after``, and the ledger.

    rt: the runtime of the opened Rindle.
    stuck_after: how long a transient state may last before it counts as stuck.
    """
    ledger = await rt.ledger.summary(rt.pool)
    running = await counts.running_attempts(rt.pool, rt.schema)
    snapshot: dict[str, Any] = {table: await counts.by_state(rt.pool, rt.schema, table)
                                for table in counts.STATE_TABLES}
    return snapshot | {
        "stuck": await counts.stuck(rt.pool, rt.schema, now_utc() - stuck_after),
        "stuck_after_seconds": int(stuck_after.total_seconds()),
        "ledger": {"pending": ledger.pending, "enqueued": ledger.enqueued,
                   "discarded": ledger.discarded,
                   "oldest_pending_seconds": ledger.oldest_pending_age,
                   "oldest_enqueued_seconds": ledger.oldest_enqueued_age},
        "workers": await _workers(rt, running),
        "attempts_running": running,
    }


async def _workers(rt: Runtime, running: dict[str, int]) -> dict[str, Any]:
    """The live workers of each queue with the attempts each runs; the error when Redis is away
    (the database's part of the picture still helps)."""
    try:
        fleets = await live_workers(rt.arq)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {queue: [{"id": w.id, "host": w.host, "pid": w.pid, "processes": w.processes,
                     "running": running.get(w.id, 0)} for w in fleets.get(queue, [])]
            for queue in rt.ledger.queues}


@dataclass(frozen=True)
class Check:
    """One line of ``doctor``: what was checked, whether it is fine, and why."""

    name: str
    ok: bool
    detail: str


async def doctor(rt: Runtime) -> list[Check]:
    """Check everything rindle_async depends on; each failure says what to do.

    rt: the runtime of the opened Rindle.
    """
    checks: list[Check] = []
    for check in (_database, _redis, _storages, _libvips, _input_formats, _ledger):
        checks += await _guarded(check, rt)
    return checks


_CheckFn = Callable[["Runtime"], Awaitable[list[Check]]]


async def _guarded(check: _CheckFn, rt: Runtime) -> list[Check]:
    """The check's lines, or one failed line naming the error it raised."""
    try:
        return await check(rt)
    except Exception as exc:
        return [Check(check.__name__.lstrip("_"), False, f"{type(exc).__name__}: {exc}")]


async def _database(rt: Runtime) -> list[Check]:
    version = await rt.pool.fetchval("SHOW server_version")
    async with rt.pool.acquire() as conn:
        pending = await migrate.pending(conn, rt.schema)
    return [Check("database", True, f"PostgreSQL {version}"),
            Check("migrations", not pending,
                  f"schema {rt.schema} is up to date" if not pending else
                  f"migrations {pending} are not applied; run `rindle-async migrate`")]


async def _redis(rt: Runtime) -> list[Check]:
    await rt.arq.ping()
    try:
        policy = (await rt.arq.config_get("maxmemory-policy")).get("maxmemory-policy")
        redis = Check("redis", policy == "noeviction",
                      "reachable, maxmemory-policy noeviction" if policy == "noeviction" else
                      f"maxmemory-policy is {policy}: Redis may evict queued jobs; "
                      "set maxmemory-policy noeviction")
    except Exception as exc:  # CONFIG disabled on some managed Redis
        redis = Check("redis", True, f"reachable; cannot read maxmemory-policy ({exc})")
    queues = rt.ledger.queues
    fleets = await live_workers(rt.arq)
    missing = [q for q in queues if not fleets.get(q)]
    seen = ", ".join(f"{q}: {len(fleets.get(q, []))}" for q in queues)
    return [redis, Check("workers", not missing,
                         f"workers holding a lease: {seen}" if not missing else
                         f"no live worker on {', '.join(missing)} (workers holding a lease: {seen}); "
                         "is `arq rindle_async.WorkerSettings` running"
                         + (" with RINDLE_QUEUE set for each routed queue?" if len(queues) > 1 else "?"))]


async def _storages(rt: Runtime) -> list[Check]:
    checks = []
    for name, storage in sorted(rt.storages.items()):
        try:
            async for _ in storage.list("", page_size=1):
                break
            checks.append(Check(f"storage {name}", True, f"{storage.adapter} reachable"))
        except Exception as exc:
            checks.append(Check(f"storage {name}", False, f"{type(exc).__name__}: {exc}"))
    return checks


async def _libvips(rt: Runtime) -> list[Check]:
    formats = sorted({v.format for p in rt.profiles.values() for v in p.variants.values()})
    cannot = [f for f in formats if not libvips_can_save(f)]
    return [Check("libvips", not cannot,
                  f"{libvips_version()} saves {', '.join(formats) or 'no formats needed'}"
                  if not cannot else f"{libvips_version()} cannot save {', '.join(cannot)}")]


#: the input format of each image type a profile may allow
_INPUT_FORMATS = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp", "image/gif": "gif",
                  "image/tiff": "tiff", "image/svg+xml": "svg", "image/avif": "avif", "image/heic": "heic",
                  "image/heif": "heic"}


async def _input_formats(rt: Runtime) -> list[Check]:
    from ..processing.images import input_formats  # loads libvips: only when doctor runs

    decodes = input_formats()
    allowed = {_INPUT_FORMATS[m] for p in rt.profiles.values() for m in p.allow_mime if m in _INPUT_FORMATS}
    missing = sorted(f for f in allowed if not decodes[f])
    found = ", ".join(f for f, ok in decodes.items() if ok)
    lacking = ", ".join(f for f, ok in decodes.items() if not ok) or "none"
    if missing:
        return [Check("input formats", False, f"profiles allow {', '.join(missing)}, which this libvips build "
                      f"cannot decode (uploads of it are quarantined); decodes {found}")]
    return [Check("input formats", True, f"decodes {found}; cannot decode {lacking}")]


async def _ledger(rt: Runtime) -> list[Check]:
    summary = await rt.ledger.summary(rt.pool)
    return [Check("ledger", True, f"pending={summary.pending} enqueued={summary.enqueued} "
                                  f"discarded={summary.discarded}")]
