"""The aiohttp example: avatars uploaded straight to storage, variants rendered by a worker.

Run from this folder (or put it on PYTHONPATH), beside a worker with the same environment:

    rindle-async --app media:rindle migrate
    RINDLE_APP=media:rindle arq rindle_async.WorkerSettings
    python app.py          # or: python -m aiohttp.web -H 127.0.0.1 -P 8000 app:create_app

``python scripts/demo.py --framework aiohttp`` at the repository root does all of it on
embedded PostgreSQL and Redis.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from rindle_async.contrib.aiohttp import add_companion_routes, add_local_storage_routes, add_tus_routes

import avatars
from media import LOCAL_PREFIX, STORAGE, avatar, rindle

#: The pages, shared with the Starlette example; the Uppy bundle that scripts/uppy.sh builds.
STATIC = Path(__file__).resolve().parent.parent / "static"
INDEX, UPPY_PAGE = STATIC / "index.html", STATIC / "uppy.html"
#: The Uppy bundles scripts/uppy.sh builds, by the path the pages load them from.
UPPY_CACHE = STATIC.parent.parent / ".cache" / "uppy"
UPPY_BUNDLES = {"/uppy.js": "text/javascript", "/uppy-dashboard.js": "text/javascript",
                "/uppy-dashboard.css": "text/css"}


def current_user(request: web.Request) -> str:
    # DEMO ONLY, stands in for the host's own authentication: the caller names its user
    # with an X-Demo-User header or a demo_user cookie, and anyone can claim any id.
    return request.headers.get("X-Demo-User") or request.cookies.get("demo_user") or "demo"


def reply(answer: avatars.Reply) -> web.Response:
    status, body = answer
    return web.json_response(body, status=status)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(INDEX, headers={"Cache-Control": "no-store"})


async def uppy_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(UPPY_PAGE, headers={"Cache-Control": "no-store"})


async def uppy_bundle(request: web.Request) -> web.StreamResponse:
    bundle = UPPY_CACHE / request.path.lstrip("/")
    if not bundle.exists():
        return web.Response(text="no Uppy bundle: run scripts/uppy.sh (make services does)", status=404)
    return web.FileResponse(bundle, headers={"Content-Type": UPPY_BUNDLES[request.path]})


async def authorize(request: web.Request) -> str | None:
    """Who may upload through the Companion routes: here every (demo) user; None refuses with 403."""
    return current_user(request)


async def attach_upload(request: web.Request) -> web.Response:
    return reply(await avatars.attach_upload(current_user(request), await request.read()))


async def show(request: web.Request) -> web.Response:
    return reply(await avatars.show(current_user(request)))


async def start_upload(request: web.Request) -> web.Response:
    return reply(await avatars.start_upload(current_user(request), await request.read()))


async def complete_upload(request: web.Request) -> web.Response:
    return reply(await avatars.complete_upload(current_user(request), request.match_info["session_id"]))


async def tus_user(request: web.Request) -> str:
    return current_user(request)  # whom a tus upload at /files/ is for


async def remove(request: web.Request) -> web.Response:
    return reply(await avatars.remove(current_user(request)))


async def rindle_context(app: web.Application) -> AsyncIterator[None]:
    async with rindle:  # database pool, arq client and the job ledger relay
        yield


def create_app(argv: list[str] | None = None) -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(rindle_context)
    app.router.add_get("/", index)
    app.router.add_get("/api/avatar", show)
    app.router.add_delete("/api/avatar", remove)
    app.router.add_post("/api/avatar/uploads", start_upload)
    app.router.add_post("/api/avatar/uploads/{session_id}/complete", complete_upload)
    # tus resumable uploads (tus-js-client, Uppy's Tus plugin, tuspy) at tusd's default path
    add_tus_routes(app, rindle, profile="avatar", path="/files/", authorize=tus_user,
                   on_complete=avatars.attach_tus_upload)
    app.router.add_post("/api/avatar/uploads/attach", attach_upload)
    app.router.add_get("/uppy", uppy_page)
    for path in UPPY_BUNDLES:
        app.router.add_get(path, uppy_bundle)
    if "local" in rindle.storages:  # signed PUT (uploads) and GET (delivery) for the local folder
        add_local_storage_routes(app, rindle, prefix=LOCAL_PREFIX)
    if STORAGE == "s3":  # Uppy's Companion routes at the origin root: companionEndpoint: location.origin
        add_companion_routes(app, rindle, profile=avatar.name, authorize=authorize)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
