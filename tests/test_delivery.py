"""Delivery URLs: signed by default, public by choice, NotReady and fallback, stale
served, quarantined and deleted refused, content disposition, and urls() for one
variant or several: what it maps to None and what a page costs."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import httpx
import pytest

from rindle_async import DeliveryForbidden, DeliverySigned, NotFound, NotReady, ValidationError, Variant
from rindle_async.lifecycle import transitions
from rindle_async.lifecycle.machines import ASSET, VARIANT
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
        async with rindle.runtime.db.transaction() as uow:
            await transitions.transition(uow, ASSET, asset.id, a, b)
    with pytest.raises(NotReady, match="variant 'thumb' of asset .* is not rendered yet; retry later"):
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
    async with rindle.runtime.db.transaction() as uow:
        await transitions.transition(uow, VARIANT, variant_id, "ready", "stale")
    assert local_key(await rindle.url(asset.id, variant="thumb"))[0] == before
    async with rindle.runtime.db.transaction() as uow:
        await transitions.transition(uow, ASSET, asset.id, "ready", "quarantined", reason="abuse report")
    with pytest.raises(DeliveryForbidden, match="is quarantined; it is never delivered"):
        await rindle.url(asset.id)
    with pytest.raises(DeliveryForbidden):
        await rindle.url(asset.id, variant="thumb", fallback="original")
    async with rindle.runtime.db.transaction() as uow:
        await transitions.transition(uow, ASSET, asset.id, "quarantined", "deleted")
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


@pytest.fixture
async def counted_rindle(make_rindle, database_url, local_storage, schema):
    """``await counted_rindle(profile)``: (a Rindle on a pool that logs its queries, that log of
    this test's own queries; asyncpg's type introspection and pool resets are not ours)."""
    queries: list[str] = []
    pools = []

    async def log_queries(conn):
        conn.add_query_logger(lambda record: queries.append(record.query))

    async def make(profile):
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4, init=log_queries)
        pools.append(pool)
        rindle = await make_rindle(pool=pool, database_url=None, relay=False,
                                   storages={"media": local_storage}, profiles=[profile])
        return rindle, queries

    yield make
    for pool in pools:
        await pool.close()


def ours(queries: list[str], schema: str) -> list[str]:
    return [q for q in queries if f"{schema}." in q]


async def page_of_50(rindle, redis_url, ready: int) -> tuple[list, list]:
    """(``ready`` rendered assets, the other 50 - ``ready`` still validating)."""
    rendered = [await rindle.upload("avatar", png(40, 30)) for _ in range(ready)]
    await drain(rindle, redis_url)
    return rendered, [await rindle.upload("avatar", png()) for _ in range(50 - ready)]


async def test_urls_for_a_page_of_50_assets_costs_two_queries_and_no_storage_calls(
        counted_rindle, local_storage, redis_url, schema):
    rindle, queries = await counted_rindle(avatar_profile("media"))
    ready, pending = await page_of_50(rindle, redis_url, 3)
    ids = [a.id for a in ready + pending]
    local_storage.calls.clear()
    queries.clear()
    urls = await rindle.urls(ids, variant="thumb")
    assert 1 <= len(ours(queries, schema)) <= 2, ours(queries, schema)
    assert set(local_storage.calls) <= {"url"}  # computed locally: no request to the store
    assert list(urls) == ids
    assert all(urls[a.id] for a in ready) and all(urls[a.id] is None for a in pending)
    with_fallback = await rindle.urls(ids, variant="thumb", fallback="original")
    assert all(with_fallback[a.id] for a in ready)
    assert all(v is None for k, v in with_fallback.items() if k in {a.id for a in pending})


THREE_VARIANTS = {"thumb": Variant(width=32, height=32, fit="cover", format="webp", quality=80),
                  "large": Variant(width=48, fit="inside", format="jpeg", quality=85),
                  "square": Variant(width=16, height=16, fit="cover", format="png")}


async def test_urls_for_50_assets_by_3_variants_cost_two_queries_and_no_storage_calls(
        counted_rindle, local_storage, redis_url, schema):
    rindle, queries = await counted_rindle(avatar_profile("media", variants=THREE_VARIANTS))
    ready, pending = await page_of_50(rindle, redis_url, 2)
    ids = [a.id for a in ready + pending]
    local_storage.calls.clear()
    queries.clear()
    page = await rindle.urls(ids, variants=("thumb", "large", "square"))
    assert 1 <= len(ours(queries, schema)) <= 2, ours(queries, schema)
    assert dict(local_storage.calls) == {"url": 6}  # six URLs signed locally, nothing else asked
    assert list(page) == ids
    for asset in ready:
        assert list(page[asset.id]) == ["thumb", "large", "square"]
        for name, url in page[asset.id].items():
            key, params = local_key(url)
            assert f"/variants/{name}-" in key
            local_storage.verify("GET", key, params)
    assert all(page[a.id] == {"thumb": None, "large": None, "square": None} for a in pending)


async def test_urls_for_several_variants_maps_what_cannot_be_delivered_to_none(
        media_rindle, redis_url, db, schema):
    rindle = await media_rindle()
    ready, stale, quarantined, deleted = [
        await rindle.upload("avatar", jpeg(60 + i, 40), filename=f"{i}.jpg") for i in range(4)]
    await drain(rindle, redis_url)
    stale_key = local_key(await rindle.url(stale.id, variant="thumb"))[0]
    variant_id = await db.fetchval(f"SELECT id FROM {schema}.variants WHERE asset_id = $1::uuid"
                                   f" AND name = 'thumb'", stale.id)
    async with rindle.runtime.db.transaction() as uow:
        await transitions.transition(uow, VARIANT, variant_id, "ready", "stale")
        await transitions.transition(uow, ASSET, quarantined.id, "ready", "quarantined", reason="abuse")
        await transitions.transition(uow, ASSET, deleted.id, "ready", "deleted")
    validating = await rindle.upload("avatar", png())
    available = await rindle.upload("avatar", png())
    for a, b in [("validating", "analyzing"), ("analyzing", "promoting"), ("promoting", "available")]:
        async with rindle.runtime.db.transaction() as uow:
            await transitions.transition(uow, ASSET, available.id, a, b)
    unknown = "00000000-0000-0000-0000-000000000000"
    events = []
    rindle.subscribe(events.append, DeliverySigned)
    ids = [ready.id, stale.id, quarantined.id, deleted.id, validating.id, available.id, unknown]
    page = await rindle.urls(ids, variants=["thumb", "large"])
    nothing = {"thumb": None, "large": None}
    assert all(page[ready.id].values()) and local_key(page[stale.id]["thumb"])[0] == stale_key
    assert page[stale.id]["large"]
    assert [page[i] for i in ids[2:]] == [nothing] * 5
    assert sorted((e.asset_id, e.variant) for e in events) == sorted(
        (i, v) for i in (ready.id, stale.id) for v in ("thumb", "large"))
    with_fallback = await rindle.urls(ids, variants=("thumb", "large"), fallback="original")
    assert all(local_key(with_fallback[available.id][v])[0].endswith("/original.png") for v in nothing)
    assert with_fallback[ready.id]["thumb"].split("?")[0] == page[ready.id]["thumb"].split("?")[0]
    assert [with_fallback[i] for i in (quarantined.id, deleted.id, validating.id, unknown)] == [nothing] * 4


async def test_urls_refuses_unclear_variant_arguments(media_rindle, redis_url):
    rindle = await media_rindle()
    asset = await ready_asset(rindle, redis_url)
    with pytest.raises(ValidationError, match=r"pass variant= or variants=, not both \(got variant='thumb', "
                                              r"variants=\('large',\)\)"):
        await rindle.urls([asset.id], "thumb", variants=("large",))
    for bad in ("thumb", (), ["thumb", 3], 42):
        with pytest.raises(ValidationError, match="must be a non-empty collection of variant names"):
            await rindle.urls([asset.id], variants=bad)
    with pytest.raises(ValidationError, match="profile 'avatar' has no variant 'huge'"):
        await rindle.urls([asset.id], variants=("thumb", "huge"))
    with pytest.raises(ValidationError, match="ttl=0 must be a positive number of seconds"):
        await rindle.urls([asset.id], variants=("thumb",), ttl=0)
    # duplicates collapse; variant= still gives plain URLs
    assert list((await rindle.urls([asset.id], variants=("thumb", "thumb")))[asset.id]) == ["thumb"]
    assert isinstance((await rindle.urls([asset.id], variant="thumb"))[asset.id], str)
    assert await rindle.urls([], variants=("thumb",)) == {} and await rindle.urls([]) == {}


async def test_urls_maps_an_asset_of_a_retired_profile_to_none(media_rindle, redis_url, db, schema):
    rindle = await media_rindle()
    kept = await ready_asset(rindle, redis_url)
    retired = await ready_asset(rindle, redis_url, jpeg(40, 30))
    await db.execute(f"UPDATE {schema}.assets SET profile = 'retired' WHERE id = $1::uuid", retired.id)
    urls = await rindle.urls([kept.id, retired.id], variant="thumb")
    assert urls[kept.id] and urls[retired.id] is None
    with pytest.raises(ValidationError, match="unknown profile 'retired'"):
        await rindle.url(retired.id)
