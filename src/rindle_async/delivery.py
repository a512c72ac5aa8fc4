"""Delivery URLs: signed and expiring by default, public when the profile says so.

A URL is computed from one query and the adapter's local signing; no request
goes to the store.  ``urls()`` does the same for a page of assets, and for
several variants of each, in one query.  Quarantined and deleted assets never
get one; a variant that is not rendered yet raises :class:`NotReady` unless the
caller accepts the original (``fallback="original"``); a ``stale`` variant is
served, and keeps being served while its replacement renders (the row keeps the
previous object's key until the new one is ready).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import lazy
from .assets import asset_uuid
from .db import assets
from .errors import DeliveryForbidden, NotFound, NotReady, ValidationError
from .events import DeliverySigned
from .lifecycle.machines import ASSET, VARIANT
from .models import Delivered, placeholder_value
from .profiles import Profile, find_profile

if TYPE_CHECKING:
    from typing import TypeAlias
    from uuid import UUID

    import asyncpg

    from .runtime import Runtime

    #: an asset's row and its asked-for variants' rows by name (``db.assets.with_asked_variants``)
    Found: TypeAlias = "tuple[asyncpg.Record, dict[str, asyncpg.Record]]"

SERVABLE = ASSET.group("live")
FORBIDDEN = ASSET.group("forbidden")
RENDERED = VARIANT.group("servable")
DISPOSITIONS = ("inline", "attachment")


def content_disposition(disposition: str, filename: str | None) -> str:
    """A Content-Disposition value per RFC 6266, with an RFC 5987 ``filename*`` for non-ASCII.

    disposition: ``inline`` or ``attachment``.
    filename: the name the browser should use, or None.
    """
    if disposition not in DISPOSITIONS:
        raise ValidationError(f"disposition={disposition!r} is not one of {', '.join(DISPOSITIONS)}")
    if not filename:
        return disposition
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in filename)
    value = f'{disposition}; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


def check_options(ttl: int | None, fallback: str | None) -> None:
    """ValidationError unless ``ttl`` is None or positive and ``fallback`` is None or "original"."""
    if fallback not in (None, "original"):
        raise ValidationError(f"fallback={fallback!r} must be None or 'original'")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1):
        raise ValidationError(f"ttl={ttl!r} must be a positive number of seconds")


def check_servable(row: asyncpg.Record) -> None:
    """DeliveryForbidden for a quarantined or deleted asset, NotReady for one not promoted yet."""
    if row["state"] in FORBIDDEN:
        raise DeliveryForbidden(f"asset {row['id']} is {row['state']}; it is never delivered")
    if row["state"] not in SERVABLE:
        raise NotReady(f"asset {row['id']} is {row['state']}: its upload has not been promoted yet")


def check_variant(profile: Profile, name: str) -> None:
    """ValidationError unless the profile has a variant ``name``, listing the ones it has."""
    if name not in profile.variants:
        raise ValidationError(f"profile {profile.name!r} has no variant {name!r}; "
                              f"its variants: {', '.join(sorted(profile.variants)) or 'none'}")


def servable_profile(rt: Runtime, found: Found | None) -> Profile | None:
    """The profile of an asset a page read found, when it can be served: None for a missing or
    unservable asset, and for one whose profile is no longer configured (nothing signs it)."""
    profile = rt.profiles.get(found[0]["profile"]) if found is not None else None
    return profile if profile is not None and found is not None and found[0]["state"] in SERVABLE else None


def _original(profile: Profile, row: asyncpg.Record) -> tuple[str, str | None]:
    """The original's key and type; DeliveryForbidden when the profile does not serve originals."""
    if not profile.serve_original:
        raise DeliveryForbidden(f"profile {profile.name!r} does not serve originals (serve_original=False): "
                                "an original carries the uploader's metadata; ask for a variant")
    return row["storage_key"], row["content_type"]


def _source(profile: Profile, row: asyncpg.Record, variant: str | None,
            rendered: Mapping[str, asyncpg.Record], fallback: str | None) -> tuple[str, str | None]:
    """(storage key, content type) to serve: the variant's object, or the original for None or fallback."""
    if variant is None:
        return _original(profile, row)
    check_variant(profile, variant)
    found = rendered.get(variant)
    if found is not None and found["variant_state"] in RENDERED and found["variant_key"]:
        return found["variant_key"], found["variant_type"]
    if fallback == "original":
        return _original(profile, row)
    raise NotReady(f"variant {variant!r} of asset {row['id']} is "
                   f"{found['variant_state'] if found is not None else 'not rendered yet'}; retry later or "
                   f"pass fallback='original'")


def _event(asset_id: str, profile: Profile, row: asyncpg.Record, variant: str | None) -> DeliverySigned:
    return DeliverySigned(asset_id=asset_id, profile=profile.name, adapter=row["storage"],
                          variant=variant, mode="public" if profile.public else "signed")


