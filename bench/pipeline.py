"""Pipeline benchmark: uploads to ready variants through a running worker, as a user runs it.

A real ``arq rindle_async.WorkerSettings`` subprocess serves the jobs; this process
is the web side and uploads 4000x3000 JPEGs with ``rindle.upload`` (proxied, local
storage; profile: 128x128 ``cover`` WebP q80 and 800x800 ``inside`` JPEG q85).

- Steady state: the worker is warmed by one upload, then N uploads are timed from
  the first upload to the last asset ready.  Baselines in the same run, with the
  same process count and save options: a plain ``ProcessPoolExecutor`` (spawn)
  running ``pyvips.Image.thumbnail`` twice per image, and one running Pillow's
  fastest path (``draft`` + ``thumbnail``/``fit``).  Rounds are interleaved and
  the medians compared.  "defaults" is the worker with no settings at all
  against a raw pyvips pool using every core.
- Latency: single 1200x900 uploads on an idle worker, upload call to ready.
- Idle cost: Redis commands per second while the worker has nothing to do
  (a private redis-server, so only this system's commands count).
- Work per upload: database round trips and transactions from ``upload`` to
  ready, counted on the wire by a proxy in front of PostgreSQL.

    .venv/bin/python bench/pipeline.py [--uploads 32] [--rounds 3] [--processes 2]
                                       [--latency-uploads 200] [--smoke]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from urllib.parse import urlsplit

import asyncpg
import pyvips
import redis.asyncio as redis_asyncio

from report import DATABASE_URL, Report, arguments

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.pgwire import WireCounter  # noqa: E402
from tests.servers import RedisProcess  # noqa: E402

BENCH = pathlib.Path(__file__).resolve().parent
ARQ = pathlib.Path(sys.executable).parent / "arq"


# -- sources ------------------------------------------------------------------------------

def make_photo(path: str, width: int, height: int, seed: int) -> None:
    """A photo-like JPEG: smooth gradients, edges and mild noise (about 3 bits/pixel at Q90)."""
    x, y = pyvips.Image.xyz(width, height)[0], pyvips.Image.xyz(width, height)[1]
    red = (x * (255.0 / width) + seed * 7) % 256
    green = ((x + y) * (127.0 / (width + height)) + 60 + seed * 3) % 256
    blue = ((y * 0.05).sin() * 60 + 120)
    noise = pyvips.Image.gaussnoise(width, height, sigma=6)
    image = red.bandjoin([green, blue]) + noise
    image.cast("uchar").copy(interpretation="srgb").jpegsave(path, Q=90)


def make_sources(folder: str, count: int, width: int, height: int) -> list[str]:
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"photo-{width}-{i}.jpg")
        make_photo(path, width, height, i)
        paths.append(path)
    return paths


# -- baselines: plain process pools doing the same outputs ----------------------------------

def pyvips_outputs(source: str, out: str) -> None:
    thumb = pyvips.Image.thumbnail(source, 128, height=128, crop="centre")
    thumb.webpsave(out + "-thumb.webp", Q=80, keep="none")
    large = pyvips.Image.thumbnail(source, 800, height=800, size="down")
    large.jpegsave(out + "-large.jpg", Q=85, keep="none", optimize_coding=True, interlace=True)


def pillow_outputs(source: str, out: str) -> None:
    from PIL import Image, ImageOps

    with Image.open(source) as image:
        image.draft("RGB", (800, 800))
        image = ImageOps.exif_transpose(image)
        large = image.copy()
        large.thumbnail((800, 800))
        large.save(out + "-large.jpg", quality=85, optimize=True, progressive=True)
        thumb = ImageOps.fit(image, (128, 128))
        thumb.save(out + "-thumb.webp", quality=80)


async def pool_rate(executor: ProcessPoolExecutor, fn, sources: list[str], out: str) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    await asyncio.gather(*(loop.run_in_executor(executor, fn, s, os.path.join(out, str(i)))
                           for i, s in enumerate(sources)))
    return len(sources) / (time.perf_counter() - started)


def spawn_pool(processes: int, threads: int | None = None) -> ProcessPoolExecutor:
    """A plain spawned pool; ``threads`` sets libvips' threads per process (default: its own)."""
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=pyvips.concurrency_set if threads else None,
                               initargs=(threads,) if threads else ())


# -- the system under test ----------------------------------------------------------------

