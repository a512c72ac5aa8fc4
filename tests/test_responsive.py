"""Responsive images: a profile's width ladder, srcset values whose widths are the stored widths,
<picture> sources per format with the placeholder, a page of 50 assets in at most 2 queries and no
storage call, urls() with placeholders, and docs/delivery.md's template rendered by Starlette and
by aiohttp."""

from __future__ import annotations

import html as html_lib
import pathlib
import re

import aiohttp_jinja2
import httpx
import jinja2
import pytest
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from rindle_async import ConfigurationError, Delivered, NotFound, NotReady, Picture, Profile, ValidationError

from .conftest import drain
from .media import jpeg, png
from .test_delivery import counted_rindle, local_key, ours  # noqa: F401  (counted_rindle is a fixture)

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "delivery.md"
LADDER = dict(ladder=(16, 32, 64), ladder_formats=("avif", "webp", "jpeg"))


def photos(storage: str = "media", **options) -> Profile:
    return Profile(name="photos", storage=storage, allow_mime=("image/jpeg", "image/png"),
                   **{**LADDER, **options})


def test_a_ladder_becomes_variants_and_is_checked_when_the_profile_is_built():
    profile = photos()
    assert profile.ladder_names("webp") == ["w16-webp", "w32-webp", "w64-webp"]
    assert len(profile.variants) == 9 and profile.variants["w32-avif"].fit == "inside"
    assert photos(variants={"w16-webp": profile.variants["w16-webp"]}) == profile  # decoded again
    for options, match in [({"ladder": (64, 32)}, "ascending"), ({"ladder": (16, 16)}, "ascending"),
                           ({"ladder": (0,)}, "ladder width"), ({"ladder": (16.5,)}, "ladder width"),
                           ({"ladder_formats": ()}, "ladder_formats"), ({"ladder_formats": ("tiff",)}, "format"),
                           ({"ladder_quality": 0}, "ladder_quality"),
                           ({"variants": {"w16-webp": profile.variants["w64-webp"]}}, "also a rung")]:
        with pytest.raises(ConfigurationError, match=match):
            photos(**options)


async def stored_widths(rindle, asset_id: str, fmt: str) -> list[int]:
    rows = await rindle.runtime.pool.fetch(
        f"SELECT width FROM {rindle.schema}.variants WHERE asset_id = $1::uuid AND name LIKE $2 ORDER BY width",
        asset_id, f"%-{fmt}")
    return sorted({r["width"] for r in rows})


def descriptors(srcset: str) -> list[tuple[str, int]]:
    """(storage key, width) of each entry of a srcset."""
    return [(local_key(url)[0], int(width[:-1])) for url, width in (e.split(" ") for e in srcset.split(", "))]


async def test_srcset_and_picture_sources_use_the_stored_widths(make_rindle, local_storage, redis_url):
    rindle = await make_rindle(relay=False, storages={"media": local_storage}, profiles=[photos()])
    small, wide = await rindle.upload("photos", png(40, 30)), await rindle.upload("photos", jpeg(300, 100))
    with pytest.raises(NotReady, match="not been promoted"):
        await rindle.srcset(small.id, format="webp")
    await drain(rindle, redis_url)
    small_set = await rindle.srcset(small.id, format="webp")
    # 64 is wider than the 40-pixel original: that rung is stored 40 wide, never enlarged
    assert [w for _, w in descriptors(small_set)] == await stored_widths(rindle, small.id, "webp") == [16, 32, 40]
    assert all(key.endswith(".webp") and "/w" in key for key, _ in descriptors(small_set))
    assert [w for _, w in descriptors(await rindle.srcset(wide.id, format="jpeg"))] == [16, 32, 64]

    picture = await rindle.picture_sources(wide.id)
    assert isinstance(picture, Picture)
    assert [s.type for s in picture.sources] == ["image/avif", "image/webp"]
    assert (picture.type, picture.width, picture.height) == ("image/jpeg", 64, 21)
    assert picture.src == picture.srcset.split(", ")[-1].split(" ")[0]
    assert picture.placeholder == (await rindle.get_asset(wide.id)).placeholder is not None
    two = await rindle.picture_sources(wide.id, variants=["w16-webp", "w64-jpeg"])
    assert ([s.type for s in two.sources], two.type, [w for _, w in descriptors(two.srcset)]) == (
        ["image/webp"], "image/jpeg", [64])

    with pytest.raises(ValidationError, match="one format"):
        await rindle.srcset(wide.id)  # the ladder has three
    with pytest.raises(ValidationError, match="no variant 'thumb'"):
        await rindle.srcset(wide.id, variants=["thumb"])
    with pytest.raises(ValidationError, match="format='bmp'"):
        await rindle.srcset(wide.id, format="bmp")
    with pytest.raises(NotFound):
        await rindle.picture_sources("00000000-0000-0000-0000-000000000000")


