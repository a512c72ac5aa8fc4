"""PostgreSQL connections cut under load and PostgreSQL restarted under a busy worker.

Connections are cut with ``pg_terminate_backend`` from a superuser connection, found in
``pg_stat_activity`` by the ``application_name`` rindle_async gives them; the server is a
private one of this module's own (Debian's ``initdb`` into a temporary folder), so
stopping it touches nothing else.  Pools reconnect, interrupted jobs are retried, every
upload ends ready.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time

import asyncpg
import pytest

from ..media import jpeg
from ..servers import PostgresProcess
from .outcomes import all_ready, logs, nothing_left_behind, one_object_per_variant

#: how long the server stays down when it is restarted
DOWN_SECONDS = 3.0


@pytest.fixture(scope="module")
def private_postgres():
    server = PostgresProcess()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def host_env(host_env, private_postgres, monkeypatch):
    """The host app and its workers on the private server."""
    monkeypatch.setenv("T_DATABASE_URL", private_postgres.url)
    return {**host_env, "T_DATABASE_URL": private_postgres.url}


@pytest.fixture
async def superuser(private_postgres):
    conn = await asyncpg.connect(private_postgres.url)
    yield conn
    await conn.close()


async def backends(superuser, application_name: str, condition: str = "true") -> list[int]:
    """The server pids of the connections named ``application_name`` (and matching ``condition``)."""
    rows = await superuser.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()"
        f" AND {condition}", application_name)
    return [r["pid"] for r in rows]


async def eventually(find, timeout: float, what: str, tmp_path) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (found := await find()):
        assert time.monotonic() < deadline, f"no {what} after {timeout}s\n{logs(tmp_path)}"
        await asyncio.sleep(0.05)
    return found


async def terminate(superuser, pids: list[int]) -> None:
    await superuser.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)


async def first_variant_put(tmp_path) -> None:
    marker = pathlib.Path(os.environ["T_ROOT"]) / ".first-variant-put"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, logs(tmp_path)
        await asyncio.sleep(0.05)


async def test_the_hosts_pool_and_relay_listener_cut_under_load(host, superuser, workers, tmp_path):
    worker = workers("worker")
    listener = await eventually(lambda: backends(superuser, "rindle_async listener"), 10,
                                "LISTEN connection of the host's relay", tmp_path)
    ids = []
    for i in range(8):
        ids.append((await host.upload("photos", jpeg(300, 200), filename=f"{i}.jpg")).id)
        # right after a commit: the relay is flushing it on one of these
        await terminate(superuser, await backends(superuser, "rindle_async listener" if i % 2
                                                  else "rindle_async"))
        await asyncio.sleep(0.2)  # the host's next request comes later than its loop notices

    await all_ready(host, ids, 60, tmp_path)
    assert worker.process.poll() is None, logs(tmp_path)
    relistened = await eventually(lambda: backends(superuser, "rindle_async listener"), 10,
                                  "LISTEN connection after the cuts", tmp_path)
    assert set(relistened).isdisjoint(listener)
    # no connection was lost to the pool: all but the listener's can be taken at once
    taken = [await asyncio.wait_for(host.runtime.pool.acquire(), 5) for _ in range(host.runtime.pool.get_max_size() - 1)]
    for conn in taken:
        await host.runtime.pool.release(conn)
    await nothing_left_behind(host)
    await one_object_per_variant(host, "local")


async def test_a_workers_connections_cut_mid_transaction(host, superuser, private_postgres, workers,
                                                         tmp_path):
    worker = workers("worker", T_SLOW_VARIANT_PUT="2")
    ids = [(await host.upload("photos", jpeg(300, 200), filename=f"{i}.jpg")).id for i in range(3)]
    await first_variant_put(tmp_path)
    locker = await asyncpg.connect(private_postgres.url)  # pg_stat_activity is read outside its transaction
    async with locker.transaction():
        # the render being stored marks its variants ready under this lock: it waits for it,
        # inside its transaction, and is cut there
        await locker.execute(
            f"SELECT 1 FROM {host.schema}.variants WHERE state = 'processing' FOR UPDATE")
        blocked = await eventually(lambda: backends(
            superuser, "rindle_async worker", "wait_event_type = 'Lock' AND xact_start IS NOT NULL"),
            20, "worker transaction waiting for the lock", tmp_path)
        others = await backends(superuser, "rindle_async worker")
        listener = await backends(superuser, "rindle_async worker listener")
        await terminate(superuser, blocked + others + listener)
    await locker.close()

    await all_ready(host, ids, 60, tmp_path)
    assert worker.process.poll() is None, logs(tmp_path)
    runs = await host.runtime.pool.fetch(
        f"SELECT job_id, attempt, outcome, error FROM {host.schema}.processing_runs"
        " WHERE kind = 'process_variant' ORDER BY job_id, attempt")
    cut = [r for r in runs if r["outcome"] == "retrying"]
    assert cut and all("terminat" in r["error"] for r in cut), [tuple(r) for r in runs]
    for r in cut:  # each interrupted attempt was followed by one that succeeded
        assert (r["job_id"], "succeeded") in [(x["job_id"], x["outcome"]) for x in runs]
    await nothing_left_behind(host)
    await one_object_per_variant(host, "local")  # the retry stored the same keys again


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_worker_rides_out_a_postgresql_restart(mode, host, private_postgres, workers,
                                                       tmp_path):
    worker = workers("worker", T_SLOW_VARIANT_PUT="2")
    ids = [(await host.upload("photos", jpeg(300, 200), filename=f"{i}.jpg")).id for i in range(4)]
    await first_variant_put(tmp_path)  # renders in flight, promotions queued behind them
    await asyncio.to_thread(private_postgres.stop, mode)
    await asyncio.sleep(DOWN_SECONDS)
    await asyncio.to_thread(private_postgres.start)
    restarted_at = time.monotonic()
    ids += [(await host.upload("photos", jpeg(300, 200), filename=f"after-{i}.jpg")).id
            for i in range(2)]

    ready_at = await all_ready(host, ids, 60, tmp_path)
    print(f"pg_ctl stop -m {mode}, {DOWN_SECONDS:g}s down, start -> every upload ready: "
          f"{ready_at - restarted_at:.1f}s after the start")  # RELIABILITY.md reports it (pytest -s)
    assert worker.process.poll() is None, logs(tmp_path)
    await nothing_left_behind(host)
    await one_object_per_variant(host, "local")