class System:
    """The web side (a Rindle in this process) and a real worker subprocess."""

    def __init__(self, env: dict[str, str], log: pathlib.Path) -> None:
        self.env = env
        self.log = log
        self.worker: subprocess.Popen | None = None
        self.rindle = None

    async def open(self) -> None:
        os.environ.update(self.env)
        import pipeline_app

        self.rindle = pipeline_app.build()
        await self.rindle.open()
        await self.rindle.migrate()

    def start_worker(self, **extra: str) -> None:
        env = {**os.environ, **self.env, **extra, "RINDLE_APP": "pipeline_app:rindle",
               "PYTHONPATH": f"{BENCH}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.worker = subprocess.Popen([str(ARQ), "rindle_async.WorkerSettings"], env=env,
                                       cwd=BENCH, stdout=self.log.open("a"),
                                       stderr=subprocess.STDOUT)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
            self.worker = None

    async def close(self) -> None:
        self.stop_worker()
        if self.rindle is not None:
            await self.rindle.close()

    async def upload_all(self, sources: list[str], *, concurrency: int = 4) -> list[str]:
        gate = asyncio.Semaphore(concurrency)

        async def one(path: str) -> str:
            async with gate:
                asset = await self.rindle.upload("photos", path, filename="photo.jpg")
                return asset.id

        return await asyncio.gather(*(one(p) for p in sources))

    async def wait_ready(self, ids: list[str], *, timeout: float, watcher: asyncpg.Connection,
                         interval: float = 0.01) -> None:
        keys = [uuid.UUID(i) for i in ids]
        deadline = time.monotonic() + timeout
        while True:
            done = await watcher.fetchval(
                f"SELECT count(*) FROM {self.env['B_SCHEMA']}.assets"
                " WHERE id = ANY($1::uuid[]) AND state IN ('ready', 'degraded', 'quarantined')", keys)
            if done == len(keys):
                return
            if time.monotonic() > deadline or (self.worker and self.worker.poll() is not None):
                raise RuntimeError(f"{len(keys) - done} of {len(keys)} uploads not ready after "
                                   f"{timeout:.0f}s; worker log: {self.log}\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(interval)

    async def throughput(self, sources: list[str], watcher: asyncpg.Connection) -> float:
        started = time.perf_counter()
        ids = await self.upload_all(sources)
        await self.wait_ready(ids, timeout=600, watcher=watcher)
        return len(sources) / (time.perf_counter() - started)

    async def latencies(self, source: str, count: int, watcher: asyncpg.Connection) -> list[float]:
        out = []
        for _ in range(count):
            started = time.perf_counter()
            asset = await self.rindle.upload("photos", source, filename="photo.jpg")
            await self.wait_ready([asset.id], timeout=60, watcher=watcher, interval=0.001)
            out.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)  # idle again before the next one
        return out


