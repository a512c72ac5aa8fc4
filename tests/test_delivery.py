"""Delivery URLs: signed by default, public by choice, NotReady and fallback, stale
served, quarantined and deleted refused, content disposition, and urls() costs."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import httpx
import pytest

from rindle_async import DeliveryForbidden, DeliverySigned, NotFound, NotReady, ValidationError
from rindle_async import states
from rindle_async.delivery import content_disposition

from .conftest import drain
from .media import GuardedStorage, avatar_profile, jpeg, png


def local_key(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return unquote(parts.path.split("/rindle/", 1)[1]), {k: v[0] for k, v in parse_qs(parts.query).items()}


async def ready_asset(rindle, redis_url, body=None):
    asset = await rindle.upload("avatar", body or jpeg(120, 80), filename="Strandbild über.jpg")
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(asset.id)
    assert asset.state == "ready", asset
    return asset


async def test_private_urls_are_signed_and_expire(media_rindle, redis_url, local_storage):
    rindle = await media_rindle()
    asset = await ready_asset(rindle, redis_url)
    events = []
    rindle.subscribe(events.append, DeliverySigned)
    url = await rindle.url(asset.id, variant="thumb")
    key, params = local_key(url)
    assert "/variants/thumb-" in key and key.endswith(".webp")
    assert params["content_type"] == "image/webp"
    assert abs(int(params["expires"]) - (time.time() + 300)) < 5  # the profile's url_ttl
    signed = local_storage.verify("GET", key, params)
    assert signed.content_type == "image/webp"
    with pytest.raises(DeliveryForbidden, match="expired"):
        local_storage.verify("GET", key, params, now=time.time() + 301)
    body = b"".join([c async for c in local_storage.get(key)])
    assert body[:4] == b"RIFF"
    short = await rindle.url(asset.id, ttl=10)
    assert int(local_key(short)[1]["expires"]) <= time.time() + 11
    assert [(e.asset_id, e.variant, e.mode, e.adapter) for e in events] == [
        (asset.id, "thumb", "signed", "media"), (asset.id, None, "signed", "media")]


async def test_public_profiles_get_plain_urls(make_rindle, local_storage, s3_storage, redis_url):
    rindle = await make_rindle(relay=False, storages={"media": local_storage, "s3": s3_storage},
                               profiles=[avatar_profile("media", public=True)])
    asset = await ready_asset(rindle, redis_url)
    events = []
    rindle.subscribe(events.append)
    _, params = local_key(await rindle.url(asset.id, variant="large"))
    assert "expires" not in params
    assert events[0].mode == "public"


async def test_s3_signed_and_cdn_urls(make_rindle, s3_endpoint, s3_bucket, redis_url):
    from rindle_async import S3Storage

    private = GuardedStorage(S3Storage(bucket=s3_bucket, endpoint_url=s3_endpoint, path_style=True))
    rindle = await make_rindle(relay=False, storages={"s3": private},
                               profiles=[avatar_profile("s3")])
    asset = await ready_asset(rindle, redis_url)
    url = await rindle.url(asset.id, variant="thumb", disposition="attachment")
    query = parse_qs(urlsplit(url).query)
    assert "X-Amz-Signature" in query and query["X-Amz-Expires"] == ["300"]
    assert query["response-content-type"] == ["image/webp"]
    assert query["response-content-disposition"] == [
        "attachment; filename=\"Strandbild _ber.jpg\"; filename*=UTF-8''Strandbild%20%C3%BCber.jpg"]
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200 and response.content[:4] == b"RIFF"
    cdn = GuardedStorage(S3Storage(bucket=s3_bucket, endpoint_url=s3_endpoint, path_style=True,
                                   public_base_url="https://cdn.example.test/media"))
    public = await make_rindle(relay=False, migrate=False, storages={"s3": cdn},
                               profiles=[avatar_profile("s3", public=True)])
    url = await public.url(asset.id, variant="thumb")
    assert url.startswith("https://cdn.example.test/media/avatar/") and "?" not in url


async def test_not_ready_variants_and_the_original_fallback(media_rindle, db, schema):
    rindle = await media_rindle()
    asset = await rindle.upload("avatar", png())
    with pytest.raises(NotReady, match="is validating: its upload has not been promoted yet"):
        await rindle.url(asset.id)
    for a, b in [("validating", "analyzing"), ("analyzing", "promoting"), ("promoting", "available")]:
        async with rindle.db.transaction() as uow:
            await states.transition(uow, states.ASSET, asset.id, a, b)
    with pytest.raises(NotReady, match="variant 'thumb' of asset .* is not planned yet; retry later"):
        await rindle.url(asset.id, variant="thumb")
    url = await rindle.url(asset.id, variant="thumb", fallback="original")
    assert local_key(url)[0].endswith("/original.png")
    with pytest.raises(ValidationError, match="profile 'avatar' has no variant 'huge'"):
        await rindle.url(asset.id, variant="huge")
    with pytest.raises(ValidationError, match="fallback='best' must be None or 'original'"):
        await rindle.url(asset.id, variant="thumb", fallback="best")
    with pytest.raises(NotFound):
        await rindle.url("00000000-0000-0000-0000-000000000000")


async def test_stale_variants_are_served_and_refused_assets_never(media_rindle, redis_url, db, schema):
    rindle = await media_rindle()
    asset = await ready_asset(rindle, redis_url)
    before = local_key(await rindle.url(asset.id, variant="thumb"))[0]
    variant_id = await db.fetchval(f"SELECT id FROM {schema}.variants WHERE name = 'thumb'")
    async with rindle.db.transaction() as uow:
        await states.transition(uow, states.VARIANT, variant_id, "ready", "stale")
    assert local_key(await rindle.url(asset.id, variant="thumb"))[0] == before
    async with rindle.db.transaction() as uow:
        await states.transition(uow, states.ASSET, asset.id, "ready", "quarantined", reason="abuse report")
    with pytest.raises(DeliveryForbidden, match="is quarantined; it is never delivered"):
        await rindle.url(asset.id)
    with pytest.raises(DeliveryForbidden):
        await rindle.url(asset.id, variant="thumb", fallback="original")
    async with rindle.db.transaction() as uow:
        await states.transition(uow, states.ASSET, asset.id, "quarantined", "deleted")
    with pytest.raises(DeliveryForbidden, match="is deleted"):
        await rindle.url(asset.id)


def test_content_disposition_rfc6266_and_5987():
    assert content_disposition("inline", None) == "inline"
    assert content_disposition("attachment", "report.pdf") == 'attachment; filename="report.pdf"'
    assert content_disposition("attachment", 'a"b\\c.txt') == (
        "attachment; filename=\"a_b_c.txt\"; filename*=UTF-8''a%22b%5Cc.txt")
    assert content_disposition("inline", "naïve €.png") == (
        "inline; filename=\"na_ve _.png\"; filename*=UTF-8''na%C3%AFve%20%E2%82%AC.png")
    with pytest.raises(ValidationError, match="disposition='download' is not one of inline, attachment"):
        content_disposition("download", "x")


async def test_urls_for_a_page_of_50_assets_costs_two_queries_and_no_storage_calls(
        make_rindle, database_url, local_storage, redis_url, schema):
    queries = []

    async def log_queries(conn):
        conn.add_query_logger(lambda record: queries.append(record.query))

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4, init=log_queries)
    try:
        rindle = await make_rindle(pool=pool, database_url=None, relay=False,
                                   storages={"media": local_storage}, profiles=[avatar_profile("media")])
        ready = [await rindle.upload("avatar", png(40, 30)) for _ in range(3)]
        await drain(rindle, redis_url)
        pending = [await rindle.upload("avatar", png()) for _ in range(47)]
        ids = [a.id for a in ready + pending]
        local_storage.calls.clear()
        queries.clear()
        urls = await rindle.urls(ids, variant="thumb")
        # asyncpg's own type introspection and pool reset are not queries of ours
        ours = [q for q in queries if f"{schema}." in q]
        assert 1 <= len(ours) <= 2, ours
        assert set(local_storage.calls) <= {"url"}  # computed locally: no request to the store
        assert list(urls) == ids
        assert all(urls[a.id] for a in ready) and all(urls[a.id] is None for a in pending)
        with_fallback = await rindle.urls(ids, variant="thumb", fallback="original")
        assert all(with_fallback[a.id] for a in ready)
        assert all(v is None for k, v in with_fallback.items() if k in {a.id for a in pending})
    finally:
        await rindle.close()
        await pool.close()


async def test_urls_maps_an_asset_of_a_retired_profile_to_none(media_rindle, redis_url, db, schema):
    rindle = await media_rindle()
    kept = await ready_asset(rindle, redis_url)
    retired = await ready_asset(rindle, redis_url, jpeg(40, 30))
    await db.execute(f"UPDATE {schema}.assets SET profile = 'retired' WHERE id = $1::uuid", retired.id)
    urls = await rindle.urls([kept.id, retired.id], variant="thumb")
    assert urls[kept.id] and urls[retired.id] is None
    with pytest.raises(ValidationError, match="unknown profile 'retired'"):
        await rindle.url(retired.id)
