"""Lazy variants (``Variant(eager=False)``): not rendered at promotion, but when a URL of one is
first asked for, or ahead of time by ``warm_variants``.

A request for a lazy variant that has no row yet plans it (its row queued, the asset's render
staged, in one transaction under the asset's lock), and answers as for any variant not rendered
yet: the fallback, ``NotReady`` or ``None``.  A thousand requests stage one render: the rows exist
after the first, and this process also remembers for a minute what it asked for, so a busy page
does not open a transaction per view.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING
from uuid import UUID

from .db import assets
from .lifecycle import transitions
from .lifecycle.machines import ASSET
from .maintenance.paging import BATCH, FIRST_ID, keyset_pages
from .maintenance.report import Progress, Report, emit
from .promotion import plan_variants

if TYPE_CHECKING:
    import asyncpg

    from .profiles import Profile
    from .runtime import Runtime

#: seconds this process skips asking again for a lazy variant it asked for
REMEMBER = 60.0
_asked: dict[tuple[str, UUID, str], float] = {}


def wanted(profile: Profile, row: asyncpg.Record, names: Iterable[str | None],
           rendered: Mapping[str, asyncpg.Record]) -> list[str]:
    """The lazy variants of ``names`` a served asset has no row for, and that this process has
    not asked for within ``REMEMBER`` seconds.

    profile: the asset's profile.
    row: the asset's row (its state decides whether it is served).
    names: the variant names a request asked for.
    rendered: the asset's rows of those variants, by name.
    """
    if row["state"] not in ASSET.group("rendered"):
        return []
    now = time.monotonic()
    lazy = [n for n in names if n is not None and n in profile.variants and not profile.variants[n].eager
            and n not in rendered]
    return [n for n in lazy if _asked.get((profile.name, row["id"], n), 0.0) < now]


async def request(rt: Runtime, wants: Mapping[UUID, tuple[str, list[str]]]) -> int:
    """Plan the lazy variants a page asked for, in one transaction; return how many were planned.

    rt: the runtime of the opened Rindle.
    wants: asset id -> (its profile's name, the lazy variant names it lacks).
    """
    wants = {asset_id: want for asset_id, want in wants.items() if want[1]}
    if not wants:
        return 0
    asked = [(profile, asset_id, name) for asset_id, (profile, names) in wants.items() for name in names]
    _remember(asked)
    try:
        return await _plan(rt, wants)
    except BaseException:
        for key in asked:  # not planned: the next request asks again
            _asked.pop(key, None)
        raise


def _remember(asked: list[tuple[str, UUID, str]]) -> None:
    until = time.monotonic() + REMEMBER
    _asked.update(dict.fromkeys(asked, until))
    if len(_asked) > 100_000:  # forget what expired, now and then
        now = time.monotonic()
        for key in [k for k, v in _asked.items() if v < now]:
            del _asked[key]


async def _plan(rt: Runtime, wants: Mapping[UUID, tuple[str, list[str]]]) -> int:
    planned = 0
    async with rt.db.transaction() as uow:
        states = await assets.lock_states(uow.conn, uow.schema, wants)  # in id order
        for asset_id, state in states.items():
            if state not in ASSET.group("rendered"):
                continue
            profile, names = wants[asset_id]
            count = await plan_variants(uow, rt, asset_id, profile, names)  # re-read under the lock
            if count and state in ASSET.group("settled"):
                await transitions.transition(uow, ASSET, asset_id, state, "processing")
            planned += count
    return planned


async def warm_variants(rt: Runtime, *, profile: str | None = None, variant: str | None = None,
                        dry_run: bool = False, progress: Progress | None = None,
                        batch: int = BATCH) -> Report:
    """Plan every lazy variant not rendered yet, so the workers render them ahead of any request.

    rt: the runtime of the opened Rindle.
    profile: only this profile.
    variant: only this lazy variant.
    dry_run: report what would be planned, change nothing.
    progress: called with (assets checked so far, 0) after each page.
    batch: assets per page and per transaction.
    """
    report, checked = Report("warm_variants", dry_run), 0
    for config in (p for p in rt.profiles.values() if profile in (None, p.name)):
        names = [n for n in config.lazy_names() if variant in (None, n)]
        if not names:
            continue
        async for page in keyset_pages(_pages_of(rt, config.name, names, batch), lambda row: row[0], FIRST_ID,
                                       batch):
            for asset_id, missing in page:
                for name in missing:
                    report.add("variants_planned", f"{asset_id}:{name}")
            if not dry_run:
                await _plan(rt, {asset_id: (config.name, missing) for asset_id, missing in page if missing})
            checked += len(page)
            if progress:
                progress(checked, 0)
    return await emit(rt, report)


def _pages_of(rt: Runtime, profile: str, names: list[str],
              batch: int) -> Callable[[UUID], Awaitable[list[tuple[UUID, list[str]]]]]:
    """The reader of one profile's pages of assets with the lazy variants each lacks."""
    return lambda after: assets.lacking_page(rt.pool, rt.schema, profile, names, after, batch)


def _forget() -> None:
    """Forget every request this process remembers (tests)."""
    _asked.clear()
