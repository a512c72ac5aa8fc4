"""Placeholders: the ThumbHash port against vectors from the reference implementation (npm
thumbhash 0.1.1, made by tests/thumbhash_vectors.mjs), the dominant colour, and what promotion
stores: decoded back, the placeholder looks like the uploaded image."""

from __future__ import annotations

import base64
import hashlib

import msgspec
import pytest
import pyvips

from rindle_async import Placeholder
from rindle_async.placeholders import average_rgba, dominant_color, thumbhash, thumbhash_to_rgba

from .conftest import drain

# (size, has alpha) -> (the reference's hash, its decoded width and height, sha256 of its pixels)
VECTORS = {
    (32, 21, False): ("nfcFDYY0MFZVdFllZUl3hpBWrNj3", 32, 23,
                      "6f1f0ef76b00a7ec47e743787cbb51e5c1b4a88ba8124d52951c3d0c725df9bb"),
    (21, 32, False): ("nfcFFQYFRTdWeYN4dmZndwhn2PLz", 23, 32,
                      "c68a7dac59886b8775ac89701cf6ac29a84e6691668e512235dc94aa2e6c5337"),
    (32, 32, True): ("nfeBDQIHVUB2ZGZ1aJB1tt/Md3doaHZ1BQ==", 32, 32,
                     "244c256f9ee9be815b562df224887924fe1997696c4511bd30a065833307bebd"),
    (100, 75, False): ("3/cBBYI0VCQkBblHpER5d1cDqKv0", 32, 23,
                       "c27f3362a1431cd7bb64accdeb08619246f5e50c2426a2fcabe4eec686f0428e"),
    (7, 100, True): ("3BeCCQQIAGQkNEgwQtGOBzXNZZgIY4I=", 6, 32,
                     "7d9586c4d44e5fbcd2cc13f5230569d2c1a038135e98d9d6c0e0506d75341f6b"),
    (1, 1, False): ("AegBDwYI9wiIh4hwj3CI+AiIgIAI94cP", 32, 32,
                    "6f7d5ba378ebab77e27f0219e26935ac87bb5c18fd989befbea92f0c1c5571a6"),
    (32, 18, True): ("XfeFC4QHNVBmdYVweczJ+FZWaFlxUHk=", 32, 19,
                     "09de19863f59f1fbb5a91ca1c100550de5ed6d69fd9e603a020808c5227792e7"),
}


def pattern(w: int, h: int, alpha: bool) -> bytes:
    """The pixels tests/thumbhash_vectors.mjs hashes (no symmetry, so no rounding ties)."""
    px = bytearray(w * h * 4)
    for y in range(h):
        for x in range(w):
            i = 4 * (y * w + x)
            px[i:i + 4] = bytes(((x * x * 7 + y * 3) % 256, (x * y * 5 + 11) % 256,
                                 (x * 13 + y * y * 2) % 256, (x * 29 + y * 17) % 256 if alpha else 255))
    return bytes(px)


@pytest.mark.parametrize("case", VECTORS, ids=lambda c: f"{c[0]}x{c[1]}{'a' if c[2] else ''}")
def test_thumbhash_equals_the_reference_implementation(case):
    w, h, alpha = case
    want, decoded_w, decoded_h, pixels = VECTORS[case]
    assert base64.b64encode(thumbhash(w, h, pattern(w, h, alpha))).decode() == want
    got_w, got_h, rgba = thumbhash_to_rgba(base64.b64decode(want))
    assert (got_w, got_h, hashlib.sha256(rgba).hexdigest()) == (decoded_w, decoded_h, pixels)


def test_thumbhash_refuses_what_it_cannot_encode():
    with pytest.raises(ValueError, match="101x10"):
        thumbhash(101, 10, bytes(101 * 10 * 4))
    with pytest.raises(ValueError, match="12 bytes"):
        thumbhash(2, 2, bytes(12))


def test_dominant_colour_is_the_most_common_not_the_average():
    red, blue, clear = bytes((200, 30, 40, 255)), bytes((20, 40, 220, 255)), bytes((0, 255, 0, 0))
    rgba = red * 60 + blue * 40 + clear * 100  # 10 x 20; the transparent green does not count
    assert dominant_color(10, 20, rgba) == "#c81e28"
    assert dominant_color(1, 1, clear) == "#000000"


def two_tone(width: int, height: int) -> pyvips.Image:
    """Red on the left two thirds, blue on the right third."""
    left = pyvips.Image.black(width * 2 // 3, height).new_from_image([210, 40, 30])
    right = pyvips.Image.black(width - width * 2 // 3, height).new_from_image([30, 60, 200])
    return left.join(right, "horizontal").copy(interpretation="srgb")


async def test_promotion_stores_a_placeholder_that_looks_like_the_image(media_rindle, redis_url):
    rindle = await media_rindle(allow_mime=("image/jpeg", "image/png"))
    photo = await rindle.upload("avatar", two_tone(1800, 1200).jpegsave_buffer(Q=90), filename="p.jpg")
    clear = two_tone(300, 300).bandjoin(pyvips.Image.black(300, 300).new_from_image(128))
    translucent = await rindle.upload("avatar", clear.copy(interpretation="srgb").pngsave_buffer())
    assert photo.placeholder is None  # not promoted yet
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(photo.id)
    assert isinstance(asset.placeholder, Placeholder)
    color = bytes.fromhex(asset.placeholder.color[1:])
    assert all(abs(got - want) <= 6 for got, want in zip(color, (210, 40, 30), strict=True))  # JPEG's red
    w, h, rgba = thumbhash_to_rgba(asset.placeholder.hash_bytes)
    assert (w, h) == (32, 23)  # a landscape: 7:5, the ratio nearest 3:2 a ThumbHash holds
    red_side, blue_side = rgba[4 * (10 * w + 4):][:3], rgba[4 * (10 * w + 29):][:3]
    assert red_side[0] > 150 > red_side[2] and blue_side[2] > 120 > blue_side[0]
    r, g, b, a = average_rgba(asset.placeholder.hash_bytes)
    assert a == 1 and r > b  # mostly red, opaque
    *_, alpha = average_rgba((await rindle.get_asset(translucent.id)).placeholder.hash_bytes)
    assert 0.4 < alpha < 0.6
    assert msgspec.json.decode(msgspec.json.encode(asset))["placeholder"] == {
        "thumbhash": asset.placeholder.thumbhash, "color": asset.placeholder.color}


async def test_without_renders_promotion_makes_the_placeholder(make_rindle, local_storage, redis_url):
    """A profile that renders nothing at promotion (no variants, or only lazy ones) gets its
    placeholder from promotion's own 1/8-scale decode; the others from a frame the render decoded."""
    from rindle_async import Profile

    plain = Profile(name="plain", storage="media", allow_mime=("image/jpeg",))
    rindle = await make_rindle(relay=False, storages={"media": local_storage}, profiles=[plain])
    asset = await rindle.upload("plain", two_tone(900, 600).jpegsave_buffer())
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(asset.id)
    assert asset.state == "ready" and asset.variants == {}
    assert thumbhash_to_rgba(asset.placeholder.hash_bytes)[:2] == (32, 23)
