"""Placeholders a page paints before any image request: a ThumbHash and the dominant colour.

ThumbHash (Evan Wallace, https://evanw.github.io/thumbhash/) packs a blurred picture of
the image, its aspect ratio and its alpha into about 25 bytes.  This is a port of the
reference JavaScript (npm ``thumbhash`` 0.1.1); its tests compare hashes and decoded
pixels with the reference's.  The cosine sums are separable (a term costs a column, not
the whole thumbnail) and exact (``math.fsum``), so the hash does not depend on the Python
version; a coefficient that is zero in theory (a perfectly symmetric image) sits on a
rounding tie, and may land on the other nibble than in JavaScript, whose ``Math.cos``
differs from C's in the last bit.  The
dominant colour is the most common colour of the thumbnail at 4 bits per channel.

The first render of an asset computes both from the smallest whole frame it decoded anyway
(``processing.images.render_job``: about a millisecond); a profile that renders nothing at
promotion gets them from promotion's own thumbnail, decoded with shrink-on-load (a JPEG at
1/8 scale, 30 ms for 24 megapixels: bench/placeholders.py).  Never from the full image, and
never from an embedded EXIF thumbnail, which may show what an edit cropped away.
"""

from __future__ import annotations

import base64
import math
import operator
from collections import Counter
from collections.abc import Sequence

import msgspec

__all__ = ["Placeholder", "average_rgba", "dominant_color", "thumbhash", "thumbhash_to_rgba"]

#: Longest side of the thumbnail placeholders are computed from (ThumbHash allows 100).
THUMB_SIZE = 32


class Placeholder(msgspec.Struct, frozen=True, kw_only=True):
    """What a page paints while an image loads.

    thumbhash: the ThumbHash, base64 (decode it in the browser with the ``thumbhash``
        package's ``thumbHashToDataURL``, or here with ``thumbhash_to_rgba``).
    color: the dominant colour, ``#rrggbb`` (e.g. a CSS ``background-color``).
    """

    thumbhash: str
    color: str

    @property
    def hash_bytes(self) -> bytes:
        """The ThumbHash's bytes."""
        return base64.b64decode(self.thumbhash)


def _round(value: float) -> int:
    """JavaScript's Math.round (halves go up), which the reference encoder uses."""
    return math.floor(value + 0.5)


def _encode_channel(channel: Sequence[float], w: int, h: int, nx: int,
                    ny: int) -> tuple[float, list[float], float]:
    """DC term, normalised AC terms and their scale of one channel's DCT."""
    fx = [[math.cos(math.pi / w * cx * (x + 0.5)) for x in range(w)] for cx in range(nx)]
    fy = [[math.cos(math.pi / h * cy * (y + 0.5)) for y in range(h)] for cy in range(ny)]
    rows = [channel[y * w:(y + 1) * w] for y in range(h)]
    # per frequency cx, each row's sum against its cosine: a 2-D term then costs h, not w * h
    by_row = [[math.fsum(map(operator.mul, row, fx[cx])) for row in rows] for cx in range(nx)]
    dc, ac, scale = 0.0, [], 0.0
    for cy in range(ny):
        cx = 0
        while cx * ny < nx * (ny - cy):
            f = math.fsum(map(operator.mul, by_row[cx], fy[cy])) / (w * h)
            if cx or cy:
                ac.append(f)
                scale = max(scale, abs(f))
            else:
                dc = f
            cx += 1
    if scale:
        ac = [0.5 + 0.5 / scale * f for f in ac]
    return dc, ac, scale


