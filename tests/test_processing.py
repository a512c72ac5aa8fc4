"""libvips processing: every variant of an image from as few decodes as quality allows, and
the process pool (one call per process, and a timeout kills only its own)."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import textwrap

import pytest
import pyvips

from rindle_async.processing import images
from rindle_async.processing.pool import ProcessingPool, RenderCrashed, RenderTimeout

from .conftest import drain
from .media import gif_bomb
from .test_worker import bomb_png

RECIPE = {"width": 64, "height": 64, "fit": "cover", "format": "webp", "quality": 80,
          "keep_metadata": False, "background": (255, 255, 255)}


def recipe(width: int | None, height: int | None, fit: str, fmt: str, quality: int = 80,
           **fields) -> dict:
    return {"width": width, "height": height, "fit": fit, "format": fmt, "quality": quality,
            "keep_metadata": False, "background": (255, 255, 255)} | fields


# Every fit and format; the largest is an "inside" frame the others can derive from.
EVERY_FIT_AND_FORMAT = {
    "large": recipe(1024, 1024, "inside", "jpeg", 85),
    "card": recipe(480, 320, "contain", "png", background=(20, 40, 60)),
    "thumb": recipe(128, 128, "cover", "webp", 80),
    "strip": recipe(300, 120, "fill", "avif", 60),
    "icon": recipe(48, 48, "cover", "gif"),
    "wide": recipe(400, None, "inside", "webp", 75),
    "tiny": recipe(96, 96, "contain", "jpeg", 80),
}
# The largest is a cover crop (smaller ones must derive from its uncropped frame) and a
# stretched "fill" frame is the nearest base for a thin strip.
CROPPED_AND_STRETCHED = {
    "hero": recipe(1200, 500, "cover", "webp", 85),
    "banner": recipe(1600, 400, "fill", "jpeg", 85),
    "square": recipe(256, 256, "cover", "png", keep_metadata=True),
    "ribbon": recipe(600, 100, "fill", "png"),
    "column": recipe(None, 300, "inside", "jpeg", 85),
    "boxed": recipe(300, 300, "contain", "avif", 60, background=(0, 0, 0)),
}
PIPELINE = {"thumb": recipe(128, 128, "cover", "webp", 80),
            "large": recipe(800, 800, "inside", "jpeg", 85)}


def photo(width: int, height: int, seed: int) -> pyvips.Image:
    """sRGB and photo-like: gradients under noise at coarse, middle and fine scales, and
    hard-edged shapes."""
    xyz = pyvips.Image.xyz(width, height)
    across, down = xyz[0] * (1.0 / width), xyz[1] * (1.0 / height)
    bands = [across * gx + down * gy + 30
             + sum(pyvips.Image.perlin(width, height, cell_size=max(2, cell), seed=seed + i * 3 + k)
                   * amplitude for k, (cell, amplitude) in
                   enumerate([(width // 6, 90), (width // 60, 40), (3, 25)]))
             for i, (gx, gy) in enumerate([(160, 40), (40, 140), (90, 90)])]
    image = bands[0].bandjoin(bands[1:]).cast("uchar").copy(interpretation="srgb")
    image = image.draw_rect([230, 220, 30], width // 10, height // 8, width // 4, height // 5,
                            fill=True)
    image = image.draw_circle([20, 30, 200], width * 2 // 3, height // 2, min(width, height) // 6,
                              fill=True)
    return image.draw_rect([250, 250, 250], width // 2, height * 3 // 4, width // 3,
                           max(1, height // 40), fill=True)


def _with_orientation(image: pyvips.Image, orientation: int) -> pyvips.Image:
    image = image.copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return image


def write_source(kind: str, folder) -> str:
    """One generated original of each kind the quality test covers; returns its path."""
    path = str(folder / {"jpeg": "photo.jpg", "exif6": "rotated.jpg", "alpha": "alpha.png",
                         "rgb16": "deep.png", "cmyk": "cmyk.jpg", "small": "small.jpg",
                         "webp": "photo.webp", "gif": "animated.gif"}[kind])
    if kind == "jpeg":
        photo(2400, 1600, seed=1).jpegsave(path, Q=92)
    elif kind == "exif6":  # stored on its side; orientation 6 turns it upright (1600x2400)
        _with_orientation(photo(1600, 2400, seed=5).rot270(), 6).jpegsave(path, Q=92, keep="exif")
    elif kind == "alpha":  # a ramp of alpha, an opaque block, a transparent one over magenta
        ramp = (pyvips.Image.xyz(1800, 1200)[0] * (255 / 1800)).cast("uchar")
        alpha = ramp.draw_rect(255, 200, 700, 300, 300, fill=True).draw_rect(
            0, 1200, 100, 400, 500, fill=True)
        colour = photo(1800, 1200, seed=9).draw_rect([255, 0, 255], 1200, 100, 400, 500, fill=True)
        colour.bandjoin(alpha).pngsave(path)
    elif kind == "rgb16":
        deep = (photo(1500, 1000, seed=13).cast("ushort") * 257).cast("ushort")
        deep.copy(interpretation="rgb16").pngsave(path)
    elif kind == "cmyk":
        photo(1200, 900, seed=17).icc_export(output_profile="cmyk").jpegsave(path, Q=92)
    elif kind == "small":  # smaller than most recipes: cover and fill enlarge it
        photo(100, 75, seed=21).jpegsave(path, Q=92)
    elif kind == "webp":
        photo(2000, 1333, seed=25).webpsave(path, Q=90)
    else:  # two frames; variants come from the first, as they always did
        frames = photo(600, 400, seed=29).join(photo(600, 400, seed=30), "vertical").copy()
        frames.set_type(pyvips.GValue.gint_type, "page-height", 400)
        frames.gifsave(path, effort=1)  # the default effort takes seconds here
    return path


def rendered_alone(source: str, dest_dir: str, name: str, recipe: dict) -> str:
    """The single-variant code path before render_variants: one ``thumbnail`` of the original
    with the options ``render`` always used, the contain pad, the same saver."""
    width, height, fit = recipe["width"], recipe["height"], recipe["fit"]
    if fit == "cover":
        options = {"height": height, "crop": "centre"}
    elif fit == "fill":
        options = {"height": height, "size": "force"}
    else:
        options = {"height": height or 10_000_000, "size": "down"}
    image = pyvips.Image.thumbnail(source, width or 10_000_000, fail_on="warning", **options)
    if fit == "contain" and (image.width, image.height) != (width, height):
        image = image.colourspace("srgb") if image.interpretation != "srgb" else image
        fill = list(recipe["background"]) + ([255] if image.hasalpha() else [])
        image = image.gravity("centre", width, height, extend="background", background=fill)
    path = os.path.join(dest_dir, f"{name}-alone.{recipe['format']}")
    images._save(image, path, recipe)
    return path


def mae_per_channel(path: str, reference: str) -> float:
    """The largest of the per-channel mean absolute differences (0..255) of two decoded files.

    With alpha the colours are compared premultiplied: colour under a transparent pixel is
    never seen, and libvips leaves it undefined there.
    """
    ours, theirs = pyvips.Image.new_from_file(path), pyvips.Image.new_from_file(reference)
    assert (ours.width, ours.height, ours.bands) == (theirs.width, theirs.height, theirs.bands)
    if ours.hasalpha():
        ours, theirs = ours.premultiply(), theirs.premultiply()
    difference = (ours - theirs).abs()
    return max(difference[band].avg() for band in range(difference.bands))


@pytest.fixture(scope="session")
def source(tmp_path_factory):
    """``source(kind)``: the path of a generated original, made once per test process."""
    folder, made = tmp_path_factory.mktemp("originals"), {}

    def make(kind: str) -> str:
        if kind not in made:
            made[kind] = write_source(kind, folder)
        return made[kind]

    return make


@pytest.fixture
def thumbnail_calls(monkeypatch) -> list[tuple[int, int | None]]:
    """(width, height) of each real libvips ``thumbnail`` of a file: each one a decode."""
    calls: list[tuple[int, int | None]] = []

    def counting(real):
        def counted(source, width, **options):
            calls.append((width, options.get("height")))
            return real(source, width, **options)
        return counted

    for name in ("thumbnail", "thumbnail_source", "thumbnail_buffer"):
        monkeypatch.setattr(pyvips.Image, name, counting(getattr(pyvips.Image, name)))
    return calls


# Per format, the largest per-channel MAE allowed between a variant from render_variants and
# the same recipe rendered alone; measured and justified in test_variants_match_rendering_alone.
MAE_LIMIT = {"png": 2.5, "jpeg": 3.0, "webp": 4.0, "avif": 4.5, "gif": 5.0}


@pytest.mark.parametrize("kind", ["jpeg", "exif6", "alpha", "rgb16", "cmyk", "small", "webp",
                                  "gif"])
@pytest.mark.parametrize("recipes", [EVERY_FIT_AND_FORMAT, CROPPED_AND_STRETCHED],
                         ids=["every-fit-and-format", "cropped-and-stretched"])
def test_variants_match_rendering_alone(kind, recipes, source, tmp_path):
    """Each variant has exactly the size the recipe rendered alone has, and nearly its pixels.

    The limits (MAE_LIMIT) are per channel on 0..255, about 25% above the largest figure
    measured here: 8 originals x 13 recipes = 104 variants, 66 of them taken from a frame in
    memory (seeded noise and one libvips, so the figures repeat exactly).  Those resized from
    a larger frame, against the same recipe rendered alone, by output format: png 0.19-1.25,
    jpeg 0.97-2.35, webp 1.67-3.02, avif 1.16-3.32, gif 1.39-3.92.  Variants decoded on
    their own, or equal to a decoded frame, differ by 0.
    - The resampling alone, measured by rendering every recipe as png: 1.86 at most (a
      48 px icon), the rest under 1.3.  It is a frame shrunk in memory from a base at least
      twice its size against a shrink-on-load decode (JPEG's DCT scaling, libwebp's scaler)
      and a reduce.  For scale, on a 128 px crop of the jpeg original: a linear kernel for
      lanczos3 moves it by 1.36, a nearest-neighbour shrink by 6.0, shifting the crop by one
      pixel by 6.1; deriving from a cropped output instead of the frame moves variants by
      17-41.
    - Lossy encoders make a small input difference larger (other blocks quantize, other
      palette entries and dither), and their own error is larger still: the file rendered
      alone against its lossless twin measures jpeg 1.6-11.3, webp 1.5-10.9, avif 0.9-6.5,
      gif 2.8-4.0 on the opaque originals.
    """
    original = source(kind)
    variants = images.render_variants(original, str(tmp_path), recipes, 100_000_000)
    assert list(variants) == list(recipes)
    for name, recipe in recipes.items():
        reference = rendered_alone(original, str(tmp_path), name, recipe)
        alone = pyvips.Image.new_from_file(reference)
        assert (variants[name]["width"], variants[name]["height"]) == (alone.width, alone.height)
        assert mae_per_channel(variants[name]["path"], reference) <= MAE_LIMIT[recipe["format"]]


def test_one_decode_renders_the_pipeline_profile(source, tmp_path, thumbnail_calls):
    original = source("jpeg")
    variants = images.render_variants(original, str(tmp_path), PIPELINE, 100_000_000)
    assert thumbnail_calls == [(800, 800)]  # the thumb came from the large frame in memory
    assert variants["thumb"] == {"path": str(tmp_path / "thumb.webp"), "width": 128,
                                 "height": 128, "byte_size": os.path.getsize(tmp_path / "thumb.webp")}
    assert (variants["large"]["width"], variants["large"]["height"]) == (800, 533)


def test_decodes_again_only_where_no_frame_is_twice_the_size(source, tmp_path, thumbnail_calls):
    original = source("jpeg")  # 2400x1600
    recipes = {"enlarged": recipe(3000, 2000, "fill", "jpeg"),  # larger than the original
               "stretched": recipe(1000, 600, "fill", "jpeg"),  # not from an enlarged frame
               "large": recipe(800, None, "inside", "jpeg"),  # 800x533, not half of 1000x600
               "same": recipe(800, 800, "inside", "png"),  # 800x533: the large frame as it is
               "medium": recipe(500, None, "inside", "webp"),  # 500x333, not half of 800x533
               "small": recipe(250, None, "inside", "webp"),  # 250x167: half of 800x533
               "thumb": recipe(100, 100, "cover", "webp")}  # 150x100: half of 500x333
    variants = images.render_variants(original, str(tmp_path), recipes, 100_000_000)
    assert all("error" not in v for v in variants.values())
    assert thumbnail_calls == [(3000, 2000), (1000, 600), (800, 10_000_000), (500, 10_000_000)]
    images.render(original, str(tmp_path), PIPELINE["thumb"], 100_000_000)
    assert thumbnail_calls[4:] == [(128, 128)]  # one variant: the one call it always was


def test_a_failing_variant_fails_alone(source, tmp_path):
    original = source("jpeg")
    recipes = dict(PIPELINE, huge=recipe(16384, 16, "fill", "webp"))  # libwebp stops at 16383
    variants = images.render_variants(original, str(tmp_path), recipes, 100_000_000)
    assert variants["huge"] == {"error": "libvips could not render the variant as webp: "
                                         "webpsave: image too large"}
    assert not (tmp_path / "huge.webp").exists()
    assert {v["width"] for n, v in variants.items() if n != "huge"} == {128, 800}
    with pytest.raises(images.ImageRefused, match="could not render the variant as webp"):
        images.render(original, str(tmp_path), recipes["huge"], 100_000_000)


def test_output_files_are_one_per_variant_name(source, tmp_path):
    original = source("small")
    recipes = {name: recipe(32, 32, "cover", fmt) for name, fmt in
               [("a", "jpeg"), ("b", "jpeg"), ("c", "png"), ("d", "webp"), ("e", "gif")]}
    (tmp_path / "out").mkdir()
    variants = images.render_variants(original, str(tmp_path / "out"), recipes, 100_000_000)
    assert sorted(os.listdir(tmp_path / "out")) == ["a.jpg", "b.jpg", "c.png", "d.webp", "e.gif"]
    assert {v["path"] for v in variants.values()} == {
        str(tmp_path / "out" / f) for f in os.listdir(tmp_path / "out")}
    with pytest.raises(ValueError, match="names the output file"):
        images.render_variants(original, str(tmp_path), {"../escape": RECIPE}, 100_000_000)


def test_refused_sources_are_never_decoded(tmp_path, thumbnail_calls):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(30000, 30000))
    with pytest.raises(images.ImageRefused, match="declares 30000x30000 = 900000000 pixels"):
        images.render_variants(str(bomb), str(tmp_path), PIPELINE, 50_000_000)
    bogus = tmp_path / "bogus.jpg"
    bogus.write_bytes(b"not an image at all")
    with pytest.raises(images.ImageRefused, match="libvips cannot read the file") as refused:
        images.render_variants(str(bogus), str(tmp_path), PIPELINE, 50_000_000)
    assert str(tmp_path) not in str(refused.value)  # the reason is shown to users: no worker paths
    assert "the file is not a known file format" in str(refused.value)
    assert thumbnail_calls == []


def test_a_gif_is_refused_by_the_logical_screen_it_declares(tmp_path, thumbnail_calls):
    bomb = tmp_path / "bomb.gif"
    bomb.write_bytes(gif_bomb(65535, 65535))
    assert len(gif_bomb()) == 43
    refusal = (r"the image declares 65535x65535 = 4294836225 pixels \(its GIF logical screen\), "
               r"over the profile's max_pixels of 50000000; it was not decoded")
    with pytest.raises(images.ImageRefused, match=refusal):
        images.analyze(str(bomb), 50_000_000)
    with pytest.raises(images.ImageRefused, match=refusal):
        images.render_variants(str(bomb), str(tmp_path), PIPELINE, 50_000_000)
    assert thumbnail_calls == []
    small = tmp_path / "small.gif"
    small.write_bytes(gif_bomb(100, 100))  # a screen within the limit is not refused for it
    assert images.analyze(str(small), 50_000_000)["width"] == 100


async def test_promotion_quarantines_a_gif_bomb_with_the_declared_size(media_rindle, redis_url):
    rindle = await media_rindle(allow_mime=("image/gif",))
    asset = await rindle.upload("avatar", gif_bomb(), filename="tiny.gif")
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(asset.id)
    assert asset.state == "quarantined"
    assert asset.reason.startswith("the image declares 65535x65535 = 4294836225 pixels (its GIF "
                                   "logical screen), over the profile's max_pixels of 50000000")


@pytest.fixture(params=["mapped", "read"])
def decoding(request, monkeypatch) -> str:
    """Originals decoded by name (libvips maps the file) or, as large ones are, read through
    a callback source."""
    if request.param == "read":
        monkeypatch.setattr(images, "_MAPPED_UP_TO", 0)
    return request.param


def test_a_large_original_is_read_into_the_same_variants(source, tmp_path, monkeypatch):
    original = source("exif6")
    mapped = images.render_variants(original, str(tmp_path), CROPPED_AND_STRETCHED, 100_000_000)
    mapped_bytes = {name: open(v["path"], "rb").read() for name, v in mapped.items()}
    monkeypatch.setattr(images, "_MAPPED_UP_TO", 0)
    read = images.render_variants(original, str(tmp_path), CROPPED_AND_STRETCHED, 100_000_000)
    assert {name: open(v["path"], "rb").read() for name, v in read.items()} == mapped_bytes


@pytest.mark.parametrize("kind", ["jpeg", "alpha", "webp"])
def test_a_truncated_source_fails_to_decode_rather_than_render_grey(kind, decoding, source,
                                                                    tmp_path):
    whole = source(kind)
    cut = tmp_path / f"cut{os.path.splitext(whole)[1]}"
    data = open(whole, "rb").read()
    cut.write_bytes(data[: len(data) * 2 // 3])
    # a WebP is read whole with its header, so its cut shows there; the others' when decoded
    with pytest.raises(images.ImageRefused,
                       match="libvips (could not decode the image|cannot read the file)"):
        images.render_variants(str(cut), str(tmp_path), PIPELINE, 100_000_000)


def test_sizes_match_thumbnail_at_any_size_and_orientation(tmp_path):
    """Derived variants get the exact size of a decode of their own, rounding included,
    across loaders with and without shrink-on-load, rotated or not."""
    rng = random.Random(8)
    recipes = {"base": recipe(1600, 1600, "inside", "png"),
               "cover": recipe(rng.randint(20, 200), rng.randint(20, 200), "cover", "png"),
               "fill": recipe(rng.randint(20, 300), rng.randint(20, 300), "fill", "png"),
               "inside": recipe(rng.randint(20, 300), None, "inside", "png"),
               "tall": recipe(None, rng.randint(20, 300), "inside", "png"),
               "contain": recipe(rng.randint(20, 300), rng.randint(20, 300), "contain", "png")}
    for case in range(18):
        width, height = rng.randint(200, 1800), rng.randint(200, 1800)
        suffix = [".jpg", ".webp", ".png"][case % 3]
        source = str(tmp_path / f"source-{case}{suffix}")
        flat = pyvips.Image.black(width, height, bands=3) + [case * 9 % 256, 90, 160]
        _with_orientation(flat.cast("uchar"), [1, 6, 8, 3][case % 4]).write_to_file(source,
                                                                                    keep="all")
        out = tmp_path / f"out-{case}"
        out.mkdir()
        variants = images.render_variants(source, str(out), recipes, 100_000_000)
        for name, wanted in recipes.items():
            alone = pyvips.Image.new_from_file(rendered_alone(source, str(out), name, wanted))
            assert (variants[name]["width"], variants[name]["height"]) == (
                alone.width, alone.height), (width, height, suffix, name)


@pytest.fixture
def pool():
    pool = ProcessingPool(2)
    yield pool
    pool.close()


async def test_a_timeout_kills_only_its_own_process(pool, tmp_path):
    big = tmp_path / "big.png"  # about 35 ms to render here: 35 times the timeout below
    pyvips.Image.gaussnoise(6000, 6000).cast("uchar").pngsave(str(big), compression=0)
    small = tmp_path / "small.jpg"
    pyvips.Image.black(300, 200).jpegsave(str(small))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    slow = pool.run(images.render, str(big), str(tmp_path / "a"), RECIPE, 100_000_000, timeout=0.001)
    quick = pool.run(images.render, str(small), str(tmp_path / "b"), RECIPE, 100_000_000, timeout=60)
    results = await asyncio.gather(slow, quick, return_exceptions=True)
    assert isinstance(results[0], RenderTimeout)
    assert results[1]["width"] == 64  # the other call finished in its own process
    again = await pool.run(images.analyze, str(small), 1_000_000, timeout=60)
    assert (again["width"], again["height"]) == (300, 200)  # the pool goes on


async def test_a_process_that_dies_is_reported_with_how_and_replaced(pool):
    with pytest.raises(RenderCrashed, match=r"the render process died \(exit code 3\) while running _exit"):
        await pool.run(os._exit, 3, timeout=60)
    with pytest.raises(RenderCrashed, match=r"died \(killed by SIGABRT\) while running abort"):
        await pool.run(os.abort, timeout=60)
    assert await pool.run(os.getpid, timeout=60) > 0  # a new process took its place


async def test_a_refused_image_leaves_the_process_in_service(pool, tmp_path):
    bogus = tmp_path / "bogus.jpg"
    bogus.write_bytes(b"not an image at all")
    before = await pool.run(os.getpid, timeout=60, lane="analysis")
    with pytest.raises(images.ImageRefused, match="libvips cannot read the file"):
        await pool.run(images.analyze, str(bogus), 1_000_000, timeout=60, lane="analysis")
    assert await pool.run(os.getpid, timeout=60, lane="analysis") == before  # reused, not killed


POOL_CYCLES = textwrap.dedent("""
    import asyncio, threading, time
    from concurrent.futures.process import _ExecutorManagerThread
    from rindle_async.processing.pool import ProcessingPool, RenderTimeout

    def running_managers():
        return [t for t in threading.enumerate() if isinstance(t, _ExecutorManagerThread)]

    async def main():
        for _ in range(4):
            pool = ProcessingPool(1)
            pool.start()
            try:
                await pool.run(time.sleep, 5, timeout=0.05)  # its process is killed
            except RenderTimeout:
                pass
            await pool.run(time.sleep, 0, timeout=30)
            pool.close()
            left = running_managers()
            assert not left, f"{len(left)} executor threads outlived close()"

    if __name__ == "__main__":
        asyncio.run(main())
""")


def test_a_pool_started_and_closed_repeatedly_shuts_down_cleanly(tmp_path):
    # an executor thread left running at close races the interpreter's exit for its pipes
    script = tmp_path / "cycles.py"
    script.write_text(POOL_CYCLES)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
