"""Placeholder benchmark: what a ThumbHash and a dominant colour add to each upload's promotion.

Measured in one process with libvips' operation cache off, on a 24-megapixel (6000 x 4000)
photo-like JPEG and on the same size of noise (the most a JPEG decoder ever has to read),
each figure the median of several runs.  Baselines from the same run:

- ``analyze`` without the placeholder (the header read promotion always did);
- a full decode of the same JPEG (what "never the full image" rules out);
- the decode alone at 1/8 scale (``shrink=8``), the floor of any placeholder from the pixels.

The ThumbHash encode on its own (pure Python, on the 32-pixel thumbnail) is reported too, and
what a render pays: a profile with variants gets its placeholder from a frame its render
decoded anyway (here the 800-pixel one); only a profile that renders nothing at promotion
pays the 1/8-scale decode.

    .venv/bin/python bench/placeholders.py [--runs 7] [--smoke] [--out DIR]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyvips

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import Report, arguments  # noqa: E402

from rindle_async.placeholders import THUMB_SIZE, placeholder  # noqa: E402
from rindle_async.processing import images  # noqa: E402


def photo(width: int, height: int) -> pyvips.Image:
    """Smooth shapes with a little grain: about what a camera JPEG holds."""
    base = pyvips.Image.gaussnoise(max(1, width // 10), max(1, height // 10), sigma=60).gaussblur(3)
    grain = pyvips.Image.gaussnoise(width, height, sigma=6)
    luma = (base.resize(width / base.width, vscale=height / base.height, kernel="cubic") + grain).cast("uchar")
    return luma.bandjoin([luma.flip("horizontal"), luma.flip("vertical")]).copy(interpretation="srgb")


def noise(width: int, height: int) -> pyvips.Image:
    grey = pyvips.Image.gaussnoise(width, height, sigma=40).cast("uchar")
    return grey.bandjoin([grey.rot180(), grey.flip("horizontal")]).copy(interpretation="srgb")


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(report: Report, label: str, path: str, runs: int, key: str) -> None:
    header_only = median_ms(lambda: images._header(path, 10**12), runs)
    with_placeholder = median_ms(lambda: images.analyze(path, 10**12), runs)
    full = median_ms(lambda: pyvips.Image.new_from_file(path, access="sequential").avg(), max(1, runs // 2))
    floor = median_ms(lambda: pyvips.Image.new_from_file(path, shrink=8, access="sequential").avg(), runs)
    added = with_placeholder - header_only
    report.row(f"{label}: analyze, header only (baseline)", header_only, "ms")
    report.row(f"{label}: analyze with the placeholder", with_placeholder, "ms", baseline=full,
               key=f"{key}_analyze_ms")
    report.row(f"{label}:   added by the placeholder", added, "ms", baseline=full, key=f"{key}_added_ms")
    report.row(f"{label}: decode at 1/8 scale alone (floor)", floor, "ms", key=f"{key}_eighth_decode_ms")
    report.row(f"{label}: full decode (what is avoided)", full, "ms", key=f"{key}_full_decode_ms")
    report.ratio(f"{key}_added_vs_full_decode", added, full)


def main() -> None:
    args = arguments(__doc__.splitlines()[0], runs=7)
    width, height, runs = (600, 400, 2) if args.smoke else (6000, 4000, args.runs)
    report = Report("placeholders", f"Placeholder cost per upload ({width}x{height} JPEG, median of {runs})",
                    smoke=args.smoke)
    pyvips.cache_set_max(0)  # every run decodes for real
    with tempfile.TemporaryDirectory() as folder:
        for label, key, image in (("photo", "photo", photo(width, height)), ("noise", "noise", noise(width, height))):
            path = str(Path(folder, f"{key}.jpg"))
            image.jpegsave(path, Q=85)
            report.note(f"{label}: {Path(path).stat().st_size / 1e6:.1f} MB")
            measure(report, label, path, runs, key)
        # what a render pays: the placeholder from the 800-pixel frame its decode holds in memory
        frame = pyvips.Image.thumbnail(str(Path(folder, "photo.jpg")), 800, height=800).copy_memory()
        report.row("with renders: from the 800 px frame a render decoded (worker default)",
                   median_ms(lambda: images._placeholder_of(frame), max(runs, 20)), "ms", key="render_frame_ms",
                   digits=2)
        thumb = pyvips.Image.thumbnail(str(Path(folder, "photo.jpg")), THUMB_SIZE, height=THUMB_SIZE)
        pixels = bytes(thumb.bandjoin(255).cast("uchar").write_to_memory())
        encode = median_ms(lambda: placeholder(thumb.width, thumb.height, pixels), max(runs, 20))
        report.row(f"ThumbHash + dominant colour of the {thumb.width}x{thumb.height} thumbnail", encode, "ms",
                   key="hash_ms", digits=2)
    report.note("the 1/8-scale decode is JPEG's entropy decoding, proportional to the file's bytes;"
                " the embedded EXIF thumbnail is never used (it may show what an edit cropped away)")
    print(report.finish(args.out))


if __name__ == "__main__":
    main()
