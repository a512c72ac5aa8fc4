"""Fixtures on the real services: a database and a Redis db per xdist worker,
a fresh schema and arq queue per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as redis_asyncio
from arq.connections import RedisSettings
from arq.worker import Worker

from rindle_async import Rindle

from .servers import RedisProcess

BASE_DATABASE_URL = os.environ.get("RINDLE_TEST_DATABASE_URL",
                                   "postgresql://postgres@127.0.0.1:5432/postgres")
BASE_REDIS_URL = os.environ.get("RINDLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _worker_number(worker_id: str) -> int:
    return 0 if worker_id == "master" else int(worker_id.removeprefix("gw"))


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def database_url(worker_id: str, testrun_uid: str) -> Iterator[str]:
    """A database of this test process's own, created fresh and dropped at the end."""
    name = f"rindle_test_{testrun_uid[:8]}_{_worker_number(worker_id)}"

    async def run(*statements: str) -> None:
        conn = await asyncpg.connect(BASE_DATABASE_URL)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"))
    yield _with_path(BASE_DATABASE_URL, f"/{name}")
    asyncio.run(run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def redis_url(worker_id: str) -> str:
    """A Redis database for this test process (tests keep to their own queue and keys)."""
    return _with_path(BASE_REDIS_URL, f"/{1 + _worker_number(worker_id) % 15}")


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisProcess]:
    server = RedisProcess(str(tmp_path))
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def db(database_url: str, schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database; drops the test's schema afterwards."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.close()


@pytest.fixture
async def make_rindle(database_url: str, redis_url: str, schema: str, db: asyncpg.Connection
                      ) -> AsyncIterator[Callable[..., Rindle]]:
    """Build opened Rindle objects on the test's schema and queue; all are closed afterwards."""
    opened: list[Rindle] = []

    async def make(*, migrate: bool = True, **options) -> Rindle:
        options.setdefault("database_url", database_url)
        options.setdefault("redis_url", redis_url)
        options.setdefault("schema", schema)
        options.setdefault("queue", f"q-{schema}")
        options.setdefault("pool_size", 4)
        rindle = Rindle(**options)
        await rindle.open()
        opened.append(rindle)
        if migrate:
            await rindle.migrate()
        return rindle

    yield make
    for rindle in reversed(opened):
        await rindle.close()


async def run_worker(rindle: Rindle, redis_url: str, *, queue: str | None = None,
                     max_jobs: int | None = None) -> Worker:
    """Run a real arq burst worker over ``rindle``'s jobs until its queue is empty."""
    worker = Worker(functions=rindle.arq_functions(), redis_settings=RedisSettings.from_dsn(redis_url),
                    queue_name=queue or rindle.config.ledger.queue, burst=True, poll_delay=0.05,
                    handle_signals=False, ctx={"rindle": rindle}, keep_result=60,
                    max_burst_jobs=-1 if max_jobs is None else max_jobs)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


@pytest.fixture
def host_env(tmp_path, database_url, redis_url, schema, monkeypatch) -> dict[str, str]:
    """The environment of ``tests/hostapp.py``, set in this process and returned for subprocesses."""
    env = {"T_ROOT": str(tmp_path / "media"), "T_DATABASE_URL": database_url,
           "T_REDIS_URL": redis_url, "T_SCHEMA": schema}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
async def host(host_env, db) -> AsyncIterator[Rindle]:
    """The host app's Rindle as its web process has it (relay on), migrated."""
    from . import hostapp

    rindle = hostapp.build()
    await rindle.open()
    await rindle.migrate()
    yield rindle
    await rindle.close()


async def drain(rindle: Rindle, redis_url: str, *, rounds: int = 20) -> None:
    """Relay and run jobs until the ledger has nothing pending (jobs stage more jobs)."""
    for _ in range(rounds):
        await rindle.flush_jobs()
        summary = await rindle.ledger_summary()
        if summary.pending == 0 and summary.enqueued == 0:
            return
        await run_worker(rindle, redis_url)
    raise AssertionError(f"the ledger did not drain in {rounds} rounds: {await rindle.ledger_summary()}")


from .media import local_storage, media_rindle, s3_bucket, s3_endpoint, s3_storage  # noqa: E402,F401