async def test_a_page_of_50_pictures_costs_two_queries_and_no_storage_calls(
        counted_rindle, local_storage, redis_url, schema):
    rindle, queries = await counted_rindle(photos(ladder=(16, 32), ladder_formats=("webp", "jpeg")))
    ready = [await rindle.upload("photos", png(40, 30)) for _ in range(48)]
    await drain(rindle, redis_url)
    pending = [await rindle.upload("photos", png(40, 30)) for _ in range(2)]
    ids = [a.id for a in ready + pending]
    local_storage.calls.clear()
    queries.clear()
    page = await rindle.pictures(ids)
    assert 1 <= len(ours(queries, schema)) <= 2, ours(queries, schema)
    assert dict(local_storage.calls) == {"url": 48 * 4}  # signed here, nothing asked of the store
    assert list(page) == ids and [page[a.id] for a in pending] == [None, None]
    assert all(len(page[a.id].sources) == 1 and page[a.id].placeholder for a in ready)
    queries.clear()
    srcsets = await rindle.srcsets(ids, format="webp")
    assert len(ours(queries, schema)) <= 2 and sum(v is not None for v in srcsets.values()) == 48


async def test_urls_with_placeholders(make_rindle, local_storage, redis_url):
    rindle = await make_rindle(relay=False, storages={"media": local_storage},
                               profiles=[photos(ladder=(16,), ladder_formats=("webp",))])
    asset = await rindle.upload("photos", jpeg(60, 40))
    unknown = "00000000-0000-0000-0000-000000000000"
    await drain(rindle, redis_url)
    placeholder = (await rindle.get_asset(asset.id)).placeholder
    one = await rindle.urls([asset.id, unknown], "w16-webp", placeholders=True)
    assert isinstance(one[asset.id], Delivered) and one[asset.id].placeholder == placeholder
    assert local_key(one[asset.id].url)[0].endswith(".webp") and one[asset.id].urls is None
    assert one[unknown] == Delivered()
    several = await rindle.urls([asset.id], variants=("w16-webp",), placeholders=True)
    assert list(several[asset.id].urls) == ["w16-webp"] and several[asset.id].url is None


def docs_template() -> str:
    """The ``picture.html`` template docs/delivery.md shows."""
    [template] = re.findall(r"```jinja\n(.*?)```", DOCS.read_text(), flags=re.S)
    return template


def check_rendered(html: str, picture: Picture) -> None:
    assert html.count("<source ") == 2 and 'type="image/avif"' in html and 'type="image/webp"' in html
    assert f'width="{picture.width}" height="{picture.height}"' in html
    assert f"background-color: {picture.placeholder.color}" in html
    [src] = re.findall(r'<img src="([^"]+)"', html)
    assert "&amp;" in src  # the query string escaped by the template engine, as it must be
    assert local_key(html_lib.unescape(src))[0] == local_key(picture.src)[0]


async def test_the_docs_template_renders_a_picture_in_starlette_and_aiohttp(make_rindle, local_storage,
                                                                           redis_url, tmp_path):
    rindle = await make_rindle(relay=False, storages={"media": local_storage}, profiles=[photos()])
    asset = await rindle.upload("photos", jpeg(300, 200))
    await drain(rindle, redis_url)
    (tmp_path / "picture.html").write_text(docs_template())

    templates = Jinja2Templates(directory=str(tmp_path))

    async def starlette_page(request):
        pictures = await rindle.pictures([asset.id])
        return templates.TemplateResponse(request, "picture.html", {"picture": pictures[asset.id]})

    app = Starlette(routes=[Route("/", starlette_page)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        starlette_html = (await client.get("/")).text

    @aiohttp_jinja2.template("picture.html")
    async def aiohttp_page(request):
        return {"picture": (await rindle.pictures([asset.id]))[asset.id]}

    aio = web.Application()
    aiohttp_jinja2.setup(aio, loader=jinja2.FileSystemLoader(str(tmp_path)), autoescape=True)
    aio.router.add_get("/", aiohttp_page)
    runner = web.AppRunner(aio)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient() as client:
            aiohttp_html = (await client.get(f"http://127.0.0.1:{port}/")).text
    finally:
        await runner.cleanup()
    picture = await rindle.picture_sources(asset.id)
    for html in (starlette_html, aiohttp_html):
        check_rendered(html, picture)