def thumbhash(w: int, h: int, rgba: bytes) -> bytes:
    """The ThumbHash of an image of at most 100 x 100 pixels.

    w: its width.
    h: its height.
    rgba: its pixels row by row, 4 bytes each (not premultiplied).
    """
    if not (0 < w <= 100 and 0 < h <= 100) or len(rgba) != w * h * 4:
        raise ValueError(f"thumbhash needs 1..100 x 1..100 RGBA pixels, got {w}x{h} and {len(rgba)} bytes")
    n = w * h
    alphas = [rgba[j + 3] / 255 for j in range(0, 4 * n, 4)]
    avg_a = math.fsum(alphas)
    offsets = range(0, 4 * n, 4)
    avg = [math.fsum(a / 255 * rgba[j + c] for a, j in zip(alphas, offsets, strict=True)) for c in range(3)]
    if avg_a:
        avg = [v / avg_a for v in avg]
    has_alpha = avg_a < n
    l_limit = 5 if has_alpha else 7
    lx = max(1, _round(l_limit * w / max(w, h)))
    ly = max(1, _round(l_limit * h / max(w, h)))
    lum, yb, rg = [], [], []
    for a, j in zip(alphas, range(0, 4 * n, 4), strict=True):  # composite atop the average colour
        r = avg[0] * (1 - a) + a / 255 * rgba[j]
        g = avg[1] * (1 - a) + a / 255 * rgba[j + 1]
        b = avg[2] * (1 - a) + a / 255 * rgba[j + 2]
        lum.append((r + g + b) / 3)
        yb.append((r + g) / 2 - b)
        rg.append(r - g)
    l_dc, l_ac, l_scale = _encode_channel(lum, w, h, max(3, lx), max(3, ly))
    p_dc, p_ac, p_scale = _encode_channel(yb, w, h, 3, 3)
    q_dc, q_ac, q_scale = _encode_channel(rg, w, h, 3, 3)
    landscape = w > h
    header24 = (_round(63 * l_dc) | (_round(31.5 + 31.5 * p_dc) << 6) | (_round(31.5 + 31.5 * q_dc) << 12)
                | (_round(31 * l_scale) << 18) | (int(has_alpha) << 23))
    header16 = ((ly if landscape else lx) | (_round(63 * p_scale) << 3) | (_round(63 * q_scale) << 9)
                | (int(landscape) << 15))
    out = [header24 & 255, (header24 >> 8) & 255, header24 >> 16, header16 & 255, header16 >> 8]
    channels = [l_ac, p_ac, q_ac]
    if has_alpha:
        a_dc, a_ac, a_scale = _encode_channel(alphas, w, h, 5, 5)
        out.append(_round(15 * a_dc) | (_round(15 * a_scale) << 4))
        channels.append(a_ac)
    factors = [_round(15 * f) for ac in channels for f in ac]
    for index in range(0, len(factors), 2):
        low, high = factors[index], factors[index + 1] if index + 1 < len(factors) else 0
        out.append(low | (high << 4))
    return bytes(out)


def _header(hash_: bytes) -> tuple[float, float, float, float, bool, float, float, bool]:
    header24 = hash_[0] | (hash_[1] << 8) | (hash_[2] << 16)
    header16 = hash_[3] | (hash_[4] << 8)
    return ((header24 & 63) / 63, ((header24 >> 6) & 63) / 31.5 - 1, ((header24 >> 12) & 63) / 31.5 - 1,
            ((header24 >> 18) & 31) / 31, bool(header24 >> 23), ((header16 >> 3) & 63) / 63,
            ((header16 >> 9) & 63) / 63, bool(header16 >> 15))


def _rgb(lum: float, yb: float, rg: float) -> tuple[float, float, float]:
    b = lum - 2 / 3 * yb
    r = (3 * lum - b + rg) / 2
    return r, r - rg, b


def average_rgba(hash_: bytes) -> tuple[float, float, float, float]:
    """The average colour a ThumbHash holds, each channel 0..1.

    hash_: the ThumbHash's bytes.
    """
    l_dc, p_dc, q_dc, _, has_alpha, _, _, _ = _header(hash_)
    r, g, b = _rgb(l_dc, p_dc, q_dc)
    return (max(0.0, min(1.0, r)), max(0.0, min(1.0, g)), max(0.0, min(1.0, b)),
            (hash_[5] & 15) / 15 if has_alpha else 1.0)


