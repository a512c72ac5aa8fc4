"""The libvips process pool: one call per process, and a timeout kills only its own."""

from __future__ import annotations

import os

import asyncio

import pytest
import pyvips

from rindle_async.processing import images
from rindle_async.processing.pool import ProcessingPool, RenderTimeout

RECIPE = {"width": 64, "height": 64, "fit": "cover", "format": "webp", "quality": 80,
          "keep_metadata": False, "background": (255, 255, 255)}


@pytest.fixture
def pool():
    pool = ProcessingPool(2)
    yield pool
    pool.close()


async def test_a_timeout_kills_only_its_own_process(pool, tmp_path):
    big = tmp_path / "big.png"  # slow enough to overrun a tiny timeout
    pyvips.Image.gaussnoise(6000, 6000).cast("uchar").pngsave(str(big), compression=0)
    small = tmp_path / "small.jpg"
    pyvips.Image.black(300, 200).jpegsave(str(small))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    slow = pool.run(images.render, str(big), str(tmp_path / "a"), RECIPE, 100_000_000, timeout=0.05)
    quick = pool.run(images.render, str(small), str(tmp_path / "b"), RECIPE, 100_000_000, timeout=60)
    results = await asyncio.gather(slow, quick, return_exceptions=True)
    assert isinstance(results[0], RenderTimeout)
    assert results[1]["width"] == 64  # the other call finished in its own process
    again = await pool.run(images.analyze, str(small), 1_000_000, timeout=60)
    assert (again["width"], again["height"]) == (300, 200)  # the pool goes on


async def test_a_refused_image_leaves_the_process_in_service(pool, tmp_path):
    bogus = tmp_path / "bogus.jpg"
    bogus.write_bytes(b"not an image at all")
    before = await pool.run(os.getpid, timeout=60, lane="analysis")
    with pytest.raises(images.ImageRefused, match="libvips cannot read the file"):
        await pool.run(images.analyze, str(bogus), 1_000_000, timeout=60, lane="analysis")
    assert await pool.run(os.getpid, timeout=60, lane="analysis") == before  # reused, not killed
