"""Delivery URLs: signed and expiring by default, public when the profile says so.

A URL is computed from one row read and the adapter's local signing; no request
goes to the store.  Quarantined and deleted assets never get one; a variant
that is not rendered yet raises :class:`NotReady` unless the caller accepts the
original (``fallback="original"``); a ``stale`` variant is served, and keeps
being served while its replacement renders (the row keeps the previous object's
key until the new one is ready).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote

from .assets import asset_uuid
from .errors import DeliveryForbidden, NotFound, NotReady, ValidationError
from .events import DeliverySigned
from .profiles import find_profile

if TYPE_CHECKING:
    from .app import Rindle

#: Asset states whose original has passed promotion and may be served.
SERVABLE = frozenset({"available", "processing", "ready", "degraded"})
FORBIDDEN = frozenset({"quarantined", "deleted"})
#: Variant states that may have an object to serve: ready, stale, and a re-render in
#: progress (queued, processing, or failed again), which keeps serving the previous object.
RENDERED = frozenset({"ready", "stale", "queued", "processing", "failed"})
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


def _query(rindle: Rindle, many: bool) -> str:
    where = "a.id = ANY($1::uuid[])" if many else "a.id = $1"
    return (f"SELECT a.id, a.profile, a.storage, a.state, a.storage_key, a.content_type,"
            f" a.filename, v.state AS variant_state, v.storage_key AS variant_key,"
            f" v.content_type AS variant_type"
            f" FROM {rindle.schema}.assets a LEFT JOIN {rindle.schema}.variants v"
            f" ON v.asset_id = a.id AND v.name = $2 WHERE {where}")


async def _sign(rindle: Rindle, row: dict, variant: str | None, *, ttl: int | None,
                disposition: str | None, filename: str | None, fallback: str | None) -> str:
    asset_id = row["id"]
    if row["state"] in FORBIDDEN:
        raise DeliveryForbidden(f"asset {asset_id} is {row['state']}; it is never delivered")
    if row["state"] not in SERVABLE:
        raise NotReady(f"asset {asset_id} is {row['state']}: its upload has not been promoted yet")
    profile = find_profile(rindle.profiles, row["profile"])
    key, content_type = row["storage_key"], row["content_type"]
    if variant is not None:
        if variant not in profile.variants:
            raise ValidationError(f"profile {profile.name!r} has no variant {variant!r}; "
                                  f"its variants: {', '.join(sorted(profile.variants)) or 'none'}")
        if row["variant_state"] in RENDERED and row["variant_key"]:
            key, content_type = row["variant_key"], row["variant_type"]
        elif fallback != "original":
            raise NotReady(f"variant {variant!r} of asset {asset_id} is "
                           f"{row['variant_state'] or 'not planned yet'}; retry later or pass "
                           f"fallback='original'")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1):
        raise ValidationError(f"ttl={ttl!r} must be a positive number of seconds")
    header = None
    if disposition is not None or filename is not None:
        header = content_disposition(disposition or "inline", filename or row["filename"])
    storage = rindle.storages[row["storage"]]
    expires_in = None if profile.public else (ttl or profile.url_ttl)
    url = await storage.url(key, expires_in=expires_in, content_type=content_type,
                            disposition=header)
    await rindle.bus.deliver([DeliverySigned(
        asset_id=str(asset_id), profile=profile.name, adapter=row["storage"], variant=variant,
        mode="public" if profile.public else "signed")])
    return url


async def url(rindle: Rindle, asset_id: object, *, variant: str | None = None, ttl: int | None = None,
              disposition: str | None = None, filename: str | None = None,
              fallback: str | None = None) -> str:
    """A URL for the asset's original or one of its variants.

    rindle: the opened Rindle.
    asset_id: the asset.
    variant: a variant name of the asset's profile; None for the original.
    ttl: seconds the URL stays valid (default: the profile's url_ttl); ignored for public profiles.
    disposition: ``inline`` or ``attachment`` (sets Content-Disposition on the response).
    filename: the download name (default: the uploaded file's sanitized name).
    fallback: ``"original"`` to get the original while the variant is not rendered.
    """
    if fallback not in (None, "original"):
        raise ValidationError(f"fallback={fallback!r} must be None or 'original'")
    row = await rindle.pool.fetchrow(_query(rindle, many=False), asset_uuid(asset_id), variant)
    if row is None:
        raise NotFound(f"asset {asset_id} does not exist")
    return await _sign(rindle, dict(row), variant, ttl=ttl, disposition=disposition,
                       filename=filename, fallback=fallback)


async def urls(rindle: Rindle, asset_ids: Iterable[object], *, variant: str | None = None,
               ttl: int | None = None, fallback: str | None = None) -> dict[str, str | None]:
    """URLs for a page of assets in one query and no storage round trip.

    rindle: the opened Rindle.
    asset_ids: the assets.
    variant: a variant name; None for the originals.
    ttl: seconds the URLs stay valid (default: each profile's url_ttl).
    fallback: ``"original"`` to use the original where the variant is not rendered.
    Returns asset id -> URL, with None for assets that are missing, not ready,
    quarantined or deleted, or whose profile is no longer configured, so one bad
    asset does not break a page.
    """
    if fallback not in (None, "original"):
        raise ValidationError(f"fallback={fallback!r} must be None or 'original'")
    ids = [asset_uuid(a) for a in asset_ids]
    rows = await rindle.pool.fetch(_query(rindle, many=True), ids, variant)
    by_id = {row["id"]: dict(row) for row in rows}
    out: dict[str, str | None] = {}
    for asset_id in ids:
        row = by_id.get(asset_id)
        if row is not None and row["profile"] not in rindle.profiles:
            row = None  # its profile is no longer configured: nothing to sign it with
        try:
            out[str(asset_id)] = None if row is None else await _sign(
                rindle, row, variant, ttl=ttl, disposition=None, filename=None, fallback=fallback)
        except (DeliveryForbidden, NotReady):
            out[str(asset_id)] = None
    return out
