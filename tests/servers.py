"""Real servers the tests and benchmarks start for themselves."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TESTS = pathlib.Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (a worker's libvips processes)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        return "zombie" not in pathlib.Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


def peak_rss_mb(pid: int) -> float:
    """The peak resident set (``VmHWM``) of a live process, in MiB."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


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


class PostgresProcess:
    """A private PostgreSQL server (Debian's binaries), trust auth, on a free port of 127.0.0.1.

    Its data lives in a folder of its own owned by ``postgres`` (Debian's ``initdb`` and
    ``postgres`` refuse to run as root); :meth:`remove` stops it and deletes the folder.
    """

    BIN = pathlib.Path("/usr/lib/postgresql/15/bin")

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = pathlib.Path(tempfile.mkdtemp(prefix="rindle-pg-"))
        self.data = self.folder / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, str(self.BIN / tool), *args], check=True, cwd=self.folder,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", *args)

    def start(self) -> None:
        self._ctl("-o", f"-k {self.folder} -p {self.port} -c listen_addresses=127.0.0.1"
                        " -c fsync=off -c max_connections=50", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are told and ended; ``immediate``: a crash (recovery at start)."""
        self._ctl("-m", mode, "stop")

    def remove(self) -> None:
        try:
            self._ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def log(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")


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
