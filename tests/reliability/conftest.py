"""Fixtures of the reliability suites: real ``arq rindle_async.WorkerSettings`` processes."""

from __future__ import annotations

import pytest

from ..servers import WorkerProcess


@pytest.fixture
def workers(host_env, tmp_path):
    """``workers(name, **env)`` starts a real worker logging to ``<name>.log``; all are stopped."""
    started: list[WorkerProcess] = []

    def start(name: str, **extra: str) -> WorkerProcess:
        process = WorkerProcess(host_env, tmp_path / f"{name}.log")
        process.start(**extra)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
