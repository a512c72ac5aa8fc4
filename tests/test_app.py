"""The Rindle facade: configuration errors, opening and closing, host transactions."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from arq.constants import job_key_prefix

from rindle_async import (
    ConfigurationError,
    LocalStorage,
    JobKind,
    Profile,
    Rindle,
    RindleError,
    TransactionError,
)


async def noop(job):
    return None


NOOP = JobKind(name="noop", handler=noop)


def test_configuration_errors_name_the_problem():
    with pytest.raises(ConfigurationError, match="exactly one of database_url= or pool="):
        Rindle()
    with pytest.raises(ConfigurationError, match="profile 'avatar' uses storage 'local', but storages= has none"):
        Rindle(database_url="postgresql://x", profiles=[Profile(name="avatar")])
    with pytest.raises(ConfigurationError, match="schema='Bad-Name' is not a valid schema name"):
        Rindle(database_url="postgresql://x", schema="Bad-Name")
    with pytest.raises(ConfigurationError, match="job kind 'noop' is registered twice"):
        Rindle(database_url="postgresql://x", jobs=[NOOP, NOOP])
    with pytest.raises(ConfigurationError, match=r"storages\['local'\] is object, not a storage adapter"):
        Rindle(database_url="postgresql://x", storages={"local": object()})
    storage = LocalStorage(root="/tmp/rindle-test-config", base_url="http://x/rindle", secret="s" * 32)
    with pytest.raises(ConfigurationError, match="two profiles are named .avatar."):
        Rindle(database_url="postgresql://x", storages={"local": storage},
               profiles=[Profile(name="avatar"), Profile(name="avatar")])
    with pytest.raises(ConfigurationError, match=r"job_settings names unknown job kinds \['render'\]"):
        Rindle(database_url="postgresql://x", job_settings={"render": {"tries": 2}})


async def test_using_a_closed_rindle_says_how_to_open_it():
    rindle = Rindle(database_url="postgresql://x")
    with pytest.raises(RindleError, match="Rindle is not open; use `async with rindle:`"):
        async with rindle.transaction():
            pass


async def test_host_transaction_flushes_jobs_on_commit_and_nothing_on_rollback(
        make_rindle, db, schema, redis):
    rindle = await make_rindle(jobs=[NOOP], relay_listen=False, relay_interval=3600)
    await db.execute(f"CREATE TABLE {schema}.users (id int PRIMARY KEY, name text)")
    with pytest.raises(RuntimeError):
        async with rindle.transaction() as conn:
            await conn.execute(f"INSERT INTO {schema}.users VALUES (1, 'ann')")
            async with rindle.runtime.db.transaction(conn) as uow:
                await uow.stage("noop", {})
            raise RuntimeError("host failure")
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.users") == 0
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.jobs") == 0

    started = time.monotonic()
    async with rindle.transaction() as conn:
        await conn.execute(f"INSERT INTO {schema}.users VALUES (1, 'ann')")
        async with rindle.runtime.db.transaction(conn) as uow:
            job_id = await uow.stage("noop", {})
    key = job_key_prefix + rindle.config.ledger.job_id(job_id, "noop")
    while not await redis.exists(key):
        assert time.monotonic() - started < 2, "a local commit should wake the relay at once"
        await asyncio.sleep(0.005)
    assert await db.fetchval(f"SELECT name FROM {schema}.users") == "ann"


async def test_the_hosts_own_connection_and_pool(make_rindle, database_url, db, schema):
    host_pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        rindle = await make_rindle(pool=host_pool, database_url=None, jobs=[NOOP], relay=False)
        async with host_pool.acquire() as conn:
            async with rindle.transaction(conn) as same:
                assert same is conn and conn.is_in_transaction()
                async with rindle.runtime.db.transaction(conn) as uow:
                    await uow.stage("noop", {})
            assert not conn.is_in_transaction()
            async with conn.transaction():
                with pytest.raises(TransactionError, match="open it with `async with rindle.transaction"):
                    async with rindle.runtime.db.transaction(conn):
                        pass
        assert await db.fetchval(f"SELECT count(*) FROM {schema}.jobs") == 1
    finally:
        await rindle.close()
        # the host's pool stays open: Rindle closes only what it opened
        assert await host_pool.fetchval("SELECT 1") == 1
        await host_pool.close()


async def test_open_twice_is_refused(make_rindle):
    rindle = await make_rindle(relay=False)
    with pytest.raises(RindleError, match="already open"):
        await rindle.open()


async def test_a_failed_open_closes_what_it_opened_and_can_be_retried(database_url, redis_url,
                                                                     schema, tmp_path, db):
    class FlakyStorage(LocalStorage):
        failures = 1

        async def open(self) -> None:
            if FlakyStorage.failures:
                FlakyStorage.failures -= 1
                raise OSError("the volume is not mounted yet")
            await super().open()

    rindle = Rindle(database_url=database_url, redis_url=redis_url, schema=schema, relay=True,
                    storages={"local": FlakyStorage(root=tmp_path, base_url="http://x/r",
                                                    secret="s" * 32)})
    with pytest.raises(OSError, match="not mounted"):
        await rindle.open()
    assert not rindle.is_open
    await rindle.open()  # a retry works: nothing was left half open
    try:
        await rindle.migrate()
        assert rindle.is_open
    finally:
        await rindle.close()


async def test_a_host_transaction_leaves_no_session_state_in_the_pool(make_rindle):
    rindle = await make_rindle(pool_size=1, relay=False)  # one connection: the next user gets it
    async with rindle.transaction() as conn:
        await conn.execute("SET application_name = 'left-behind'")
        await conn.execute("SELECT pg_advisory_lock(4242)")
    assert await rindle.runtime.pool.fetchval("SHOW application_name") != "left-behind"
    assert await rindle.runtime.pool.fetchval("SELECT pg_try_advisory_lock(4242)")  # the lock was freed


async def test_connections_are_named_in_pg_stat_activity(make_rindle, database_url, db):
    rindle = await make_rindle(relay=True)
    assert await rindle.runtime.pool.fetchval("SHOW application_name") == "rindle_async"
    names = set()
    deadline = time.monotonic() + 10
    while "rindle_async listener" not in names:  # the relay's LISTEN connection
        assert time.monotonic() < deadline, names
        names = {r["application_name"] for r in await db.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")}
        await asyncio.sleep(0.05)
    named = await make_rindle(application_name="shop-media", relay=False)
    assert await named.runtime.pool.fetchval("SHOW application_name") == "shop-media"
    own = await make_rindle(database_url=f"{database_url}?application_name=shop", relay=False)
    assert await own.runtime.pool.fetchval("SHOW application_name") == "shop"  # the DSN's wins
