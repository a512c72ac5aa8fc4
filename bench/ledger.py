"""Ledger benchmark: commit -> job start through a running worker, relay throughput, no-op jobs.

Everything runs as a user runs it: a real ``arq rindle_async.WorkerSettings`` subprocess
(a private redis-server, so nothing else shares it), this process as the web side.

- Commit -> start: the time from a host's commit returning to the job's handler
  starting in the worker, when the committing process's relay sends it (its own
  commit wakes it), when another process's relay sends it (woken by NOTIFY: the
  host runs no relay), and when only the sweep finds it (no LISTEN anywhere,
  ``relay_interval=0.5``).
- Relay throughput: staging 20,000 jobs (INSERTs in the host's transactions, 100
  per transaction) and flushing them to Redis, against the same jobs sent with
  arq's ``enqueue_job`` one by one.
- No-op jobs per second through the ledger (attempt counted, run recorded, row
  deleted) against a plain arq worker running a no-op function, both ``--burst``,
  from the first job's start to the last one's end.

    .venv/bin/python bench/ledger.py [--samples 200] [--jobs 20000] [--noop-jobs 5000] [--smoke]
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import asyncpg
from arq.connections import ArqRedis
from arq.jobs import Job
from redis.asyncio import ConnectionPool

from report import DATABASE_URL, Report, arguments

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from tests.servers import RedisProcess  # noqa: E402

BENCH = pathlib.Path(__file__).resolve().parent
ARQ = pathlib.Path(sys.executable).parent / "arq"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Worker:
    def __init__(self, env: dict[str, str], log: pathlib.Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen | None = None

    def start(self, *args: str, settings: str = "rindle_async.WorkerSettings", **extra: str) -> None:
        env = {**os.environ, **self.env, **extra, "RINDLE_APP": "ledger_app:rindle",
               "PYTHONPATH": f"{BENCH}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.process = subprocess.Popen([str(ARQ), *args, settings], env=env, cwd=BENCH,
                                        stdout=self.log.open("a"), stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 600) -> None:
        assert self.process is not None
        self.process.wait(timeout=timeout)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


async def open_host(env: dict[str, str], **options: str):
    os.environ.update(env)
    for name, value in options.items():
        os.environ[name] = value
    import ledger_app

    rindle = ledger_app.build()
    await rindle.open()
    return rindle


async def commit_to_start(host, db: asyncpg.Connection, schema: str, samples: int) -> list[float]:
    """Seconds from each commit returning to its handler starting in the worker."""
    out = []
    for _ in range(samples):
        async with host.runtime.db.transaction() as uow:
            job_id = await uow.stage("stamp", {})
        committed = time.time()
        deadline = time.monotonic() + 30
        while (started := await db.fetchval(
                f"SELECT started FROM {schema}.bench_starts WHERE job = $1", job_id)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not start within 30 s")
            await asyncio.sleep(0.0005)
        out.append(started - committed)
        await asyncio.sleep(0.02)  # the worker is idle again before the next commit
    return out


async def main() -> None:
    args = arguments(__doc__.splitlines()[0], samples=200, jobs=20_000, noop_jobs=5000,
                     sweep_samples=40)
    if args.smoke:
        args.samples, args.jobs, args.noop_jobs, args.sweep_samples = 5, 200, 100, 3
    report = Report("ledger", "Ledger: commit -> start, relay throughput, no-op jobs "
                    f"({os.cpu_count()} cores, real worker, private redis-server)", smoke=args.smoke)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="rindle-bench-") as folder:
        redis = RedisProcess(folder)
        redis.start()
        env = {"B_DATABASE_URL": DATABASE_URL, "B_REDIS_URL": redis.url, "B_SCHEMA": schema,
               "B_RAW_QUEUE": f"raw-{schema}"}
        worker = Worker(env, pathlib.Path(folder, "worker.log"))
        db = await asyncpg.connect(DATABASE_URL)
        try:
            setup = await open_host(env, B_RELAY="0")
            await setup.migrate()
            await setup.close()
            await db.execute(f"CREATE TABLE {schema}.bench_starts (job bigint PRIMARY KEY,"
                             " started double precision)")
            latencies = {}
            for label, host_options, worker_options, count in (
                    ("local", {"B_RELAY": "1"}, {}, args.samples),
                    ("notify", {"B_RELAY": "0"}, {}, args.samples),
                    ("sweep", {"B_RELAY": "0"}, {"B_LISTEN": "0", "B_RELAY_INTERVAL": "0.5"},
                     args.sweep_samples)):
                host = await open_host(env, B_LISTEN="1", B_RELAY_INTERVAL="5", **host_options)
                worker.start(**{"B_RELAY": "1", "B_LISTEN": "1", "B_RELAY_INTERVAL": "5",
                                **worker_options})
                await commit_to_start(host, db, schema, 1)  # the worker is up and warm
                latencies[label] = await commit_to_start(host, db, schema, count)
                worker.stop()
                await host.close()
            names = {"local": "the committing process's relay (its commit wakes it)",
                     "notify": "another process's relay, woken by NOTIFY",
                     "sweep": "the sweep only (relay_interval 0.5 s, no LISTEN)"}
            for label, samples in latencies.items():
                for q, tag in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
                    key = {"notify": f"ledger_latency_{tag}_ms", "local": f"ledger_local_latency_{tag}_ms",
                           "sweep": f"ledger_sweep_latency_{tag}_ms"}[label]
                    report.row(f"commit -> start, {names[label]}, {tag}" if tag == "p50" else f"  {tag}",
                               1000 * percentile(samples, q), "ms", key=key, digits=2)

            # relay throughput: stage + flush vs arq enqueue_job one by one
            host = await open_host(env, B_RELAY="0")
            arq = ArqRedis(ConnectionPool.from_url(redis.url))
            try:
                started = time.perf_counter()
                for i in range(args.jobs):
                    await arq.enqueue_job("noop", i, _job_id=f"raw-{i}", _queue_name=f"raw-{schema}")
                raw = args.jobs / (time.perf_counter() - started)
                started = time.perf_counter()
                for first in range(0, args.jobs, 100):
                    async with host.runtime.db.transaction() as uow:
                        for _ in range(first, min(first + 100, args.jobs)):
                            await uow.stage("noop", {})
                staged = time.perf_counter() - started
                sent = await host.flush_jobs()
                ledger = args.jobs / (time.perf_counter() - started)
                assert sent == args.jobs, sent
            finally:
                await arq.aclose()
            report.row(f"arq enqueue_job x{args.jobs} (baseline)", raw, "jobs/s",
                       key="arq_enqueue_jobs_per_s", digits=0)
            report.row(f"ledger: stage (100 per transaction) + flush x{args.jobs}", ledger, "jobs/s",
                       baseline=raw, key="ledger_stage_flush_jobs_per_s", digits=0)
            report.ratio("ledger_flush_vs_arq_enqueue", ledger, raw)
            report.note(f"staging alone took {staged:.2f}s, the flush {args.jobs / ledger - staged:.2f}s")
            await db.execute(f"DELETE FROM {schema}.jobs")
            await db.execute(f"DELETE FROM {schema}.processing_runs")

            # no-op jobs: a plain arq worker vs the ledger through rindle's worker, both --burst
            arq = ArqRedis(ConnectionPool.from_url(redis.url))
            await arq.flushdb()
            for i in range(args.noop_jobs):
                await arq.enqueue_job("raw_noop", _job_id=f"noop-{i}", _queue_name=f"raw-{schema}")
            worker.start("--burst", settings="ledger_app.RawWorkerSettings")
            worker.wait()
            results = [await Job(f"noop-{i}", arq, _queue_name=f"raw-{schema}").result_info()
                       for i in range(args.noop_jobs)]
            await arq.aclose()
            raw_rate = args.noop_jobs / (max(r.finish_time for r in results)
                                         - min(r.start_time for r in results)).total_seconds()
            for first in range(0, args.noop_jobs, 500):
                async with host.runtime.db.transaction() as uow:
                    for _ in range(first, min(first + 500, args.noop_jobs)):
                        await uow.stage("noop", {})
            await host.flush_jobs()
            worker.start("--burst", B_RELAY="1")
            worker.wait()
            span = await db.fetchrow(f"SELECT count(*) AS n, extract(epoch FROM max(finished_at)"
                                     f" - min(started_at)) AS s FROM {schema}.processing_runs"
                                     " WHERE outcome = 'succeeded'")
            assert span["n"] == args.noop_jobs, (span["n"], worker.log.read_text()[-2000:])
            ours = args.noop_jobs / float(span["s"])
            await host.close()
            report.row("plain arq worker, no-op function (baseline)", raw_rate, "jobs/s",
                       key="arq_noop_jobs_per_s", digits=0)
            report.row("rindle worker, no-op ledger jobs", ours, "jobs/s", baseline=raw_rate,
                       key="ledger_noop_jobs_per_s", digits=0)
            report.ratio("ledger_noop_vs_arq", ours, raw_rate)
        finally:
            worker.stop()
            await db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await db.close()
            redis.kill()
    report.finish(args.out)


if __name__ == "__main__":
    asyncio.run(main())
