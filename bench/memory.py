"""Memory benchmark: peak RSS of one render process, and what refusing a bomb costs.

Each figure comes from a fresh spawned process, reading its own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) at the end of its work.  On Linux a
spawned child starts with its parent's ``ru_maxrss`` (it is kept across the
exec), so this parent stays small: it imports neither pyvips nor rindle_async
until the memory figures are in, and generates the images in a child.  Each
child also reports its ``VmHWM`` (its own peak, not inherited) as a check.

- render: a process set up as a ``ProcessingPool`` slot is (spawned, with
  ``images.configure()`` as its initializer) running ``render_variants`` with
  the pipeline profile's two variants, 128x128 cover WebP q80 and 800x800
  inside JPEG q85, on a generated photo-like JPEG of ``--side`` x ``--side``
  (10000 x 10000 by default);
- bomb: the same kind of process refusing a 30000 x 30000 PNG (every row there,
  zlib-packed to about 1 MB; one row with ``--smoke``) the way the worker does,
  with ``images.analyze``'s header check; its time is the ``analyze`` call alone;
- both again with ``images.py`` imported on its own, as a module outside the
  package: what a pool process would cost if importing ``processing.images``
  did not import all of ``rindle_async`` (its ``__init__`` imports the facade);
- baselines in the same run: a spawned process that only imports pyvips (the
  floor), and a bare ``pyvips.Image.thumbnail(source, 800)`` written to JPEG
  (pyvips defaults, its operation cache on) of the same JPEG.

The component figure: images/s of ``render_variants`` through a 2-process
``ProcessingPool`` on ``--images`` 4000 x 3000 JPEGs, against two bare
``thumbnail`` calls per image (the same two variants, the same savers) in a
2-process spawn pool: the best of ``--rounds`` rounds taken in turns, and the
CPU time per image measured in the pool processes (steadier on a shared machine).

    .venv/bin/python bench/memory.py [--side 10000] [--images 24] [--rounds 3] [--smoke] [--out DIR]
"""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import os
import resource
import statistics
import struct
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # report.py, also in spawned children

from report import Report, arguments  # noqa: E402

PIPELINE = {"thumb": {"width": 128, "height": 128, "fit": "cover", "format": "webp",
                      "quality": 80, "keep_metadata": False, "background": (255, 255, 255)},
            "large": {"width": 800, "height": 800, "fit": "inside", "format": "jpeg",
                      "quality": 85, "keep_metadata": False, "background": (255, 255, 255)}}
IMAGES_PY = Path(__file__).resolve().parents[1] / "src" / "rindle_async" / "processing" / "images.py"
MAX_PIXELS = 200_000_000  # lets the 10000 x 10000 JPEG through; the bomb is over any profile's
BOMB_MAX_PIXELS = 50_000_000  # the design's example profile


def peak_rss_mb() -> tuple[float, float]:
    """This process's peak resident set, in MiB: ``ru_maxrss`` and the kernel's ``VmHWM``."""
    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, hwm / 1024


# -- what the spawned children run (module level, so spawn can pickle them) -------------------

IMAGES = None  # in a child set up as a pool process: the images module it configured


def configure_like_a_pool_process(alone: bool) -> None:
    """The initializer ``ProcessingPool`` gives its processes, on ``rindle_async``'s images
    module or, with ``alone``, on the same file imported by itself (not as part of the package)."""
    global IMAGES
    if alone:
        spec = importlib.util.spec_from_file_location("images_alone", IMAGES_PY)
        sys.modules[spec.name] = IMAGES = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(IMAGES)
    else:
        from rindle_async.processing import images as IMAGES
    IMAGES.configure()


def import_pyvips() -> tuple[float, float]:
    import pyvips  # noqa: F401

    return peak_rss_mb()


def bare_thumbnail(source: str, dest_dir: str) -> tuple[float, float]:
    import pyvips

    pyvips.Image.thumbnail(source, 800).write_to_file(os.path.join(dest_dir, "bare.jpg"), Q=85)
    return peak_rss_mb()


def render_pipeline(source: str, dest_dir: str) -> tuple[tuple[float, float], dict]:
    rendered = IMAGES.render_variants(source, dest_dir, PIPELINE, MAX_PIXELS)
    return peak_rss_mb(), rendered


def refuse_bomb(source: str) -> tuple[float, tuple[float, float], str]:
    started = time.perf_counter()
    try:
        IMAGES.analyze(source, BOMB_MAX_PIXELS)
        reason = "NOT REFUSED"
    except IMAGES.ImageRefused as exc:
        reason = str(exc)
    return (time.perf_counter() - started) * 1000, peak_rss_mb(), reason