async def url(rt: Runtime, asset_id: object, *, variant: str | None = None, ttl: int | None = None,
              disposition: str | None = None, filename: str | None = None,
              fallback: str | None = None) -> str:
    """A URL for the asset's original or one of its variants.

    rt: the runtime of the opened Rindle.
    asset_id: the asset.
    variant: a variant name of the asset's profile; None for the original.
    ttl: seconds the URL stays valid (default: the profile's url_ttl); ignored for public profiles.
    disposition: ``inline`` or ``attachment`` (sets Content-Disposition on the response).
    filename: the download name (default: the uploaded file's sanitized name).
    fallback: ``"original"`` to get the original while the variant is not rendered.
    """
    check_options(ttl, fallback)
    uuid = asset_uuid(asset_id)
    found = (await assets.with_asked_variants(rt.pool, rt.schema, [uuid], [variant])).get(uuid)
    if found is None:
        raise NotFound(f"asset {asset_id} does not exist")
    row, rendered = found
    check_servable(row)
    profile = find_profile(rt.profiles, row["profile"])
    await request_lazy(rt, {uuid: found}, [variant])  # a lazy variant renders from now on; NotReady below
    key, content_type = _source(profile, row, variant, rendered, fallback)
    header = None
    if disposition is not None or filename is not None:
        header = content_disposition(disposition or "inline", filename or row["filename"])
    signed = await rt.storages[row["storage"]].url(
        key, expires_in=None if profile.public else (ttl or profile.url_ttl), content_type=content_type,
        disposition=header)
    await rt.events.deliver([_event(str(uuid), profile, row, variant)])
    return signed


def variant_names(variants: Iterable[str]) -> tuple[str, ...]:
    """``variants`` as a tuple of names, each once; ValidationError unless it is a non-empty
    collection of strings."""
    if (isinstance(variants, (str, bytes)) or not isinstance(variants, Iterable)
            or not (names := tuple(dict.fromkeys(variants)))
            or not all(isinstance(name, str) and name for name in names)):
        raise ValidationError(f"variants={variants!r} must be a non-empty collection of variant names, "
                              f"e.g. variants=('thumb', 'large')")
    return names


async def _sign_asset(rt: Runtime, asset_id: UUID, found: Found | None, names: tuple[str | None, ...],
                      ttl: int | None, fallback: str | None, events: list[DeliverySigned],
                      issued: datetime) -> dict[str | None, str | None]:
    """One asset's URLs of ``names`` (None where it cannot be served), its events added to ``events``."""
    signed: dict[str | None, str | None] = dict.fromkeys(names)
    profile = servable_profile(rt, found)
    if profile is None or found is None:
        return signed
    row, rendered = found
    sign = rt.storages[row["storage"]].url
    expires_in = None if profile.public else (ttl or profile.url_ttl)
    mode = "public" if profile.public else "signed"
    for name in names:
        try:
            key, content_type = _source(profile, row, name, rendered, fallback)
        except (NotReady, DeliveryForbidden):  # not rendered yet; an original the profile keeps back
            continue
        signed[name] = await sign(key, expires_in=expires_in, content_type=content_type)
        events.append(DeliverySigned(asset_id=str(asset_id), profile=profile.name, adapter=row["storage"],
                                     variant=name, mode=mode, occurred_at=issued))
    return signed


async def request_lazy(rt: Runtime, found_by_id: Mapping[UUID, Found], names: Iterable[str | None]) -> None:
    """Plan the lazy variants a page asked for that its assets have no row for yet (one
    transaction for the page, none once they exist)."""
    wants = {}
    for asset_id, (row, rendered) in found_by_id.items():
        profile = rt.profiles.get(row["profile"])
        if profile is not None and (missing := lazy.wanted(profile, row, names, rendered)):
            wants[asset_id] = (profile.name, missing)
    await lazy.request(rt, wants)


def _delivered(signed: dict[str | None, str | None], several: bool, found: Found | None) -> Delivered:
    """An asset's ``Delivered``: ``urls`` for several variants, else ``url``."""
    placeholder = placeholder_value(found[0]["placeholder"]) if found is not None else None
    if several:
        return Delivered(urls={str(name): url for name, url in signed.items()}, placeholder=placeholder)
    [url] = signed.values()
    return Delivered(url=url, placeholder=placeholder)


async def urls(rt: Runtime, asset_ids: Iterable[object], *, variant: str | None = None,
               variants: Iterable[str] | None = None, ttl: int | None = None,
               fallback: str | None = None, placeholders: bool = False) -> dict[str, Any]:
    """URLs for a page of assets, for one variant or several, in one query and no storage round trip.

    rt: the runtime of the opened Rindle.
    asset_ids: the assets.
    variant: a variant name; None for the originals.  Gives asset id -> URL.
    variants: several variant names instead, e.g. ("thumb", "large").  Gives asset id ->
      {variant name -> URL}.
    ttl: seconds the URLs stay valid (default: each profile's url_ttl).
    fallback: ``"original"`` to use the original where a variant is not rendered.
    placeholders: give each asset a ``Delivered`` (its URL or URLs, and its placeholder) instead.
    URLs are None for assets that are missing, not ready, quarantined or deleted, or whose
    profile is no longer configured, and for variants not rendered yet (without fallback), so
    one bad asset does not break a page.  A variant name the asset's profile lacks raises
    ValidationError, as in ``url()``.
    """
    check_options(ttl, fallback)
    if variant is not None and variants is not None:
        raise ValidationError(f"pass variant= or variants=, not both (got variant={variant!r}, "
                              f"variants={variants!r})")
    names = (variant,) if variants is None else variant_names(variants)
    ids = [asset_uuid(a) for a in asset_ids]
    found_by_id = await assets.with_asked_variants(rt.pool, rt.schema, ids, names)
    await request_lazy(rt, found_by_id, names)
    issued = datetime.now(timezone.utc)  # one moment for the page's DeliverySigned events
    events: list[DeliverySigned] = []
    out: dict[str, Any] = {}
    for asset_id in ids:
        found = found_by_id.get(asset_id)
        signed = await _sign_asset(rt, asset_id, found, names, ttl, fallback, events, issued)
        if placeholders:
            out[str(asset_id)] = _delivered(signed, variants is not None, found)
        else:
            out[str(asset_id)] = signed if variants is not None else signed[variant]
    await rt.events.deliver(events)
    return out
