"""The host application of ``bench/ledger.py``: one no-op job kind, configured from the environment.

Loaded by the benchmark and by the real worker it starts,
``RINDLE_APP=ledger_app:rindle arq rindle_async.WorkerSettings``.  The ``stamp`` job
records the moment its handler starts, so the benchmark can measure commit -> start.
"""

from __future__ import annotations

import os
import time

from arq.connections import RedisSettings

from rindle_async import JobKind, Rindle


async def noop(job) -> None:
    """Does nothing: what is measured is the ledger and the worker around it."""


async def stamp(job) -> None:
    started = time.time()
    await job.runtime.pool.execute(f"INSERT INTO {job.runtime.schema}.bench_starts VALUES ($1, $2)",
                                  job.id, started)


def build() -> Rindle:
    return Rindle(database_url=os.environ["B_DATABASE_URL"], redis_url=os.environ["B_REDIS_URL"],
                  schema=os.environ["B_SCHEMA"], queue=f"q-{os.environ['B_SCHEMA']}",
                  relay=os.environ.get("B_RELAY", "1") == "1",
                  relay_listen=os.environ.get("B_LISTEN", "1") == "1",
                  relay_interval=float(os.environ.get("B_RELAY_INTERVAL", "5")),
                  jobs=[JobKind(name="noop", handler=noop), JobKind(name="stamp", handler=stamp)],
                  processes=1)


def __getattr__(name: str) -> Rindle:
    if name == "rindle":  # built on first use, from the environment the benchmark set
        globals()["rindle"] = built = build()
        return built
    raise AttributeError(name)


async def raw_noop(ctx: dict) -> None:
    return None


class RawWorkerSettings:
    """The baseline: a plain arq worker running a no-op function (arq's defaults otherwise)."""

    functions = [raw_noop]
    queue_name = os.environ.get("B_RAW_QUEUE", "raw")
    redis_settings = RedisSettings.from_dsn(os.environ.get("B_REDIS_URL", "redis://127.0.0.1:6379/0"))
