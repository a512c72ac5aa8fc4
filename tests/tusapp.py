"""A host web app serving tus uploads at /files/, run as its own process by tests/test_tus.py.

``python tusapp.py PORT`` with the environment of ``hostapp`` plus ``T_FRAMEWORK``
(starlette or aiohttp) and ``T_PROFILE`` (photos: local storage; uploads: S3).  The caller
names its user with an ``X-User`` header (none: 403); a finished upload is attached to
that user's ``tus`` slot.
"""

from __future__ import annotations

import os
import sys

import hostapp

from rindle_async import Asset

rindle = hostapp.build()
PROFILE = os.environ.get("T_PROFILE", "photos")


async def attach(asset: Asset, owner: str | None) -> None:
    await rindle.attach(asset.id, owner_type="user", owner_id=owner or "", slot="tus")


def starlette_app():
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import Mount

    from rindle_async.contrib.starlette import tus_routes

    async def user(request):
        return request.headers.get("x-user")

    @asynccontextmanager
    async def lifespan(app):
        async with rindle:
            yield

    return Starlette(routes=[Mount("/files", app=tus_routes(rindle, profile=PROFILE, authorize=user,
                                                            on_complete=attach))], lifespan=lifespan)


def aiohttp_app():
    from aiohttp import web

    from rindle_async.contrib.aiohttp import add_tus_routes

    async def user(request):
        return request.headers.get("X-User")

    async def context(app):
        async with rindle:
            yield

    app = web.Application()
    app.cleanup_ctx.append(context)
    add_tus_routes(app, rindle, profile=PROFILE, authorize=user, on_complete=attach)
    return app


if __name__ == "__main__":
    port = int(sys.argv[1])
    if os.environ.get("T_FRAMEWORK") == "aiohttp":
        from aiohttp import web

        web.run_app(aiohttp_app(), host="127.0.0.1", port=port, print=None)
    else:
        import uvicorn

        uvicorn.run(starlette_app(), host="127.0.0.1", port=port, log_level="warning")
