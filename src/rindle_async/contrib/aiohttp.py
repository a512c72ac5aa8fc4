"""aiohttp routes serving :class:`~rindle_async.LocalStorage` URLs (PUT uploads, GET/HEAD delivery),
and tus resumable uploads (:func:`add_tus_routes`).

Add them under the path of the storage's ``base_url``::

    from aiohttp import web
    from rindle_async.contrib.aiohttp import add_local_storage_routes

    # LocalStorage(root="var/media", base_url="http://localhost:8080/rindle", secret=...)
    app = web.Application()
    add_local_storage_routes(app, rindle, prefix="/rindle")

and Uppy Companion's S3 routes (``rindle_async.contrib.companion``) for one profile, at the origin
root so that Uppy's ``companionEndpoint: location.origin`` finds them::

    add_companion_routes(app, rindle, profile="avatar", authorize=current_user)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING

from aiohttp import web

from ..storage.base import CHUNK_SIZE
from .companion import Authorize, companion_mount, handle_companion, read_body
from .local_http import handle_request, local_mount
from .tus import OnComplete, TusServer

if TYPE_CHECKING:
    from ..app import Rindle

__all__ = ["add_companion_routes", "add_local_storage_routes", "add_tus_routes"]


def add_local_storage_routes(app: web.Application, rindle: Rindle, *, prefix: str = "/rindle",
                             storage: str = "local") -> None:
    """Add a route answering PUT, GET and HEAD on ``{prefix}/{key}`` for one LocalStorage.

    app: the aiohttp application (before it starts)
    rindle: the host's Rindle (opened or not); the storage is resolved here, once
    prefix: the path of the storage's base_url, e.g. "/rindle"
    storage: the name of a LocalStorage in ``Rindle(storages=...)``
    Raises ConfigurationError at once when that storage is missing or not a LocalStorage.
    """
    mount = local_mount(rindle, storage)

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            answer = await handle_request(mount.storage, mount.writable, request.method,
                                          request.match_info["key"], request.query.items(),
                                          request.headers, request.content.iter_chunked(CHUNK_SIZE))
        except ConnectionResetError:
            # An abandoned upload is routine (nothing was stored): no error log, and nobody to answer.
            return web.Response(status=400)
        if answer.stream is None:
            # web.Response drops the body of a HEAD answer and keeps an explicit Content-Length.
            return web.Response(body=answer.body, status=answer.status, headers=answer.headers)
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        async with aclosing(answer.stream) as stream:
            try:
                await response.prepare(request)
                async for chunk in stream:
                    await response.write(chunk)
            except ConnectionResetError:
                pass  # the client left mid-download: routine, aiohttp's access log records it
        return response  # aiohttp finishes it (write_eof)

    app.router.add_route("*", prefix.rstrip("/") + "/{key:.*}", handler)


def add_tus_routes(app: web.Application, rindle: Rindle, *, profile: str, path: str = "/files/",
                   authorize: Callable[[web.Request], Awaitable[str | None]] | None = None,
                   on_complete: OnComplete | None = None) -> None:
    """Add routes speaking tus 1.0 for one profile at ``path`` and ``{path}{upload id}``.

    app: the aiohttp application (before it starts)
    rindle: the host's Rindle (opened before the first request)
    profile: the profile the uploads belong to
    path: the uploads' URL path, e.g. "/files/"
    authorize: the owner a request uploads for (e.g. the signed-in user's id), or None to refuse it (403)
    on_complete: awaited with (asset, owner) once per finished upload, e.g. to attach it
    Raises ConfigurationError at once for an unknown profile or a store that cannot hold tus uploads.
    """
    server = TusServer(rindle, profile=profile, path=path, on_complete=on_complete)

    async def handler(request: web.Request) -> web.StreamResponse:
        check = authorize
        try:
            answer = await server.handle(request.method, request.match_info.get("upload_id", ""),
                                         request.headers, request.content.iter_chunked(CHUNK_SIZE),
                                         None if check is None else lambda: check(request))
        except ConnectionResetError:
            # the chunk's bytes that arrived are stored; the client resumes from HEAD
            return web.Response(status=400)
        return web.Response(body=answer.body, status=answer.status, headers=answer.headers)

    base = server.path
    app.router.add_route("*", base, handler)
    app.router.add_route("*", base + "{upload_id}", handler)


def add_companion_routes(app: web.Application, rindle: Rindle, *, profile: str, authorize: Authorize,
                         prefix: str = "") -> None:
    """Add Uppy Companion's S3 routes for one profile under ``{prefix}/s3/``.

    app: the aiohttp application (before it starts)
    rindle: the host's Rindle (opened or not); the profile and its store are checked here, once
    profile: the profile every upload through these routes is made under
    authorize: ``async (request) -> owner``; None refuses the request with 403
    prefix: where Uppy's ``companionEndpoint`` points below the origin ("" for the root)
    Raises ConfigurationError when the profile is unknown or its store is not S3.
    """
    mount = companion_mount(rindle, profile, authorize)

    async def handler(request: web.Request) -> web.Response:
        body = lambda: read_body(request.content.iter_chunked(CHUNK_SIZE))  # noqa: E731  (read on demand)
        answer = await handle_companion(mount, request, request.method, "/s3/" + request.match_info["path"],
                                        request.query, body)
        return web.Response(body=answer.body, status=answer.status, headers=answer.headers)

    app.router.add_route("*", prefix.rstrip("/") + "/s3/{path:.*}", handler)
