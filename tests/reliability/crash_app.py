"""The web side of the crash run: a real process uploading and attaching, killed at random.

    python tests/reliability/crash_app.py FIRST LAST PROGRESS

Uploads numbers FIRST..LAST-1, four at a time, rotating through the four ways a
host receives a file: proxied to local storage, direct to local storage (the PUT
through the library's Starlette routes), proxied to S3, direct to S3 (a presigned
PUT to the S3 server). Each upload is then attached to one of twenty users'
``avatar`` slot, replacing (and so purging) the one before. A line ``N`` is
appended to PROGRESS once upload N is attached. Configured like tests/hostapp.py,
from the environment, with its directory on PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import sys

import httpx
import pyvips
from starlette.applications import Starlette
from starlette.routing import Mount

import hostapp
from rindle_async.contrib.starlette import local_storage_routes

CONCURRENCY = 4
USERS = 20


def photo(n: int) -> bytes:
    return (pyvips.Image.black(64 + n % 7, 48).new_from_image([n % 256, 120, 200 - n % 200])
            .jpegsave_buffer(Q=90))


async def upload_one(rindle, n: int, local: httpx.AsyncClient, s3: httpx.AsyncClient) -> str:
    data, name = photo(n), f"photo-{n}.jpg"
    profile = "photos" if n % 4 < 2 else "uploads"
    if n % 2 == 0:  # proxied
        asset = await rindle.upload(profile, data, filename=name, content_type="image/jpeg")
        return asset.id
    ticket = await rindle.initiate_upload(profile, filename=name, content_type="image/jpeg",
                                          byte_size=len(data))
    client = local if profile == "photos" else s3
    response = await client.request(ticket.method, ticket.url, headers=ticket.headers, content=data)
    response.raise_for_status()
    return (await rindle.verify_upload(ticket.session_id)).id


async def main(first: int, last: int, progress: str) -> None:
    rindle = hostapp.build()
    await rindle.open()
    routes = Starlette(routes=[Mount("/rindle", app=local_storage_routes(rindle))])
    numbers = iter(range(first, last))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=routes)) as local, \
            httpx.AsyncClient(timeout=30) as s3:

        async def lane() -> None:
            for n in numbers:
                asset_id = await upload_one(rindle, n, local, s3)
                await rindle.attach(asset_id, owner_type="user", owner_id=str(n % USERS), slot="avatar")
                with open(progress, "a") as out:
                    out.write(f"{n}\n")

        await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
    await rindle.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
