"""The crash run: 300 uploads (direct and proxied, local storage and S3) through a real app
process and two real workers, with SIGKILL at random moments of any of the three.

After the recovery horizon: every upload the app finished is attached and ready; no asset,
variant or session is left in a transient state; the ledger is empty; every live asset has
exactly one stored object per variant, and after ``cleanup-orphans`` no object is left that
no row refers to.  ``pytest -s`` prints the kills and the recovery times.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import random
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from rindle_async import maintenance

from ..media import stored_files
from ..servers import TESTS, WorkerProcess, children
from .outcomes import logs

UPLOADS = int(os.environ.get("RINDLE_CRASH_UPLOADS", "300"))
#: after the last kill, everything must have settled within this many seconds
HORIZON = 60.0
#: seconds a worker needs to take over a dead one's jobs: lease 10 + grace 5 + beat 2 + start
RECOVERY = 22.0
APP_KILLS = 8
TRANSIENT = {"assets": ("staged", "validating", "analyzing", "promoting", "available", "processing"),
             "variants": ("planned", "queued", "processing"),
             "upload_sessions": ("initialized", "signed", "uploading", "uploaded", "verifying")}


@pytest.fixture
def host_env(host_env, s3_endpoint, s3_bucket, monkeypatch):
    extra = {"T_S3": s3_endpoint, "T_BUCKET": s3_bucket, "T_TIMEOUT": "600"}
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    return {**host_env, **extra}


class App:
    """The crash run's web side (tests/reliability/crash_app.py) as a real process."""

    def __init__(self, env: dict[str, str], folder: pathlib.Path) -> None:
        self.env = {**os.environ, **env,
                    "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.progress = folder / "progress.txt"
        self.log = folder / "app.log"
        self.process: subprocess.Popen | None = None

    def done(self) -> set[int]:
        text = self.progress.read_text() if self.progress.exists() else ""
        return {int(line) for line in text.split()}

    def start(self) -> None:
        first = max(self.done(), default=-1) + 1
        self.process = subprocess.Popen(
            [sys.executable, str(TESTS / "reliability" / "crash_app.py"), str(first), str(UPLOADS),
             str(self.progress)], env=self.env, stdout=self.log.open("a"), stderr=subprocess.STDOUT)

    def finished(self) -> bool:
        if self.process is None or self.process.poll() is None:
            return False
        assert self.process.returncode == 0, self.log.read_text()[-5000:]
        return True


async def settled(host, deadline: float, tmp_path) -> None:
    schema = host.schema
    while True:
        counts = {table: await host.runtime.pool.fetchval(
            f"SELECT count(*) FROM {schema}.{table} WHERE state = ANY($1::text[])", list(states))
            for table, states in TRANSIENT.items() if table != "upload_sessions"}
        counts["jobs"] = await host.runtime.pool.fetchval(
            f"SELECT count(*) FROM {schema}.jobs WHERE status <> 'discarded'")
        # a direct upload whose app died before or while verifying it stays open (staged) for
        # its client to verify again, or until its deadline; nothing else may be transient
        counts["assets"] -= await host.runtime.pool.fetchval(
            f"SELECT count(*) FROM {schema}.assets a JOIN {schema}.upload_sessions s ON s.asset_id = a.id"
            " WHERE a.state = 'staged' AND s.state IN ('initialized', 'signed', 'verifying')")
        if not any(counts.values()):
            return
        if time.monotonic() > deadline:
            jobs = await host.runtime.pool.fetch(
                f"SELECT id, kind, status, attempts, sent_count, error, run_after, enqueued_at, args::text"
                f" FROM {schema}.jobs WHERE status <> 'discarded'")
            runs = await host.runtime.pool.fetch(
                f"SELECT job_id, attempt, outcome, error, worker, started_at FROM {schema}.processing_runs"
                " WHERE job_id = ANY($1::bigint[]) ORDER BY job_id, attempt", [j["id"] for j in jobs])
            raise AssertionError(f"not settled: {counts}\njobs: {[tuple(j) for j in jobs]}\n"
                                 f"runs: {[tuple(r) for r in runs]}\n{logs(tmp_path)[-20000:]}")
        await asyncio.sleep(0.25)


async def s3_keys(host) -> list[str]:
    storage = host.storages["s3"]
    return [entry.key async for entry in storage.list("")]


async def test_300_uploads_survive_random_kills_of_the_app_and_the_workers(host, host_env, tmp_path):
    rng = random.Random(int(os.environ.get("RINDLE_CRASH_SEED", "9")))
    workers = [WorkerProcess(host_env, tmp_path / f"worker-{i}.log") for i in range(2)]
    app = App(host_env, tmp_path)
    up_since: dict[WorkerProcess, float] = {}
    for worker in workers:
        worker.start()
        up_since[worker] = time.monotonic()
    app.start()
    kills: list[dict] = []
    try:
        last_kill = time.monotonic()
        while not app.finished():
            await asyncio.sleep(rng.uniform(1.5, 3.5))
            if app.finished():
                break
            # a worker is killed only while the other one has been up for a recovery's length
            # (lease + grace + a beat, and its own start): a job then never waits for a worker
            # that lives long enough to take it, and the recovery time measures the leases
            now = time.monotonic()
            eligible = [w for w, other in (workers, workers[::-1]) if now - up_since[other] > RECOVERY]
            victim = rng.choice(["app", "worker", "worker", "worker"]) if eligible else "app"
            if victim == "app" and sum(k["victim"] == "app" for k in kills) >= APP_KILLS:
                continue  # each restart of the app costs seconds of the suite's time
            if victim == "app":
                pid = app.process.pid
                app.process.kill()
                app.process.wait()
                killed_at = time.time()
                await asyncio.sleep(0.2)
                unflushed = await host.runtime.pool.fetchval(
                    f"SELECT count(*) FROM {host.schema}.jobs WHERE status = 'pending'")
                kills.append({"victim": "app", "at": killed_at, "unflushed": unflushed})
                app.start()
            else:
                # a worker in the middle of a job (waiting up to a second for one): the kill
                # that matters
                busy: list[WorkerProcess] = []
                for _ in range(20):
                    pids = {r["pid"] for r in await host.runtime.pool.fetch(
                        f"SELECT DISTINCT split_part(worker, ':', 2) AS pid FROM {host.schema}.processing_runs"
                        " WHERE outcome = 'running'")}
                    busy = [w for w in eligible if str(w.process.pid) in pids]
                    if busy:
                        break
                    await asyncio.sleep(0.05)
                worker = rng.choice(busy or eligible)
                pid = worker.process.pid
                running = await host.runtime.pool.fetch(
                    f"SELECT job_id, kind, attempt FROM {host.schema}.processing_runs"
                    " WHERE outcome = 'running' AND split_part(worker, ':', 2) = $1", str(pid))
                for child in children(pid):
                    os.kill(child, signal.SIGKILL)
                worker.stop(signal.SIGKILL)
                kills.append({"victim": "worker", "at": time.time(),
                              "running": [(r["job_id"], r["kind"], r["attempt"]) for r in running]})
                worker.start()
                up_since[worker] = time.monotonic()
            last_kill = time.monotonic()
        await settled(host, last_kill + HORIZON, tmp_path)
    finally:
        app.process.kill() if app.process and app.process.poll() is None else None
        for worker in workers:
            worker.stop()

    schema = host.schema
    done = app.done()
    assert max(done) == UPLOADS - 1  # numbers in flight at an app kill are not retried
    # every user's avatar is the last upload attached to it, and it is ready with its variants
    rows = await host.runtime.pool.fetch(
        f"SELECT a.id, a.state, a.profile, count(v.*) FILTER (WHERE v.state = 'ready') AS ready,"
        f" count(v.*) AS variants FROM {schema}.attachments t JOIN {schema}.assets a ON a.id = t.asset_id"
        f" LEFT JOIN {schema}.variants v ON v.asset_id = a.id GROUP BY a.id")
    assert len(rows) == 20
    assert all(r["state"] == "ready" and r["ready"] == r["variants"] == 4 for r in rows), \
        [tuple(r) for r in rows]
    assert await host.runtime.pool.fetchval(f"SELECT count(*) FROM {schema}.jobs") == 0
    states = {r["state"]: r["n"] for r in await host.runtime.pool.fetch(
        f"SELECT state, count(*) AS n FROM {schema}.assets GROUP BY state")}

    # incomplete uploads (the app died between initiate and verify) are aborted by the cron's
    # verb; run it as if their deadline had passed, then cleanup with no grace
    await maintenance.abort_incomplete_uploads(host.runtime, now=datetime.now(timezone.utc) + timedelta(days=2))
    await settle_purges(host, tmp_path, workers)
    report = await maintenance.cleanup_orphans(host.runtime, dry_run=False, grace=timedelta(0))
    await settle_purges(host, tmp_path, workers)
    live = await host.runtime.pool.fetch(
        f"SELECT a.id, a.profile, a.state FROM {schema}.assets a"
        f" JOIN {schema}.attachments t ON t.asset_id = a.id")
    assert await host.runtime.pool.fetchval(f"SELECT count(*) FROM {schema}.assets") == len(live) == 20
    assert await host.runtime.pool.fetchval(
        f"SELECT count(*) FROM {schema}.upload_sessions WHERE state = ANY($1::text[])",
        list(TRANSIENT["upload_sessions"])) == 0

    # exactly one object per variant (plus the original) for each live asset, nothing else
    local = [p for p in stored_files(pathlib.Path(os.environ["T_ROOT"])) if not p.name.startswith(".")]
    remote = await s3_keys(host)
    for asset in live:
        key = str(asset["id"])
        objects = ([str(p) for p in local if key in str(p)] if asset["profile"] == "photos"
                   else [k for k in remote if key in k])
        assert len(objects) == 5, (asset["id"], objects)
    assert len(local) + len(remote) == 5 * 20, (sorted(map(str, local)), sorted(remote))
    checked = await maintenance.verify_storage(host.runtime)
    assert not checked.counts.get("variants_missing") and not checked.counts.get("originals_missing")

    recoveries = await recovery_seconds(host, kills)
    print(f"\ncrash run: {UPLOADS} uploads, {len(done)} attached; {len(kills)} kills "
          f"(app {sum(k['victim'] == 'app' for k in kills)}, workers "
          f"{sum(k['victim'] == 'worker' for k in kills)}); asset states before cleanup {states}; "
          f"cleanup {report.counts}")
    print("kills mid-job: " + ", ".join(f"{kind} {n}" for kind, n in sorted(mid_job(kills).items())))
    print("app kills with committed jobs not yet sent: "
          f"{sum(1 for k in kills if k['victim'] == 'app' and k['unflushed'])}")
    if recoveries:
        print(f"worker kill -> its jobs started again: p50 {statistics.median(recoveries):.1f}s, "
              f"max {max(recoveries):.1f}s over {len(recoveries)} job(s)")
        assert max(recoveries) < 30, recoveries  # issue 9's target for a worker's death


def mid_job(kills: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kill in kills:
        for _, kind, _ in kill.get("running", []):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


async def recovery_seconds(host, kills: list[dict]) -> list[float]:
    """For each job running on a killed worker: kill -> its next attempt started."""
    out = []
    for kill in kills:
        for job_id, _, attempt in kill.get("running", []):
            started = await host.runtime.pool.fetchval(
                f"SELECT min(started_at) FROM {host.schema}.processing_runs"
                " WHERE job_id = $1 AND attempt > $2", job_id, attempt)
            if started is not None:
                out.append(started.timestamp() - kill["at"])
    return out


async def settle_purges(host, tmp_path, workers) -> None:
    """Run the purges that maintenance staged, with a worker of the run's own."""
    for worker in workers:
        worker.start()
    try:
        await settled(host, time.monotonic() + HORIZON, tmp_path)
    finally:
        for worker in workers:
            worker.stop()
