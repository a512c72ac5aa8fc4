"""Starlette routes serving :class:`~rindle_async.LocalStorage` URLs (PUT uploads, GET/HEAD delivery),
and tus resumable uploads (:func:`tus_routes`).

Mount them where the storage's ``base_url`` points::

    from starlette.applications import Starlette
    from starlette.routing import Mount
    from rindle_async.contrib.starlette import local_storage_routes

    # LocalStorage(root="var/media", base_url="http://localhost:8000/rindle", secret=...)
    app = Starlette(routes=[Mount("/rindle", app=local_storage_routes(rindle))])

and Uppy Companion's S3 routes (``rindle_async.contrib.companion``) for one profile, at the origin
root so that Uppy's ``companionEndpoint: location.origin`` finds them::

    app = Starlette(routes=[*companion_routes(rindle, profile="avatar", authorize=current_user)])
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from .companion import Authorize, CompanionMount, companion_mount, handle_companion, read_body
from .local_http import Answer, LocalMount, handle_request, local_mount
from .tus import OnComplete, TusServer

if TYPE_CHECKING:
    from ..app import Rindle

__all__ = ["companion_routes", "local_storage_routes", "tus_routes"]


def local_storage_routes(rindle: Rindle, storage: str = "local") -> Router:
    """A Router answering PUT, GET and HEAD on ``/{key}`` for one LocalStorage; mount it at its base_url.

    rindle: the host's Rindle (opened or not); the storage is resolved here, once
    storage: the name of a LocalStorage in ``Rindle(storages=...)``
    Raises ConfigurationError at once when that storage is missing or not a LocalStorage.
    """
    return Router(routes=[Route("/{key:path}", _LocalStorageEndpoint(local_mount(rindle, storage)))])


class _LocalStorageEndpoint:
    """An ASGI app rather than a function, so Route passes every method and the 405 is our JSON one."""

    def __init__(self, mount: LocalMount) -> None:
        self.mount = mount

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            answer = await handle_request(self.mount.storage, self.mount.writable, request.method,
                                          request.path_params["key"], request.query_params.multi_items(),
                                          request.headers, request.stream())
        except ClientDisconnect:
            # An abandoned upload is routine (nothing was stored): no error log, and nobody to answer.
            return
        await _respond(answer, scope, receive, send)


async def _respond(answer: Answer, scope: Scope, receive: Receive, send: Send) -> None:
    if answer.stream is None:
        response: Response = Response(answer.body, status_code=answer.status, headers=answer.headers)
    else:
        response = StreamingResponse(answer.stream, status_code=answer.status, headers=answer.headers)
    await response(scope, receive, send)


def tus_routes(rindle: Rindle, *, profile: str, path: str = "/files/",
               authorize: Callable[[Request], Awaitable[str | None]] | None = None,
               on_complete: OnComplete | None = None) -> Router:
    """A Router speaking tus 1.0 for one profile; mount it at ``path``::

        Mount("/files", app=tus_routes(rindle, profile="avatar", authorize=user_id, on_complete=attach))

    rindle: the host's Rindle (opened before the first request)
    profile: the profile the uploads belong to
    path: where the Router is mounted; upload URLs are ``{path}{upload id}``
    authorize: the owner a request uploads for (e.g. the signed-in user's id), or None to refuse it (403)
    on_complete: awaited with (asset, owner) once per finished upload, e.g. to attach it
    Raises ConfigurationError at once for an unknown profile or a store that cannot hold tus uploads.
    """
    endpoint = _TusEndpoint(TusServer(rindle, profile=profile, path=path, on_complete=on_complete), authorize)
    return Router(routes=[Route("/", endpoint), Route("/{upload_id:path}", endpoint)])


class _TusEndpoint:
    """An ASGI app, so Route passes every method (tus needs OPTIONS, HEAD, PATCH and DELETE)."""

    def __init__(self, server: TusServer, authorize: Callable[[Request], Awaitable[str | None]] | None) -> None:
        self.server, self.authorize = server, authorize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        check = self.authorize
        try:
            answer = await self.server.handle(request.method, request.path_params.get("upload_id", ""),
                                              request.headers, request.stream(),
                                              None if check is None else lambda: check(request))
        except ClientDisconnect:
            return  # the chunk's bytes that arrived are stored; the client resumes from HEAD
        await _respond(answer, scope, receive, send)


def companion_routes(rindle: Rindle, *, profile: str, authorize: Authorize, prefix: str = "") -> list[Route]:
    """Uppy Companion's S3 routes for one profile, to list among the app's routes.

    rindle: the host's Rindle (opened or not); the profile and its store are checked here, once
    profile: the profile every upload through these routes is made under
    authorize: ``async (request) -> owner``; None refuses the request with 403
    prefix: where Uppy's ``companionEndpoint`` points below the origin ("" for the root)
    Raises ConfigurationError when the profile is unknown or its store is not S3.
    """
    endpoint = _CompanionEndpoint(companion_mount(rindle, profile, authorize))
    return [Route(prefix.rstrip("/") + "/s3/{path:path}", endpoint)]


class _CompanionEndpoint:
    """An ASGI app, so Route passes every method and the core decides each status."""

    def __init__(self, mount: CompanionMount) -> None:
        self.mount = mount

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            answer = await handle_companion(self.mount, request, request.method,
                                            "/s3/" + request.path_params["path"], request.query_params,
                                            lambda: read_body(request.stream()))
        except ClientDisconnect:
            return
        await _respond(answer, scope, receive, send)
