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
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from rindle_async.contrib.starlette import local_storage_routes, tus_routes

import avatars
from media import LOCAL_PREFIX, rindle

#: The page, shared with the aiohttp example.
INDEX = Path(__file__).resolve().parent.parent / "static" / "index.html"


def current_user(request: Request) -> str:
    # DEMO ONLY, stands in for the host's own authentication: the caller names its user
    # with an X-Demo-User header or a demo_user cookie, and anyone can claim any id.
    return request.headers.get("x-demo-user") or request.cookies.get("demo_user") or "demo"


def reply(answer: avatars.Reply) -> JSONResponse:
    status, body = answer
    return JSONResponse(body, status_code=status)


async def index(request: Request) -> FileResponse:
    return FileResponse(INDEX, headers={"Cache-Control": "no-store"})


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
]
if "local" in rindle.storages:  # signed PUT (uploads) and GET (delivery) for the local folder
    routes.append(Mount(LOCAL_PREFIX, app=local_storage_routes(rindle)))

app = Starlette(routes=routes, lifespan=lifespan)
