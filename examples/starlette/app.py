"""The Starlette example: avatars uploaded straight to storage, variants rendered by a worker.

Run from this folder (or put it on PYTHONPATH), beside a worker with the same environment:

    rindle-async --app media:rindle migrate
    RINDLE_APP=media:rindle arq rindle_async.WorkerSettings
    uvicorn app:app --port 8000

``make demo`` at the repository root does all of it on embedded PostgreSQL and Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from rindle_async.contrib.starlette import companion_routes, local_storage_routes, tus_routes

import avatars
from media import LOCAL_PREFIX, STORAGE, avatar, rindle

#: The pages, shared with the aiohttp example; the Uppy bundle that scripts/uppy.sh builds.
STATIC = Path(__file__).resolve().parent.parent / "static"
INDEX, UPPY_PAGE = STATIC / "index.html", STATIC / "uppy.html"
#: The Uppy bundles scripts/uppy.sh builds, by the path the pages load them from.
UPPY_CACHE = STATIC.parent.parent / ".cache" / "uppy"
UPPY_BUNDLES = {"/uppy.js": "text/javascript", "/uppy-dashboard.js": "text/javascript",
                "/uppy-dashboard.css": "text/css"}


def current_user(request: Request) -> str:
    # DEMO ONLY, stands in for the host's own authentication: the caller names its user
    # with an X-Demo-User header or a demo_user cookie, and anyone can claim any id.
    return request.headers.get("x-demo-user") or request.cookies.get("demo_user") or "demo"


def reply(answer: avatars.Reply) -> JSONResponse:
    status, body = answer
    return JSONResponse(body, status_code=status)


async def index(request: Request) -> FileResponse:
    return FileResponse(INDEX, headers={"Cache-Control": "no-store"})


async def uppy_page(request: Request) -> FileResponse:
    return FileResponse(UPPY_PAGE, headers={"Cache-Control": "no-store"})


async def uppy_bundle(request: Request) -> Response:
    bundle = UPPY_CACHE / request.url.path.lstrip("/")
    if not bundle.exists():
        return PlainTextResponse("no Uppy bundle: run scripts/uppy.sh (make services does)", status_code=404)
    return FileResponse(bundle, media_type=UPPY_BUNDLES[request.url.path])


async def authorize(request: Request) -> str | None:
    """Who may upload through the Companion routes: here every (demo) user; None refuses with 403."""
    return current_user(request)


async def attach_upload(request: Request) -> JSONResponse:
    return reply(await avatars.attach_upload(current_user(request), await request.body()))


async def show(request: Request) -> JSONResponse:
    return reply(await avatars.show(current_user(request)))


async def start_upload(request: Request) -> JSONResponse:
    return reply(await avatars.start_upload(current_user(request), await request.body()))


async def complete_upload(request: Request) -> JSONResponse:
    return reply(await avatars.complete_upload(current_user(request), request.path_params["session_id"]))


async def tus_user(request: Request) -> str:
    return current_user(request)  # whom a tus upload at /files/ is for


async def remove(request: Request) -> JSONResponse:
    return reply(await avatars.remove(current_user(request)))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with rindle:  # database pool, arq client and the job ledger relay
        yield


routes: list[BaseRoute] = [
    Route("/", index),
    Route("/api/avatar", show, methods=["GET"]),
    Route("/api/avatar", remove, methods=["DELETE"]),
    Route("/api/avatar/uploads", start_upload, methods=["POST"]),
    Route("/api/avatar/uploads/{session_id}/complete", complete_upload, methods=["POST"]),
    # tus resumable uploads (tus-js-client, Uppy's Tus plugin, tuspy) at tusd's default path
    Mount("/files", app=tus_routes(rindle, profile="avatar", authorize=tus_user,
                                   on_complete=avatars.attach_tus_upload)),
    Route("/api/avatar/uploads/attach", attach_upload, methods=["POST"]),
    Route("/uppy", uppy_page),
    *(Route(path, uppy_bundle) for path in UPPY_BUNDLES),
]
if "local" in rindle.storages:  # signed PUT (uploads) and GET (delivery) for the local folder
    routes.append(Mount(LOCAL_PREFIX, app=local_storage_routes(rindle)))
if STORAGE == "s3":  # Uppy's Companion routes at the origin root: companionEndpoint: location.origin
    routes += companion_routes(rindle, profile=avatar.name, authorize=authorize)

app = Starlette(routes=routes, lifespan=lifespan)
