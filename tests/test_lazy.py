"""Lazy variants (``Variant(eager=False)``): not rendered at promotion; the first request for one
stages its render once however many requests come; stale detection leaves them alone until they
exist; ``rindle-async warm-variants`` renders them ahead of time."""

from __future__ import annotations

import asyncio

import pytest

from rindle_async import NotReady, Profile, Variant, lazy

from .conftest import drain
from .media import jpeg, png
from .test_cli import cli, lines  # noqa: F401  (cli is a fixture)

VARIANTS = {"thumb": Variant(width=32, height=32, fit="cover", format="webp"),
            "big": Variant(width=64, fit="inside", format="jpeg", eager=False)}


def profile(**variants: Variant) -> Profile:
    return Profile(name="gallery", storage="media", allow_mime=("image/jpeg", "image/png"),
                   variants=variants or VARIANTS)


async def render_jobs(rindle, asset_id: str, status: str = "pending") -> int:
    return await rindle.runtime.pool.fetchval(
        f"SELECT count(*) FROM {rindle.schema}.jobs WHERE kind = 'process_variant'"
        " AND args->>'asset_id' = $1 AND status = $2", asset_id, status)


@pytest.fixture(autouse=True)
def forget():
    lazy._forget()
    yield
    lazy._forget()


async def test_the_first_requests_stage_one_render_and_then_it_is_served(make_rindle, local_storage, redis_url):
    rindle = await make_rindle(relay=False, storages={"media": local_storage}, profiles=[profile()])
    asset = await rindle.upload("gallery", jpeg(120, 80))
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(asset.id)
    assert asset.state == "ready" and list(asset.variants) == ["thumb"]  # big: not at promotion
    assert await rindle.url(asset.id, variant="big", fallback="original")  # the original meanwhile

    results = await asyncio.gather(*(rindle.url(asset.id, variant="big") for _ in range(200)),
                                   return_exceptions=True)
    assert all(isinstance(r, NotReady) for r in results)
    lazy._forget()  # another process: the rows decide, not this one's memory
    page = await rindle.urls([asset.id], variants=("thumb", "big"))
    assert page[asset.id]["thumb"] and page[asset.id]["big"] is None
    assert await render_jobs(rindle, asset.id) == 1  # one job for all of them
    asset = await rindle.get_asset(asset.id)
    assert asset.state == "processing" and asset.variants["big"].state == "queued"

    await drain(rindle, redis_url)
    asset = await rindle.get_asset(asset.id)
    assert asset.state == "ready" and (asset.variants["big"].state, asset.variants["big"].width) == ("ready", 64)
    assert "/variants/big-" in await rindle.url(asset.id, variant="big")


async def test_srcset_asks_for_a_lazy_ladder(make_rindle, local_storage, redis_url):
    photos = Profile(name="gallery", storage="media", allow_mime=("image/png",), ladder=(16, 32),
                     ladder_eager=False)
    rindle = await make_rindle(relay=False, storages={"media": local_storage}, profiles=[photos])
    asset = await rindle.upload("gallery", png(40, 30))
    await drain(rindle, redis_url)
    assert (await rindle.get_asset(asset.id)).variants == {}
    assert (await rindle.srcsets([asset.id]))[asset.id] is None
    assert await render_jobs(rindle, asset.id) == 1
    await drain(rindle, redis_url)
    assert (await rindle.srcset(asset.id)).endswith(" 32w")


async def test_a_profile_gaining_a_lazy_variant_plans_nothing_until_asked(make_rindle, local_storage, redis_url):
    before = await make_rindle(relay=False, storages={"media": local_storage},
                               profiles=[profile(thumb=VARIANTS["thumb"])])
    asset = await before.upload("gallery", jpeg(120, 80))
    await drain(before, redis_url)
    after = await make_rindle(relay=False, migrate=False, storages={"media": local_storage},
                              profiles=[profile()], detect_stale=True)
    assert list((await after.get_asset(asset.id)).variants) == ["thumb"]  # nothing planned at open
    with pytest.raises(NotReady):
        await after.url(asset.id, variant="big")
    await drain(after, redis_url)
    changed = await make_rindle(relay=False, migrate=False, storages={"media": local_storage}, detect_stale=True,
                                profiles=[profile(thumb=VARIANTS["thumb"],
                                                  big=Variant(width=48, fit="inside", format="jpeg", eager=False))])
    big = (await changed.get_asset(asset.id)).variants["big"]
    assert big.state == "stale"  # it exists, so a recipe change marks it like any other


async def test_warm_variants_renders_them_ahead_of_time(cli, host, redis_url):
    posters = [await host.upload("posters", jpeg(150 + n, 100)) for n in range(3)]
    await drain(host, redis_url)
    dry = await cli("warm-variants", "--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "warm_variants (dry run): variants_planned=3\n"), dry.stderr
    assert await render_jobs(host, posters[0].id) == 0
    live = await cli("warm-variants", "-v")
    assert live.returncode == 0, live.stderr
    assert lines(live.stdout) == ["warm_variants (live): variants_planned=3",
                                  *sorted(f"  variants_planned: {p.id}:poster" for p in posters)]
    await drain(host, redis_url)
    assert [(await host.get_asset(p.id)).variants["poster"].state for p in posters] == ["ready"] * 3
    again = await cli("warm-variants")
    assert (again.returncode, again.stdout) == (0, "warm_variants (live): nothing to do\n")
