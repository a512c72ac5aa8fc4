"""HEIF and AVIF input: their brands sniffed, AVIF rendered by the shipped libvips, HEIC rendered
where the libvips build decodes HEVC and otherwise quarantined with a reason naming the missing
decoder; ``doctor`` reports which input formats this build decodes."""

from __future__ import annotations

import io

import pillow_heif
import pyvips
from PIL import Image

from rindle_async import Profile, maintenance
from rindle_async.processing import images
from rindle_async.security import sniff

from .conftest import drain


def heic(width: int = 64, height: int = 48) -> bytes:
    """An iPhone-style HEIC, written by libheif's x265 encoder (libvips here has none)."""
    buffer = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", (width, height), (200, 30, 40))).save(buffer, format="HEIF",
                                                                                    quality=80)
    return buffer.getvalue()


def avif(width: int = 64, height: int = 48) -> bytes:
    image = pyvips.Image.black(width, height).new_from_image([30, 60, 200]).copy(interpretation="srgb")
    return image.heifsave_buffer(compression="av1")


def mobile(storage: str = "media") -> Profile:
    return Profile(name="mobile", storage=storage, allow_mime=("image/jpeg", "image/avif", "image/heic"),
                   ladder=(32,), ladder_formats=("webp",))


def test_heif_brands_are_sniffed():
    assert sniff(heic()) == "image/heic" and sniff(avif()) == "image/avif"


async def test_avif_renders_and_heic_renders_or_is_quarantined_naming_the_decoder(
        make_rindle, local_storage, redis_url):
    rindle = await make_rindle(relay=False, storages={"media": local_storage}, profiles=[mobile()])
    from_avif = await rindle.upload("mobile", avif(), filename="photo.avif")
    from_heic = await rindle.upload("mobile", heic(), filename="IMG_0001.HEIC")
    await drain(rindle, redis_url)
    rendered = await rindle.get_asset(from_avif.id)
    assert rendered.state == "ready" and rendered.variants["w32-webp"].width == 32
    assert (rendered.content_type, rendered.image.color_space) == ("image/avif", "srgb")
    iphone = await rindle.get_asset(from_heic.id)
    if images.heif_decodes("hevc"):  # a libvips whose libheif has libde265
        assert iphone.state == "ready" and iphone.variants["w32-webp"].state == "ready"
    else:
        assert iphone.state == "quarantined"
        assert iphone.reason == ("this libvips build cannot decode HEIC (HEVC) images: its libheif lacks the "
                                 "libde265 HEVC decoder plugin; install a libvips whose libheif has it, then "
                                 "requeue the asset")


async def test_doctor_says_which_input_formats_this_build_decodes(make_rindle, local_storage):
    decodes = images.input_formats()
    assert decodes["jpeg"] and decodes["avif"]  # the shipped libvips always does these
    rindle = await make_rindle(relay=False, storages={"media": local_storage}, profiles=[mobile()])
    [check] = [c for c in await maintenance.doctor(rindle.runtime) if c.name == "input formats"]
    if decodes["heic"]:
        assert check.ok and "cannot decode" in check.detail
    else:
        assert not check.ok
        assert check.detail.startswith("profiles allow heic, which this libvips build cannot decode")
    jpeg_only = await make_rindle(relay=False, migrate=False, storages={"media": local_storage},
                                  profiles=[Profile(name="plain", storage="media")])
    [check] = [c for c in await maintenance.doctor(jpeg_only.runtime) if c.name == "input formats"]
    assert check.ok and check.detail.startswith("decodes jpeg, png, webp, gif, tiff, svg, avif")


async def test_a_photo_declared_as_octet_stream_is_typed_by_its_bytes(make_rindle, local_storage, redis_url):
    """Browsers declare application/octet-stream for files they do not know (iPhone HEIC photos);
    every profile accepts that declaration, and the sniffed type decides."""
    rindle = await make_rindle(relay=False, storages={"media": local_storage}, profiles=[mobile()])
    ticket = await rindle.initiate_upload("mobile", filename="photo.avif", content_type="application/octet-stream",
                                          byte_size=len(avif()))
    key = await rindle.runtime.pool.fetchval(
        f"SELECT storage_key FROM {rindle.schema}.upload_sessions WHERE id = $1::uuid", ticket.session_id)
    await local_storage.put(key, avif())
    staged = await rindle.verify_upload(ticket.session_id)
    proxied = await rindle.upload("mobile", avif(), filename="other.avif", content_type="application/octet-stream")
    await drain(rindle, redis_url)
    for asset in (staged, proxied):
        promoted = await rindle.get_asset(asset.id)
        assert (promoted.state, promoted.content_type) == ("ready", "image/avif")