def thumbhash_to_rgba(hash_: bytes) -> tuple[int, int, bytes]:
    """The blurred picture a ThumbHash holds, at most 32 pixels a side, as (w, h, RGBA bytes).

    hash_: the ThumbHash's bytes.
    """
    l_dc, p_dc, q_dc, l_scale, has_alpha, p_scale, q_scale, landscape = _header(hash_)
    header16 = hash_[3] | (hash_[4] << 8)
    lx = max(3, (5 if has_alpha else 7) if landscape else header16 & 7)
    ly = max(3, header16 & 7 if landscape else (5 if has_alpha else 7))
    a_dc, a_scale = ((hash_[5] & 15) / 15, (hash_[5] >> 4) / 15) if has_alpha else (1.0, 0.0)
    nibbles = [(byte >> shift) & 15 for byte in hash_[6 if has_alpha else 5:] for shift in (0, 4)]
    taken = 0

    def factors(nx: int, ny: int, scale: float) -> list[tuple[int, int, float]]:
        nonlocal taken
        out = []
        for cy in range(ny):
            cx = 0 if cy else 1
            while cx * ny < nx * (ny - cy):
                out.append((cx, cy, (nibbles[taken] / 7.5 - 1) * scale))
                taken += 1
                cx += 1
        return out

    l_ac = factors(lx, ly, l_scale)
    p_ac, q_ac = factors(3, 3, p_scale * 1.25), factors(3, 3, q_scale * 1.25)
    a_ac = factors(5, 5, a_scale) if has_alpha else []
    ratio = _aspect(hash_)
    w = _round(32 if ratio > 1 else 32 * ratio)
    h = _round(32 / ratio if ratio > 1 else 32)
    out = bytearray(w * h * 4)
    for y in range(h):
        fy = [math.cos(math.pi / h * (y + 0.5) * cy) * 2 for cy in range(7)]
        for x in range(w):
            fx = [math.cos(math.pi / w * (x + 0.5) * cx) for cx in range(7)]
            lum = l_dc + sum(f * fx[cx] * fy[cy] for cx, cy, f in l_ac)
            yb = p_dc + sum(f * fx[cx] * fy[cy] for cx, cy, f in p_ac)
            rg = q_dc + sum(f * fx[cx] * fy[cy] for cx, cy, f in q_ac)
            alpha = a_dc + sum(f * fx[cx] * fy[cy] for cx, cy, f in a_ac)
            i = 4 * (y * w + x)
            for c, value in enumerate((*_rgb(lum, yb, rg), alpha)):
                out[i + c] = int(max(0.0, 255 * min(1.0, value)))  # a Uint8Array store truncates
    return w, h, bytes(out)


def _aspect(hash_: bytes) -> float:
    has_alpha, landscape = hash_[2] & 0x80, hash_[4] & 0x80
    lx = (5 if has_alpha else 7) if landscape else hash_[3] & 7
    ly = hash_[3] & 7 if landscape else (5 if has_alpha else 7)
    return lx / ly


def dominant_color(w: int, h: int, rgba: bytes) -> str:
    """The most common colour of an image (4 bits per channel, averaged within), ``#rrggbb``;
    pixels more than half transparent do not count.

    w: its width.
    h: its height.
    rgba: its pixels row by row, 4 bytes each.
    """
    pixels = [rgba[j:j + 3] for j in range(0, w * h * 4, 4) if rgba[j + 3] >= 128]
    if not pixels:
        return "#000000"
    bins = Counter((p[0] >> 4, p[1] >> 4, p[2] >> 4) for p in pixels)
    top = bins.most_common(1)[0][0]
    chosen = [p for p in pixels if (p[0] >> 4, p[1] >> 4, p[2] >> 4) == top]
    return "#" + "".join(f"{_round(sum(p[c] for p in chosen) / len(chosen)):02x}" for c in range(3))


def placeholder(w: int, h: int, rgba: bytes) -> Placeholder:
    """The placeholder of a thumbnail of at most 100 x 100 pixels.

    w: its width.
    h: its height.
    rgba: its pixels row by row, 4 bytes each.
    """
    return Placeholder(thumbhash=base64.b64encode(thumbhash(w, h, rgba)).decode(),
                       color=dominant_color(w, h, rgba))