def cpu_seconds() -> float:
    """CPU time of this process so far, all its threads (libvips') included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_two_thumbnails(source: str, dest_dir: str) -> float:
    """One ``thumbnail`` per variant, saved with the options rindle saves with; its CPU time."""
    import pyvips

    started = cpu_seconds()
    pyvips.Image.thumbnail(source, 128, height=128, crop="centre").webpsave(
        os.path.join(dest_dir, "thumb.webp"), Q=80, keep="none")
    pyvips.Image.thumbnail(source, 800, height=800, size="down").jpegsave(
        os.path.join(dest_dir, "large.jpg"), Q=85, keep="none", optimize_coding=True,
        interlace=True)
    return cpu_seconds() - started


def render_pipeline_timed(source: str, dest_dir: str) -> float:
    """``render_variants`` of the pipeline profile in a ProcessingPool process; its CPU time."""
    from rindle_async.processing import images

    started = cpu_seconds()
    images.render_variants(source, dest_dir, PIPELINE, MAX_PIXELS)
    return cpu_seconds() - started


# -- the parent ----------------------------------------------------------------------------------

def in_fresh_process(fn, *args, images: str | None = None):
    """``fn(*args)`` in a new spawned process; set up as a pool process when ``images`` is
    "package" (rindle_async's images module) or "alone" (images.py imported by itself)."""
    setup = {} if images is None else {"initializer": configure_like_a_pool_process,
                                       "initargs": (images == "alone",)}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), **setup) as pool:
        return pool.submit(fn, *args).result()


def write_photos(photos: list[tuple[str, int, int]]) -> None:
    """Photo-like JPEGs (see ``write_photo``): (path, width, height) each, all different."""
    for seed, (path, width, height) in enumerate(photos):
        write_photo(path, width, height, seed)


