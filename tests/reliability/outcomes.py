"""What a user sees once a fault is over, as the reliability suites check it.

Every committed upload ends ``ready``, ``degraded`` (a variant failed, with its reason) or
``quarantined`` (with its reason); nothing is left in a state that only a running job
leaves; the ledger holds nothing but discarded rows that say why; each variant is one
stored object, the one its row points at.
"""

from __future__ import annotations

import asyncio
import pathlib
import time

from rindle_async import Rindle

#: states that only a job in flight leaves a row in
TRANSIENT = {
    "assets": ("validating", "analyzing", "promoting", "available", "processing"),
    "variants": ("planned", "queued", "processing"),
    "upload_sessions": ("verifying",),
}
FINAL_ASSET_STATES = ("ready", "degraded", "quarantined")


def logs(tmp_path: pathlib.Path) -> str:
    """Every ``*.log`` of the test (its workers'), for assertion messages."""
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(tmp_path.glob("*.log")))


async def all_ready(host: Rindle, asset_ids, timeout: float, tmp_path) -> float:
    """Wait until every asset is ready with every variant ready; return when (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = await host.runtime.pool.fetch(
            f"SELECT a.state, bool_and(v.state = 'ready') AS variants_ready FROM {host.schema}.assets a"
            f" JOIN {host.schema}.variants v ON v.asset_id = a.id WHERE a.id = ANY($1::uuid[])"
            " GROUP BY a.id", asset_ids)
        if len(states) == len(asset_ids) and all(r["state"] == "ready" and r["variants_ready"]
                                                for r in states):
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise AssertionError(f"not ready after {timeout}s: {[tuple(r) for r in states]}\n{logs(tmp_path)}")


async def all_final(host: Rindle, asset_ids, timeout: float, tmp_path) -> dict[str, str]:
    """Wait until every asset is in a final state with no variant pending; return id -> state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await host.runtime.pool.fetch(
            f"SELECT a.id::text, a.state, count(v.id) FILTER (WHERE v.state = ANY($2::text[]))"
            f" AS pending FROM {host.schema}.assets a LEFT JOIN {host.schema}.variants v"
            f" ON v.asset_id = a.id WHERE a.id = ANY($1::uuid[]) GROUP BY a.id",
            asset_ids, list(TRANSIENT["variants"]))
        if len(rows) == len(asset_ids) and all(r["state"] in FINAL_ASSET_STATES and not r["pending"]
                                              for r in rows):
            return {r["id"]: r["state"] for r in rows}
        await asyncio.sleep(0.1)
    raise AssertionError(f"not final after {timeout}s: {[tuple(r) for r in rows]}\n{logs(tmp_path)}")


async def nothing_left_behind(host: Rindle) -> None:
    """No row in a transient state, reasons on every failure, a ledger of discards only."""
    schema = host.schema
    for table, transient in TRANSIENT.items():
        stuck = await host.runtime.pool.fetch(
            f"SELECT id, state FROM {schema}.{table} WHERE state = ANY($1::text[])", list(transient))
        assert not stuck, f"{table} left in a transient state: {[tuple(r) for r in stuck]}"
    unexplained = await host.runtime.pool.fetch(
        f"SELECT 'asset' AS what, id, state FROM {schema}.assets"
        f" WHERE state = 'quarantined' AND coalesce(reason, '') = ''"
        f" UNION ALL SELECT 'variant', id, state FROM {schema}.variants"
        f" WHERE state = 'failed' AND coalesce(reason, '') = ''")
    assert not unexplained, f"failures without a reason: {[tuple(r) for r in unexplained]}"
    degraded_without_failure = await host.runtime.pool.fetch(
        f"SELECT a.id FROM {schema}.assets a WHERE a.state = 'degraded' AND NOT EXISTS"
        f" (SELECT 1 FROM {schema}.variants v WHERE v.asset_id = a.id AND v.state = 'failed')")
    assert not degraded_without_failure, [tuple(r) for r in degraded_without_failure]
    ledger = await host.runtime.pool.fetch(f"SELECT id, kind, status, error FROM {schema}.jobs")
    assert all(r["status"] == "discarded" and r["error"] for r in ledger), [tuple(r) for r in ledger]
    running = await host.runtime.pool.fetch(
        f"SELECT job_id, kind, attempt FROM {schema}.processing_runs WHERE outcome = 'running'")
    assert not running, f"attempts never closed: {[tuple(r) for r in running]}"


async def stored_keys(host: Rindle, storage: str) -> list[str]:
    """Every object key under the prefixes of the profiles that use ``storage``."""
    adapter = host.storages[storage]
    return sorted([info.key for profile in host.profiles.values() if profile.storage == storage
                   async for info in adapter.list(f"{profile.name}/")])


async def one_object_per_variant(host: Rindle, storage: str) -> None:
    """The variant objects in ``storage`` are exactly those its ready variant rows point at."""
    objects = [key for key in await stored_keys(host, storage) if "/variants/" in key]
    rows = await host.runtime.pool.fetch(
        f"SELECT v.storage_key FROM {host.schema}.variants v JOIN {host.schema}.assets a"
        f" ON a.id = v.asset_id WHERE a.storage = $1 AND v.state = 'ready'", storage)
    assert sorted(objects) == sorted(r["storage_key"] for r in rows), (objects, [tuple(r) for r in rows])
