"""Responsive images: ``srcset`` values and ``<picture>`` sources from the stored widths of
rendered variants (a profile's ladder by default), for a whole page in one query and no
request to the store.  Variants not rendered yet are left out; an asset with none rendered
gets None on a page (``srcsets``, ``pictures``) and NotReady alone (``srcset``, ``picture``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from .assets import asset_uuid
from .db import assets
from .delivery import (
    RENDERED,
    check_options,
    check_servable,
    check_variant,
    request_lazy,
    servable_profile,
    variant_names,
)
from .errors import NotFound, NotReady, ValidationError
from .events import DeliverySigned
from .models import Picture, PictureSource, placeholder_value
from .profiles import Profile

if TYPE_CHECKING:
    import asyncpg

    from .runtime import Runtime

#: formats a <picture> offers, best first; the last one an asset has is its <img>
FORMAT_ORDER = ("avif", "webp", "png", "gif", "jpeg")


class Rendition(NamedTuple):
    """One rendered variant, as a srcset lists it."""

    width: int
    height: int
    key: str
    content_type: str
    name: str


def _chosen(profile: Profile, variants: tuple[str, ...] | None, fmt: str | None) -> list[str]:
    """The variant names to use for an asset of ``profile``: ``variants`` (of ``fmt``, when
    given) or its ladder's."""
    if variants is None:
        names = profile.ladder_names(fmt)
        if not names:
            raise ValidationError(f"profile {profile.name!r} has no ladder"
                                  + (f" in {fmt}" if fmt and profile.ladder else "")
                                  + "; pass variants=(...) or give the profile ladder=(...)")
        return names
    for name in variants:
        check_variant(profile, name)
    return [name for name in variants if fmt is None or profile.variants[name].format == fmt]


def _renditions(profile: Profile, names: list[str],
                rendered: Mapping[str, asyncpg.Record]) -> dict[str, list[Rendition]]:
    """format -> its rendered variants, narrowest first, one per stored width."""
    by_format: dict[str, dict[int, Rendition]] = {}
    for name in names:
        row = rendered.get(name)
        if row is None or row["variant_state"] not in RENDERED:
            continue
        if not (row["variant_key"] and row["variant_width"]):
            continue
        widths = by_format.setdefault(profile.variants[name].format, {})
        widths.setdefault(row["variant_width"], Rendition(row["variant_width"], row["variant_height"],
                                                          row["variant_key"], row["variant_type"], name))
    return {fmt: [widths[w] for w in sorted(widths)] for fmt, widths in by_format.items()}


class _Signer:
    """Signs one page's URLs with one clock for its DeliverySigned events."""

    def __init__(self, rt: Runtime, ttl: int | None) -> None:
        self.rt, self.ttl = rt, ttl
        self.events: list[DeliverySigned] = []
        self.issued = datetime.now(timezone.utc)

    async def srcset(self, profile: Profile, row: asyncpg.Record,
                     entries: list[Rendition]) -> tuple[str, str]:
        """The ``srcset`` of ``entries`` (narrowest first) and the URL of the widest."""
        sign = self.rt.storages[row["storage"]].url
        expires_in = None if profile.public else (self.ttl or profile.url_ttl)
        urls = []
        for entry in entries:
            urls.append(await sign(entry.key, expires_in=expires_in, content_type=entry.content_type))
            self.events.append(DeliverySigned(asset_id=str(row["id"]), profile=profile.name,
                                              adapter=row["storage"], variant=entry.name,
                                              mode="public" if profile.public else "signed",
                                              occurred_at=self.issued))
        return ", ".join(f"{url} {entry.width}w" for url, entry in zip(urls, entries, strict=True)), urls[-1]

    async def deliver(self) -> None:
        await self.rt.events.deliver(self.events)


async def _rows(rt: Runtime, asset_ids: Iterable[object], variants: tuple[str, ...] | None,
                fmt: str | None) -> tuple[list[Any], dict[Any, Any]]:
    """The asked-for ids (as UUIDs) and what the page's one query read for them."""
    ids = [asset_uuid(a) for a in asset_ids]
    wanted = variants if variants is not None else tuple(
        {name for profile in rt.profiles.values() for name in profile.ladder_names(fmt)})
    found = await assets.with_asked_variants(rt.pool, rt.schema, ids, wanted)
    await request_lazy(rt, found, wanted)
    return ids, found


def _check(variants: Iterable[str] | None, fmt: str | None, ttl: int | None) -> tuple[str, ...] | None:
    check_options(ttl, None)
    if fmt is not None and fmt not in FORMAT_ORDER:
        raise ValidationError(f"format={fmt!r} is not one of {', '.join(FORMAT_ORDER)}")
    return None if variants is None else variant_names(variants)


