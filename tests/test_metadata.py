"""Safe metadata: promotion reads the documented subset (capture time, camera, orientation, colour
space, alpha, frames) and nothing else; rendered variants carry no EXIF (GPS included) unless their
recipe keeps metadata, read back from the stored files; a profile may keep its originals back."""

from __future__ import annotations

import msgspec
import pytest
import pyvips

from rindle_async import DeliveryForbidden, ImageMetadata, Variant

from .conftest import drain
from .media import avatar_profile, png


def camera_jpeg() -> bytes:
    """A JPEG as a phone writes it: camera, capture time with offset, a GPS position, rotated."""
    image = pyvips.Image.black(120, 80).new_from_image([100, 150, 200]).copy(interpretation="srgb").copy()
    for field, value in (("exif-ifd0-Make", "Canon"), ("exif-ifd0-Model", "EOS R5"),
                         ("exif-ifd0-Artist", "Jane Roe"), ("exif-ifd2-DateTimeOriginal", "2024:05:01 12:34:56"),
                         ("exif-ifd2-OffsetTimeOriginal", "+02:00"), ("exif-ifd2-BodySerialNumber", "0123456"),
                         ("exif-ifd3-GPSLatitudeRef", "N"), ("exif-ifd3-GPSLongitudeRef", "E")):
        image.set_type(pyvips.GValue.gstr_type, field, value)
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)
    return image.jpegsave_buffer()


def exif_fields(data: bytes) -> list[str]:
    image = pyvips.Image.new_from_buffer(data, "")
    return [f for f in image.get_fields() if f.startswith("exif") or f in ("xmp-data", "iptc-data")]


async def test_promotion_reads_the_documented_subset_and_variants_carry_no_exif(
        media_rindle, local_storage, redis_url):
    kept = Variant(width=40, fit="inside", format="jpeg", keep_metadata=True)
    rindle = await media_rindle(variants={
        "thumb": Variant(width=32, height=32, fit="cover", format="webp"),
        "large": Variant(width=48, fit="inside", format="jpeg"), "kept": kept})
    source = camera_jpeg()
    assert "exif-ifd3-GPSLatitudeRef" in exif_fields(source)
    asset = await rindle.upload("avatar", source, filename="holiday.jpg")
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(asset.id)
    assert asset.image == ImageMetadata(captured_at="2024-05-01T12:34:56+02:00", camera_make="Canon",
                                        camera_model="EOS R5", orientation=6, color_space="srgb",
                                        icc_profile=False, has_alpha=False, animated=False, frames=1)
    stored = msgspec.json.decode(await rindle.runtime.pool.fetchval(
        f"SELECT metadata FROM {rindle.schema}.assets WHERE id = $1::uuid", asset.id))
    text = msgspec.json.encode(stored).decode()
    assert "Jane Roe" not in text and "0123456" not in text and "GPS" not in text  # nothing else is read
    assert (asset.width, asset.height) == (80, 120)  # as displayed: orientation 6 turns it upright

    for name in ("thumb", "large"):
        key = await rindle.runtime.pool.fetchval(
            f"SELECT storage_key FROM {rindle.schema}.variants WHERE asset_id = $1::uuid AND name = $2",
            asset.id, name)
        data = b"".join([chunk async for chunk in local_storage.get(key)])
        assert exif_fields(data) == [], name  # no GPS, no camera, no EXIF at all
        rendered = pyvips.Image.new_from_buffer(data, "")
        assert not rendered.get_typeof("orientation") or rendered.get("orientation") == 1  # upright
    key = await rindle.runtime.pool.fetchval(
        f"SELECT storage_key FROM {rindle.schema}.variants WHERE asset_id = $1::uuid AND name = 'kept'", asset.id)
    kept_fields = exif_fields(b"".join([chunk async for chunk in local_storage.get(key)]))
    assert "exif-ifd0-Make" in kept_fields and "exif-ifd3-GPSLatitudeRef" in kept_fields  # the recipe asked


async def test_a_png_with_alpha_reports_it_and_has_no_camera(media_rindle, redis_url):
    rindle = await media_rindle()
    clear = pyvips.Image.black(30, 20).new_from_image([10, 20, 30, 128]).copy(interpretation="srgb")
    asset = await rindle.upload("avatar", clear.pngsave_buffer())
    await drain(rindle, redis_url)
    image = (await rindle.get_asset(asset.id)).image
    assert (image.has_alpha, image.camera_make, image.captured_at, image.frames) == (True, None, None, 1)


async def test_a_profile_that_keeps_originals_back_serves_only_variants(media_rindle, redis_url):
    rindle = await media_rindle(serve_original=False)
    asset = await rindle.upload("avatar", png(40, 30))
    await drain(rindle, redis_url)
    with pytest.raises(DeliveryForbidden, match="does not serve originals"):
        await rindle.url(asset.id)
    assert await rindle.url(asset.id, variant="thumb")
    pending = await rindle.upload("avatar", png(40, 30))
    await rindle.runtime.pool.execute(  # promoted, its renders not done yet
        f"UPDATE {rindle.schema}.assets SET state = 'processing' WHERE id = $1::uuid", pending.id)
    with pytest.raises(DeliveryForbidden, match="serve_original=False"):
        await rindle.url(pending.id, variant="thumb", fallback="original")
    page = await rindle.urls([asset.id, pending.id], variant="thumb", fallback="original")
    assert page[asset.id] and page[pending.id] is None  # the fallback is kept back too
    assert (await rindle.urls([asset.id]))[asset.id] is None
    with pytest.raises(Exception, match="serve_original"):
        avatar_profile(serve_original="no")
