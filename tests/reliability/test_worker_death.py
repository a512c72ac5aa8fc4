"""Real ``arq`` workers dying: a SIGKILLed worker's jobs run again within seconds however
long their timeouts are, and a long job on a live worker is never taken by another."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import time

import pytest

from ..media import jpeg
from ..servers import children, running
from .outcomes import all_ready, logs, one_object_per_variant

#: what issue 9 promises: a dead worker's jobs start again within this many seconds
RECOVERY_SECONDS = 30


@pytest.fixture
def host_env(host_env, monkeypatch):
    """Job timeouts of ten minutes: arq's own lease on a job would be about 20 minutes."""
    monkeypatch.setenv("T_TIMEOUT", "600")
    return {**host_env, "T_TIMEOUT": "600"}


async def test_a_sigkilled_workers_jobs_run_again_within_seconds(host, workers, tmp_path):
    doomed = workers("doomed", T_SLOW_FIRST_PUT="1")
    marker = pathlib.Path(os.environ["T_ROOT"]) / ".first-variant-put"
    assets = [await host.upload("photos", jpeg(300, 200), filename=f"{i}.jpg") for i in range(3)]
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, logs(tmp_path)
        await asyncio.sleep(0.05)
    pool = children(doomed.process.pid)
    assert pool  # the libvips processes: killed with their worker, as by the OOM killer
    doomed_pid = doomed.process.pid
    for pid in pool:
        os.kill(pid, signal.SIGKILL)
    doomed.stop(signal.SIGKILL)  # in the middle of storing a variant
    killed_at = time.monotonic()
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in pool):
        assert time.monotonic() < deadline, "the dead worker's pool processes are still running"
        await asyncio.sleep(0.1)
    workers("successor")

    ready_at = await all_ready(host, [a.id for a in assets], RECOVERY_SECONDS + 30, tmp_path)
    recovery = ready_at - killed_at
    print(f"kill -> every asset ready: {recovery:.1f}s")  # RELIABILITY.md reports it (pytest -s)
    assert recovery < RECOVERY_SECONDS, f"recovered in {recovery:.1f}s\n{logs(tmp_path)}"
    assert "stopped renewing its lease" in (tmp_path / "successor.log").read_text()

    runs = await host.runtime.pool.fetch(
        f"SELECT job_id, attempt, outcome, error, worker FROM {host.schema}.processing_runs"
        " WHERE kind = 'process_variant' ORDER BY job_id, attempt")
    abandoned = [r for r in runs if r["outcome"] == "abandoned"]
    assert abandoned, [tuple(r) for r in runs]  # the render in flight when the worker died
    for r in abandoned:
        assert r["worker"].split(":")[1] == str(doomed_pid)
        assert r["error"] == (f"its worker {r['worker']} stopped before the attempt finished "
                              "(killed, crashed or lost its lease)")
        assert (r["job_id"], r["attempt"] + 1, "succeeded") in [
            (x["job_id"], x["attempt"], x["outcome"]) for x in runs]
    assert await host.runtime.pool.fetchval(f"SELECT count(*) FROM {host.schema}.jobs") == 0
    await one_object_per_variant(host, "local")  # reruns wrote the same keys


async def test_a_job_longer_than_the_lease_is_never_taken_from_its_live_worker(host, workers, tmp_path):
    slow = {"T_SLOW_VARIANT_PUT": "20"}  # the first variant upload takes 20 s; a lease 15 s
    first = workers("first", **slow)
    marker = pathlib.Path(os.environ["T_ROOT"]) / ".first-variant-put"
    asset = await host.upload("photos", jpeg(300, 200), filename="slow.jpg")
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, logs(tmp_path)
        await asyncio.sleep(0.05)
    workers("second", **slow)  # idle, and looking for dead workers' jobs at every beat

    await all_ready(host, [asset.id], 90, tmp_path)
    runs = await host.runtime.pool.fetch(
        f"SELECT kind, attempt, outcome, worker FROM {host.schema}.processing_runs"
        " WHERE kind = 'process_variant'")
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "succeeded")]
    assert runs[0]["worker"].split(":")[1] == str(first.process.pid)
    assert "stopped renewing its lease" not in logs(tmp_path)