async def srcsets(rt: Runtime, asset_ids: Iterable[object], *, variants: Iterable[str] | None = None,
                  format: str | None = None, ttl: int | None = None) -> dict[str, str | None]:
    """``srcset`` values for a page of assets, by asset id; None where none is rendered.

    rt: the runtime of the opened Rindle.
    asset_ids: the assets.
    variants: the variant names (of one format); default: the profile's ladder in ``format``.
    format: the one format of the srcset (needed when the ladder has several).
    ttl: seconds the URLs stay valid (default: each profile's url_ttl).
    """
    names = _check(variants, format, ttl)
    ids, found = await _rows(rt, asset_ids, names, format)
    signer, out = _Signer(rt, ttl), {}
    for asset_id in ids:
        out[str(asset_id)] = await _srcset_of(rt, signer, found.get(asset_id), names, format)
    await signer.deliver()
    return out


async def _srcset_of(rt: Runtime, signer: _Signer, found: Any, names: tuple[str, ...] | None,
                     fmt: str | None) -> str | None:
    profile = servable_profile(rt, found)
    if profile is None:
        return None
    chosen = _chosen(profile, names, fmt)
    formats = {profile.variants[name].format for name in chosen}
    if len(formats) > 1:
        raise ValidationError(f"a srcset holds one format, but these variants of profile {profile.name!r} "
                              f"are {', '.join(sorted(formats))}; pass format=")
    renditions = _renditions(profile, chosen, found[1])
    if not renditions:
        return None
    srcset, _ = await signer.srcset(profile, found[0], next(iter(renditions.values())))
    return srcset


async def pictures(rt: Runtime, asset_ids: Iterable[object], *, variants: Iterable[str] | None = None,
                   ttl: int | None = None) -> dict[str, Picture | None]:
    """``<picture>`` sources for a page of assets, by asset id; None where none is rendered.

    rt: the runtime of the opened Rindle.
    asset_ids: the assets.
    variants: the variant names to offer, grouped by their format; default: the profile's ladder.
    ttl: seconds the URLs stay valid (default: each profile's url_ttl).
    """
    names = _check(variants, None, ttl)
    ids, found = await _rows(rt, asset_ids, names, None)
    signer, out = _Signer(rt, ttl), {}
    for asset_id in ids:
        out[str(asset_id)] = await _picture_of(rt, signer, found.get(asset_id), names)
    await signer.deliver()
    return out


async def _picture_of(rt: Runtime, signer: _Signer, found: Any,
                      names: tuple[str, ...] | None) -> Picture | None:
    profile = servable_profile(rt, found)
    if profile is None:
        return None
    row, rendered = found
    renditions = _renditions(profile, _chosen(profile, names, None), rendered)
    if not renditions:
        return None
    *better, fallback = sorted(renditions, key=FORMAT_ORDER.index)
    sources = []
    for fmt in better:
        srcset, _ = await signer.srcset(profile, row, renditions[fmt])
        sources.append(PictureSource(type=renditions[fmt][0].content_type, srcset=srcset))
    srcset, src = await signer.srcset(profile, row, renditions[fallback])
    widest = renditions[fallback][-1]
    return Picture(sources=sources, src=src, srcset=srcset, type=widest.content_type, width=widest.width,
                   height=widest.height, placeholder=placeholder_value(row["placeholder"]))


async def _refuse(rt: Runtime, asset_id: object) -> None:
    """NotFound, DeliveryForbidden or NotReady for a single asset that a page would map to None."""
    key = asset_uuid(asset_id)
    rows = await assets.with_asked_variants(rt.pool, rt.schema, [key], ())
    if key not in rows:
        raise NotFound(f"asset {asset_id} does not exist")
    check_servable(rows[key][0])
    raise NotReady(f"asset {asset_id} has none of the asked-for variants rendered yet; retry later")


async def srcset(rt: Runtime, asset_id: object, *, variants: Iterable[str] | None = None,
                 format: str | None = None, ttl: int | None = None) -> str:
    """The ``srcset`` of one asset (see ``srcsets``); NotFound, DeliveryForbidden or NotReady.

    rt: the runtime of the opened Rindle.
    asset_id: the asset.
    variants: the variant names (of one format); default: the profile's ladder in ``format``.
    format: the one format of the srcset (needed when the ladder has several).
    ttl: seconds the URLs stay valid (default: the profile's url_ttl).
    """
    found = await srcsets(rt, [asset_id], variants=variants, format=format, ttl=ttl)
    value = found[str(asset_uuid(asset_id))]
    if value is None:
        await _refuse(rt, asset_id)
    assert value is not None
    return value


async def picture(rt: Runtime, asset_id: object, *, variants: Iterable[str] | None = None,
                  ttl: int | None = None) -> Picture:
    """The ``<picture>`` sources of one asset (see ``pictures``); NotFound, DeliveryForbidden or
    NotReady.

    rt: the runtime of the opened Rindle.
    asset_id: the asset.
    variants: the variant names to offer, grouped by their format; default: the profile's ladder.
    ttl: seconds the URLs stay valid (default: the profile's url_ttl).
    """
    found = await pictures(rt, [asset_id], variants=variants, ttl=ttl)
    value = found[str(asset_uuid(asset_id))]
    if value is None:
        await _refuse(rt, asset_id)
    assert value is not None
    return value
