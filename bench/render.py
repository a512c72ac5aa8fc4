"""Render benchmark: variant rendering throughput of the libvips process pool.

Renders 400 px JPEG thumbnails of 4000x3000 JPEGs.  Baseline, in the same run
with the same spawned pool size: a bare ``pyvips.Image.thumbnail(...)`` +
``write_to_file``.  Measured: ``processing.images.render`` (header pixel check,
fail_on="warning", metadata stripped) through ``ProcessingPool.run``.

    .venv/bin/python bench/render.py [--images 24] [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import pyvips

from rindle_async.processing import images
from rindle_async.processing.pool import ProcessingPool

RECIPE = {"width": 400, "height": None, "fit": "inside", "format": "jpeg", "quality": 80,
          "keep_metadata": False, "background": (255, 255, 255)}


def bare_thumbnail(source: str, dest_dir: str) -> int:
    pyvips.cache_set_max(0)
    out = os.path.join(dest_dir, "bare.jpg")
    pyvips.Image.thumbnail(source, 400).write_to_file(out, Q=80)
    return os.path.getsize(out)


def make_sources(folder: str, count: int) -> list[str]:
    base = pyvips.Image.gaussnoise(4000, 3000).cast("uchar").bandjoin([
        pyvips.Image.xyz(4000, 3000)[0].cast("uchar"), pyvips.Image.black(4000, 3000) + 90])
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"source-{i}.jpg")
        (base + i).cast("uchar").copy(interpretation="srgb").jpegsave(path, Q=90)
        paths.append(path)
    return paths


async def timed(run, sources: list[str], dirs: list[str]) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(run(source, out) for source, out in zip(sources, dirs)))
    return len(sources) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sources = make_sources(folder, args.images)
        dirs = []
        for i in range(args.images):
            os.makedirs(os.path.join(folder, f"out-{i}"))
            dirs.append(os.path.join(folder, f"out-{i}"))
        loop = asyncio.get_running_loop()
        bare_pool = ProcessPoolExecutor(args.processes, mp_context=multiprocessing.get_context("spawn"))
        pool = ProcessingPool(args.processes)
        try:
            # warm both pools so process start-up is not measured
            await asyncio.gather(*(loop.run_in_executor(bare_pool, bare_thumbnail, sources[0], dirs[0])
                                   for _ in range(args.processes)))
            await asyncio.gather(*(pool.run(images.render, sources[0], dirs[0], RECIPE, 50_000_000,
                                            timeout=60) for _ in range(args.processes)))
            base = await timed(lambda s, d: loop.run_in_executor(bare_pool, bare_thumbnail, s, d),
                               sources, dirs)
            ours = await timed(lambda s, d: pool.run(images.render, s, d, RECIPE, 50_000_000,
                                                     timeout=60), sources, dirs)
            analyze = await timed(lambda s, d: pool.run(images.analyze, s, 50_000_000, timeout=60),
                                  sources, dirs)
        finally:
            bare_pool.shutdown()
            pool.close()
    print(f"{args.images} JPEGs 4000x3000 -> 400 px JPEG, {args.processes} spawned processes")
    print(f"  bare pyvips thumbnail (baseline)  {base:7.1f} images/s")
    print(f"  rindle render()                   {ours:7.1f} images/s   x{ours / base:5.2f}")
    print(f"  rindle analyze() (header only)    {analyze:7.1f} images/s   x{analyze / base:5.1f}")


if __name__ == "__main__":
    asyncio.run(main())
