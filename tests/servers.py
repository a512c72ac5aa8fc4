"""Real servers the tests and benchmarks start for themselves."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

TESTS = pathlib.Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisProcess:
    """A private redis-server that keeps nothing on disk: killing it loses everything."""

    def __init__(self, directory: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.directory], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class WorkerProcess:
    """A real ``arq rindle_async.WorkerSettings`` serving ``tests/hostapp.py``, logging to ``log``."""

    def __init__(self, env: dict[str, str], log: pathlib.Path) -> None:
        self.env = {**os.environ, **env, "RINDLE_APP": "hostapp:rindle",
                    "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, **extra: str) -> None:
        self.process = subprocess.Popen(
            [str(pathlib.Path(sys.executable).parent / "arq"), "rindle_async.WorkerSettings"],
            env={**self.env, **extra}, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
            cwd=TESTS)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
