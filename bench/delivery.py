"""Delivery benchmark: signed URLs per second and ``urls()`` for a page of 50 assets.

Baselines measured in the same run: the adapter's own ``url()`` (S3: aiobotocore's
``generate_presigned_url``; local: one HMAC) against ``rindle.url()``, which adds
one row read, the state checks and the DeliverySigned event.

    .venv/bin/python bench/delivery.py [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
import uuid

import asyncpg
import pyvips
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

from rindle_async import LocalStorage, Profile, Rindle, S3Storage, Variant

DATABASE_URL = os.environ.get("RINDLE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RINDLE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


async def rate(n: int, make) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await make()
    return n / (time.perf_counter() - started)


async def bench_storage(name: str, storage, n: int, schema: str) -> None:
    profile = Profile(name="avatar", storage=name,
                      variants={"thumb": Variant(width=64, height=64)})
    async with Rindle(database_url=DATABASE_URL, redis_url=REDIS_URL, schema=schema,
                      storages={name: storage}, profiles=[profile], relay=False) as rindle:
        await rindle.migrate()
        body = pyvips.Image.black(32, 32).pngsave_buffer()
        assets = [await rindle.upload("avatar", body) for _ in range(50)]
        async with rindle.db.transaction() as uow:  # promote by hand: only delivery is measured
            from rindle_async import states
            for asset in assets:
                for a, b in (("validating", "analyzing"), ("analyzing", "promoting"),
                             ("promoting", "available"), ("available", "ready")):
                    await states.transition(uow, states.ASSET, asset.id, a, b)
        key = await rindle.pool.fetchval(f"SELECT storage_key FROM {schema}.assets LIMIT 1")
        base = await rate(n, lambda: storage.url(key, expires_in=300, content_type="image/png"))
        one = await rate(n, lambda: rindle.url(assets[0].id))
        ids = [a.id for a in assets]
        pages = max(20, n // 50)
        page = await rate(pages, lambda: rindle.urls(ids))
        print(f"{name}:")
        print(f"  adapter url() (baseline)        {base:9.0f} URLs/s")
        print(f"  rindle.url()                    {one:9.0f} URLs/s   x{one / base:5.2f}")
        print(f"  rindle.urls(50 ids)             {page:9.0f} pages/s  = {page * 50:7.0f} URLs/s"
              f"   x{page * 50 / base:5.2f}   ({1000 / page:.2f} ms per page)")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        await s3.create_bucket(Bucket="bench-media")
    schemas = [f"bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        with tempfile.TemporaryDirectory() as root:
            local = LocalStorage(root=root, base_url="http://127.0.0.1/rindle", secret="b" * 32)
            await bench_storage("local", local, args.n, schemas[0])
        s3_storage = S3Storage(bucket="bench-media", endpoint_url=endpoint, path_style=True)
        await bench_storage("s3", s3_storage, args.n, schemas[1])
    finally:
        conn = await asyncpg.connect(DATABASE_URL)
        for schema in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
