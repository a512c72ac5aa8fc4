"""Animated GIF and WebP: a variant is the first frame unless ``Variant(animated=True)``, which keeps
every frame (and the delays) in WebP or GIF; the pixel limit counts frames x width x height and a
profile limits the frames, both refused from the header before any decode."""

from __future__ import annotations

import msgspec
import pytest
import pyvips

from rindle_async import Profile, Variant
from rindle_async.processing import images

from .conftest import drain


def animation(frames: int = 5, width: int = 120, height: int = 80) -> pyvips.Image:
    """``frames`` frames of distinct colours, 100 ms each, looping."""
    pages = [pyvips.Image.black(width, height).new_from_image([(i * 50) % 256, 100, 200 - i * 30])
             for i in range(frames)]
    strip = pyvips.Image.arrayjoin(pages, across=1).copy(interpretation="srgb").copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", height)
    strip.set_type(pyvips.GValue.array_int_type, "delay", [100] * frames)
    strip.set_type(pyvips.GValue.gint_type, "loop", 0)
    return strip


VARIANTS = {
    "still": Variant(width=60, fit="inside", format="webp"),
    "moving": Variant(width=60, fit="inside", format="webp", animated=True),
    "square": Variant(width=40, height=40, fit="cover", format="gif", animated=True),
    "boxed": Variant(width=50, height=50, fit="contain", format="webp", animated=True),
}


def stored(local_storage, key: str) -> pyvips.Image:
    data = local_storage.root.joinpath(key).read_bytes()
    return pyvips.Image.new_from_buffer(data, "", n=-1)


def frames_of(image: pyvips.Image) -> int:
    return image.get("n-pages") if image.get_typeof("n-pages") else 1


@pytest.mark.parametrize("source_format", ["gif", "webp"])
async def test_variants_are_the_first_frame_unless_animated(make_rindle, local_storage, redis_url,
                                                            source_format):
    profile = Profile(name="clips", storage="media", allow_mime=("image/gif", "image/webp"), variants=VARIANTS)
    rindle = await make_rindle(relay=False, storages={"media": local_storage}, profiles=[profile])
    data = getattr(animation(), f"{source_format}save_buffer")()
    asset = await rindle.upload("clips", data)
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(asset.id)
    assert asset.state == "ready" and (asset.image.animated, asset.image.frames) == (True, 5)
    keys = {r["name"]: r["storage_key"] for r in await rindle.runtime.pool.fetch(
        f"SELECT name, storage_key FROM {rindle.schema}.variants WHERE asset_id = $1::uuid", asset.id)}
    still, moving = stored(local_storage, keys["still"]), stored(local_storage, keys["moving"])
    assert frames_of(still) == 1 and (still.width, still.height) == (60, 40)
    assert frames_of(moving) == 5 and (moving.width, moving.get("page-height")) == (60, 40)
    assert moving.get("delay") == [100] * 5
    first, last = moving.crop(0, 0, 60, 40).avg(), moving.crop(0, 160, 60, 40).avg()
    assert abs(first - last) > 5  # the frames differ: it moves
    for name, size in (("square", 40), ("boxed", 50)):
        image = stored(local_storage, keys[name])
        assert (frames_of(image), image.width, image.get("page-height")) == (5, size, size)
        assert (asset.variants[name].width, asset.variants[name].height) == (size, size)


async def test_animation_bombs_are_refused_from_the_header(make_rindle, local_storage, redis_url):
    # 5 frames of 120 x 80 = 48,000 pixels, over 40,000 though each frame is 9,600
    wide = Profile(name="wide", storage="media", allow_mime=("image/gif",), max_pixels=40_000)
    few = Profile(name="few", storage="media", allow_mime=("image/gif",), max_frames=3)
    rindle = await make_rindle(relay=False, storages={"media": local_storage}, profiles=[wide, few])
    gif = animation().gifsave_buffer()
    too_many_pixels, too_many_frames = await rindle.upload("wide", gif), await rindle.upload("few", gif)
    await drain(rindle, redis_url)
    refused = await rindle.get_asset(too_many_pixels.id)
    assert refused.state == "quarantined"
    assert refused.reason == ("the animation declares 5 frames of 120x80 = 48000 pixels, over the profile's "
                              "max_pixels of 40000; it was not decoded")
    refused = await rindle.get_asset(too_many_frames.id)
    assert (refused.state, refused.reason) == (
        "quarantined", "the animation declares 5 frames, over the profile's max_frames of 3; it was not decoded")


def test_a_still_original_gives_a_one_frame_animated_variant(tmp_path):
    source = tmp_path / "still.png"
    pyvips.Image.black(90, 60).new_from_image([10, 20, 30]).pngsave(str(source))
    recipe = msgspec.structs.asdict(Variant(width=30, fit="inside", format="webp", animated=True))
    out = images.render_variants(str(source), str(tmp_path), {"moving": recipe}, 50_000_000)
    assert (out["moving"]["width"], out["moving"]["height"]) == (30, 20)
