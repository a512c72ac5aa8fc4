"""Poison images under a real worker: one whose render kills its process, one whose render
hangs past the render timeout (``tests/hostapp.py`` renders them with ``render_or_die``).
The asset ends degraded with a reason that says what happened, the worker stays up and
renders other uploads meanwhile, and no render process is left behind."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time

import pytest

from ..hostapp import CRASH_WIDTH, HANG_WIDTH
from ..media import jpeg
from ..servers import children
from .outcomes import all_final, logs, nothing_left_behind, one_object_per_variant

#: job timeout of the host app here (a render may run 90% of it: the rest is the margin for
#: the job's own steps, so a loaded machine needs seconds), and tries per job
TIMEOUT, TRIES = "8", 3


@pytest.fixture
def host_env(host_env, monkeypatch):
    poisoned = {"T_POISON": "1", "T_TIMEOUT": TIMEOUT, "T_TRIES": str(TRIES)}
    for name, value in poisoned.items():
        monkeypatch.setenv(name, value)
    return {**host_env, **poisoned}


def poisoned_processes() -> list[int]:
    """The pids of the render processes that met a poison image (each left a note)."""
    return [int(p.name.rpartition("-")[2])
            for p in pathlib.Path(os.environ["T_ROOT"]).glob(".poisoned-*")]


@pytest.mark.parametrize(("width", "reason"), [
    (CRASH_WIDTH, "the render process died (exit code 1)"),
    (HANG_WIDTH, f"ran longer than {float(TIMEOUT) * 0.9:g}s; its process was killed"),
], ids=["crash", "hang"])
async def test_a_poison_image_degrades_its_asset_and_nothing_else(width, reason, host, workers,
                                                                  tmp_path):
    worker = workers("worker")
    poison = await host.upload("photos", jpeg(width, 200), filename="poison.jpg")
    good = [(await host.upload("photos", jpeg(300, 200), filename=f"{i}.jpg")).id for i in range(2)]

    states = await all_final(host, [poison.id, *good], 90, tmp_path)
    assert states == {poison.id: "degraded", **{asset_id: "ready" for asset_id in good}}, logs(tmp_path)
    assert worker.process.poll() is None, logs(tmp_path)
    asset = await host.get_asset(poison.id)
    for variant in asset.variants.values():
        assert variant.state == "failed" and reason in variant.reason, (variant, logs(tmp_path))
    changed = {r["id"]: r["state_changed_at"] for r in await host.runtime.pool.fetch(
        f"SELECT id::text, state_changed_at FROM {host.schema}.assets")}
    assert all(changed[asset_id] < changed[poison.id] for asset_id in good)  # served meanwhile
    runs = await host.runtime.pool.fetch(
        f"SELECT attempt, outcome, error FROM {host.schema}.processing_runs"
        " WHERE asset_id = $1 AND kind = 'process_variant' ORDER BY attempt", poison.id)
    assert [r["outcome"] for r in runs] == ["retrying"] * (TRIES - 1) + ["failed"], [tuple(r) for r in runs]
    assert all(reason in r["error"] for r in runs), [tuple(r) for r in runs]
    discarded = await host.runtime.pool.fetch(f"SELECT kind, error FROM {host.schema}.jobs")
    assert [(r["kind"], reason in r["error"]) for r in discarded] == [("process_variant", True)]
    await nothing_left_behind(host)
    await one_object_per_variant(host, "local")

    met = poisoned_processes()
    assert len(met) == TRIES, met  # each try had a fresh process
    deadline = time.monotonic() + 10
    while left := [pid for pid in met if pathlib.Path(f"/proc/{pid}").exists()]:  # zombies too
        assert time.monotonic() < deadline, f"render processes left behind: {left}"
        await asyncio.sleep(0.1)
    assert len(children(worker.process.pid)) <= 2  # its render process and its analysis process