def write_photo(path: str, width: int, height: int, seed: int = 0) -> None:
    """A photo-like JPEG: gradients under coarse and middle noise, fine grain at full size."""
    import pyvips

    pyvips.cache_set_max(0)
    small_width, small_height = max(8, width // 4), max(8, height // 4)
    xyz = pyvips.Image.xyz(small_width, small_height)
    across, down = xyz[0] * (1.0 / small_width), xyz[1] * (1.0 / small_height)
    bands = [across * gx + down * gy + 30
             + pyvips.Image.perlin(small_width, small_height, cell_size=max(2, small_width // 6),
                                   seed=seed * 10 + 3 * i) * 90
             + pyvips.Image.perlin(small_width, small_height, cell_size=max(2, small_width // 60),
                                   seed=seed * 10 + 3 * i + 1) * 40
             for i, (gx, gy) in enumerate([(160, 40), (40, 140), (90, 90)])]
    coarse = bands[0].bandjoin(bands[1:]).resize(width / small_width, kernel="linear")
    grain = pyvips.Image.perlin(width, height, cell_size=3, seed=seed * 10 + 9) * 24
    image = (coarse.crop(0, 0, width, height) + grain).cast("uchar")
    image.copy(interpretation="srgb").jpegsave(path, Q=90)


def write_bomb(path: str, side: int, rows: int) -> None:
    """A greyscale PNG declaring side x side black pixels with ``rows`` rows of them present
    (all of them: about 1 MB for 30000 x 30000, and seconds of zlib to pack)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, parts = zlib.compressobj(9), bytes(side + 1), []  # filter byte + the pixels
    for _ in range(rows):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                           + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


async def throughput(sources: list[str], folder: str, processes: int,
                     rounds: int) -> dict[str, tuple[float, float]]:
    """Per way of rendering: the best images/s of ``rounds`` (taken in turns with the other
    way, so a change in the machine's load hits both) and the median CPU ms per image."""
    from rindle_async.processing.pool import ProcessingPool

    loop = asyncio.get_running_loop()
    dirs = [os.path.join(folder, f"out-{i}") for i in range(len(sources))]
    for path in dirs:
        os.makedirs(path, exist_ok=True)
    bare = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    pool = ProcessingPool(processes)
    ways = {"bare": lambda source, out: loop.run_in_executor(bare, bare_two_thumbnails, source,
                                                            out),
            "ours": lambda source, out: pool.run(render_pipeline_timed, source, out, timeout=120)}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for run in ways.values():  # warm both pools first: process start-up is not measured
            await asyncio.gather(*(run(sources[0], dirs[0]) for _ in range(processes)))
        for _ in range(rounds):
            for name, run in ways.items():
                started = time.perf_counter()
                seconds = await asyncio.gather(*(run(s, out) for s, out in zip(sources, dirs)))
                rates[name].append(len(sources) / (time.perf_counter() - started))
                cpu[name].extend(seconds)
    finally:
        bare.shutdown()
        pool.close()
    return {name: (max(rates[name]), statistics.median(cpu[name]) * 1000) for name in ways}


def memory_figures(report: Report, folder: str, source: str, side: int, smoke: bool) -> None:
    parent_peak = peak_rss_mb()[0]
    bomb = os.path.join(folder, "bomb.png")
    write_bomb(bomb, 30000, rows=1 if smoke else 30000)
    floor, floor_hwm = in_fresh_process(import_pyvips)
    report.row("spawned process, import pyvips only (floor)", floor, "MB",
               key="pyvips_import_rss_mb")
    bare, bare_hwm = in_fresh_process(bare_thumbnail, source, folder)
    report.row(f"bare thumbnail to 800 px, {side}x{side} JPEG (baseline)", bare, "MB",
               key="raw_thumbnail_peak_rss_mb_10k_jpeg")
    (render_mb, render_hwm), rendered = in_fresh_process(render_pipeline, source, folder,
                                                         images="package")
    report.row(f"render_variants, pipeline profile, {side}x{side} JPEG", render_mb, "MB",
               baseline=bare, key="render_peak_rss_mb_10k_jpeg")
    refuse_ms, (refuse_mb, refuse_hwm), reason = in_fresh_process(refuse_bomb, bomb,
                                                                  images="package")
    report.row("refuse a 30000x30000 PNG bomb (analyze), time", refuse_ms, "ms",
               key="bomb_refuse_ms", digits=2)
    report.row("refuse a 30000x30000 PNG bomb, peak RSS", refuse_mb, "MB", baseline=floor,
               key="bomb_refuse_peak_rss_mb")
    (alone_mb, _), _ = in_fresh_process(render_pipeline, source, folder, images="alone")
    report.row("  the same render, images.py imported alone", alone_mb, "MB", baseline=bare,
               key="render_peak_rss_mb_10k_jpeg_images_alone")
    _, (alone_bomb_mb, _), _ = in_fresh_process(refuse_bomb, bomb, images="alone")
    report.row("  the same refusal, images.py imported alone", alone_bomb_mb, "MB",
               baseline=floor, key="bomb_refuse_peak_rss_mb_images_alone")
    report.results.update({
        "jpeg_side": side,  # the *_10k_jpeg keys hold this side's figures
        "render_under_100_mb": render_mb <= 100,
        "bomb_under_50_ms_and_64_mb": refuse_ms < 50 and refuse_mb < 64,
        "vmhwm_mb": {"pyvips_import": floor_hwm, "raw_thumbnail": bare_hwm,
                     "render": render_hwm, "bomb_refuse": refuse_hwm},
        "parent_rss_mb_before_children": parent_peak})
    report.note(f"each child's VmHWM (its own peak): floor {floor_hwm:.1f}, bare "
                f"{bare_hwm:.1f}, render {render_hwm:.1f}, bomb {refuse_hwm:.1f} MB; this "
                f"parent's ru_maxrss, which spawned children start from: {parent_peak:.1f} MB")
    report.note(f"bomb: {os.path.getsize(bomb):,} bytes; refused with: {reason}")
    report.note("variants: " + ", ".join(f"{name} {v['width']}x{v['height']}"
                                         for name, v in rendered.items()))


def throughput_figures(report: Report, folder: str, sources: list[str], size: tuple[int, int],
                       processes: int, rounds: int) -> None:
    figures = asyncio.run(throughput(sources, folder, processes, rounds))
    (bare, bare_cpu), (ours, ours_cpu) = figures["bare"], figures["ours"]
    label = f"{len(sources)} JPEGs {size[0]}x{size[1]}, {processes} processes"
    report.row(f"two bare thumbnails per image (baseline), {label}", bare, "images/s",
               key="bare_two_thumbnails_images_per_s")
    report.row(f"render_variants, {label}", ours, "images/s", baseline=bare,
               key="render_variants_images_per_s")
    report.row("two bare thumbnails per image, CPU", bare_cpu, "ms/image",
               key="bare_two_thumbnails_cpu_ms_per_image")
    report.row("render_variants, CPU", ours_cpu, "ms/image", baseline=bare_cpu,
               key="render_variants_cpu_ms_per_image")
    report.ratio("render_variants_vs_bare_ratio", ours, bare)
    report.note(f"images/s: the best of {rounds} rounds, the two ways in turns; CPU: the "
                "median per image, measured in the pool process")


def main() -> None:
    args = arguments(__doc__.splitlines()[0], side=10000, images=24, processes=2, rounds=3)
    side, count, size = (1000, 2, (640, 480)) if args.smoke else (args.side, args.images,
                                                                  (4000, 3000))
    report = Report("memory", f"Peak RSS of one render process ({side}x{side} JPEG) and of a "
                    f"bomb refusal; render throughput", smoke=args.smoke)
    with tempfile.TemporaryDirectory(prefix="rindle-bench-memory-") as folder:
        big = os.path.join(folder, "big.jpg")
        sources = [os.path.join(folder, f"photo-{i}.jpg") for i in range(count)]
        in_fresh_process(write_photos, [(big, side, side)] + [(path, *size) for path in sources])
        memory_figures(report, folder, big, side, args.smoke)  # first: this process is still small
        throughput_figures(report, folder, sources, size, args.processes,
                           1 if args.smoke else args.rounds)
    report.note("MB here is MiB (2^20 bytes): ru_maxrss / 1024")
    print(report.finish(args.out))


if __name__ == "__main__":
    main()