async def idle_commands_per_s(redis_url: str, seconds: float) -> float:
    client = redis_asyncio.from_url(redis_url)
    try:
        await asyncio.sleep(2.0)  # let the last job's follow-up work settle
        before = (await client.info("stats"))["total_commands_processed"]
        await asyncio.sleep(seconds)
        after = (await client.info("stats"))["total_commands_processed"]
    finally:
        await client.aclose()
    return (after - before - 1) / seconds  # minus our own INFO


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def main() -> None:
    args = arguments(__doc__.splitlines()[0], uploads=32, rounds=3, processes=2,
                     latency_uploads=200, roundtrip_uploads=10, idle_seconds=10)
    if args.smoke:
        args.uploads, args.rounds, args.latency_uploads = 3, 1, 3
        args.roundtrip_uploads, args.idle_seconds = 2, 1
    size = (1000, 750) if args.smoke else (4000, 3000)
    cores = os.cpu_count() or 1
    report = Report("pipeline", f"Pipeline: {args.uploads} proxied uploads of {size[0]}x{size[1]} "
                    f"JPEGs -> 2 variants, real worker, {cores} cores", smoke=args.smoke)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="rindle-bench-") as folder:
        sources = make_sources(folder, args.uploads, *size)
        for sub in ("warm", "out"):
            os.makedirs(os.path.join(folder, sub))
        warm = make_sources(os.path.join(folder, "warm"), 1, *size)
        small = make_sources(folder, 1, 1200, 900)[0]
        out = os.path.join(folder, "out")
        redis = RedisProcess(folder)
        redis.start()
        env = {"B_DATABASE_URL": DATABASE_URL, "B_REDIS_URL": redis.url, "B_SCHEMA": schema,
               "B_ROOT": os.path.join(folder, "media")}
        system = System(env, pathlib.Path(folder, "worker.log"))
        watcher = await asyncpg.connect(DATABASE_URL)
        try:
            await system.open()
            figures: dict[str, list[float]] = {"pyvips": [], "pyvips_1t": [], "pillow": [],
                                               "pipeline": [], "pyvips_all": [], "defaults": [],
                                               "spare_core": []}
            pools = {"pyvips": spawn_pool(args.processes), "pillow": spawn_pool(args.processes),
                     "pyvips_1t": spawn_pool(args.processes, threads=1), "pyvips_all": spawn_pool(cores)}
            try:
                for name, executor in pools.items():  # start the processes before timing
                    fn = pillow_outputs if name == "pillow" else pyvips_outputs
                    await pool_rate(executor, fn, sources[:cores], out)
                for round_ in range(args.rounds):
                    figures["pyvips"].append(await pool_rate(pools["pyvips"], pyvips_outputs, sources, out))
                    figures["pyvips_1t"].append(await pool_rate(pools["pyvips_1t"], pyvips_outputs,
                                                                sources, out))
                    figures["pillow"].append(await pool_rate(pools["pillow"], pillow_outputs, sources, out))
                    system.start_worker(RINDLE_PROCESSES=str(args.processes))
                    await system.wait_ready(await system.upload_all(warm), timeout=120, watcher=watcher)
                    figures["pipeline"].append(await system.throughput(sources, watcher))
                    system.stop_worker()
                    if cores > 1:  # the old default, cores - 1: a core left to the web side
                        system.start_worker(RINDLE_PROCESSES=str(cores - 1))
                        await system.wait_ready(await system.upload_all(warm), timeout=120, watcher=watcher)
                        figures["spare_core"].append(await system.throughput(sources, watcher))
                        system.stop_worker()
                    figures["pyvips_all"].append(await pool_rate(pools["pyvips_all"], pyvips_outputs,
                                                                 sources, out))
                    system.start_worker()  # the library's defaults
                    await system.wait_ready(await system.upload_all(warm), timeout=120, watcher=watcher)
                    figures["defaults"].append(await system.throughput(sources, watcher))
                    if round_ < args.rounds - 1:
                        system.stop_worker()
            finally:
                for executor in pools.values():
                    executor.shutdown()
            median = {name: statistics.median(values) for name, values in figures.items() if values}
            report.row(f"raw pyvips pool, {args.processes} processes (baseline)", median["pyvips"],
                       "images/s", key="pyvips_pool_images_per_s")
            report.row("  the same, one libvips thread per process (as rindle's pool)", median["pyvips_1t"],
                       "images/s", baseline=median["pyvips"], key="pyvips_pool_one_thread_images_per_s")
            report.row(f"raw Pillow pool, {args.processes} processes", median["pillow"], "images/s",
                       baseline=median["pyvips"], key="pillow_pool_images_per_s")
            report.row(f"rindle pipeline, RINDLE_PROCESSES={args.processes}", median["pipeline"],
                       "images/s", baseline=median["pyvips"], key="pipeline_images_per_s")
            report.row(f"raw pyvips pool, {cores} processes (all cores)", median["pyvips_all"],
                       "images/s", key="pyvips_pool_all_cores_images_per_s")
            report.row("rindle pipeline, default settings", median["defaults"], "images/s",
                       baseline=median["pyvips_all"], key="pipeline_defaults_images_per_s")
            if figures["spare_core"]:
                report.row(f"rindle pipeline, RINDLE_PROCESSES={cores - 1} (cores - 1)",
                           statistics.median(figures["spare_core"]), "images/s",
                           baseline=median["pyvips_all"], key="pipeline_spare_core_images_per_s")
            report.ratio("pipeline_vs_pyvips_pool", median["pipeline"], median["pyvips"])
            report.ratio("pipeline_vs_pillow_pool", median["pipeline"], median["pillow"])
            report.ratio("pipeline_defaults_vs_pyvips_pool", median["defaults"], median["pyvips_all"])
            report.note(f"medians of {args.rounds} interleaved round(s); all rounds: "
                        + "; ".join(f"{k} {', '.join(f'{v:.1f}' for v in vs)}" for k, vs in figures.items()))

            # latency on the idle default worker (still running from the last round)
            samples = await system.latencies(small, args.latency_uploads, watcher)
            report.row(f"upload -> ready, 1200x900, p50 of {len(samples)}", 1000 * percentile(samples, 0.5),
                       "ms", key="ready_latency_p50_ms")
            report.row("upload -> ready, p99", 1000 * percentile(samples, 0.99), "ms",
                       key="ready_latency_p99_ms")
            report.row("idle worker: Redis commands", await idle_commands_per_s(redis.url, args.idle_seconds),
                       "per s", key="idle_redis_commands_per_s")
            system.stop_worker()
            await system.close()

            # database work per upload, counted on the wire
            url = urlsplit(DATABASE_URL)
            counter = WireCounter(url.hostname or "127.0.0.1", url.port or 5432)
            await counter.start()
            counted = System({**env, "B_DATABASE_URL": counter.dsn(DATABASE_URL),
                              "B_RELAY_INTERVAL": "3600"}, system.log)
            await counted.open()
            counted.start_worker()
            await counted.wait_ready(await counted.upload_all([small]), timeout=120, watcher=watcher)
            await asyncio.sleep(1.0)
            counter.reset()
            for _ in range(args.roundtrip_uploads):
                await counted.wait_ready(await counted.upload_all([small]), timeout=60, watcher=watcher,
                                         interval=0.001)
            await asyncio.sleep(0.5)  # the last job's completion
            counts = counter.reset()
            await counted.close()
            await counter.stop()
            report.row("database round trips per upload", counts.round_trips / args.roundtrip_uploads,
                       "", key="db_roundtrips_per_upload")
            report.row("database transactions per upload", counts.transactions / args.roundtrip_uploads,
                       "", key="db_transactions_per_upload")
        finally:
            await system.close()
            await watcher.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await watcher.close()
            redis.kill()
    report.finish(args.out)


if __name__ == "__main__":
    asyncio.run(main())
