"""A fault-injecting HTTP proxy in front of a real S3 server (moto), for the storage faults.

Clients talk to the proxy instead of the server; every request is forwarded byte for
byte unless a :class:`Fault` injected for it (by method, path pattern and count) says
otherwise: answer an error status, delay the answer, hang past the client's timeout,
reset the connection before forwarding, or forward and then reset instead of relaying
the answer (the server did the work, the client never hears of it).  :meth:`stop`
makes S3 unreachable (connections refused, open ones cut) until :meth:`start`.

It runs an event loop in a thread of its own, so it answers whatever the test's loop
is doing.  Each forwarded request gets ``Connection: close`` and a connection of its own
upstream, so one request is one exchange and faults never fall between two requests.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ACTIONS = ("status", "delay", "hang", "reset", "drop_response")


@dataclass
class Fault:
    """What to do to the requests that match.

    method: the HTTP method, or "*".
    path: a regular expression searched in the request target (path and query).
    action: one of ``ACTIONS``.
    times: how many matching requests it hits.
    skip: how many matching requests it lets through first.
    status: the status answered by "status".
    seconds: how long "delay" waits before forwarding.
    """

    method: str
    path: str
    action: str
    times: int = 1
    skip: int = 0
    status: int = 503
    seconds: float = 0.0
    hits: int = 0
    seen: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"Fault action={self.action!r} is not one of {', '.join(ACTIONS)}")

    def claims(self, method: str, target: str) -> bool:
        if self.method not in ("*", method) or not re.search(self.path, target):
            return False
        self.seen += 1
        if self.seen <= self.skip or self.hits >= self.times:
            return False
        self.hits += 1
        return True


_REASONS = {500: "Internal Server Error", 503: "Service Unavailable"}
_CODES = {500: "InternalError", 503: "SlowDown"}


class FaultProxy:
    """Forward ``127.0.0.1:port`` to ``upstream`` (``http://host:port``), injecting faults."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.port = 0
        self.faults: list[Fault] = []
        #: (method, target, what happened) for every request, in order
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def inject(self, method: str, path: str, action: str, **options) -> Fault:
        """Add a fault (see :class:`Fault`); faults are tried in the order they were added."""
        fault = Fault(method, path, action, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def hits(self, action: str | None = None) -> list[tuple[str, str, str]]:
        """The log entries of requests a fault hit (of ``action``, if given)."""
        with self._lock:
            return [e for e in self.log if e[2] != "forwarded" and (action is None or e[2] == action)]

    def start(self) -> None:
        """Listen (again, on the same port once it has one)."""
        self._call(self._listen())

    def stop(self) -> None:
        """S3 unreachable: refuse connections and cut the open ones."""
        self._call(self._close())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._open):
            writer.transport.abort()
        if server is not None:
            await server.wait_closed()

    def _fault_for(self, method: str, target: str) -> Fault | None:
        with self._lock:
            fault = next((f for f in self.faults if f.claims(method, target)), None)
            self.log.append((method, target, fault.action if fault else "forwarded"))
            return fault

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [line for line in lines[1:] if line]
                names = {line.partition(":")[0].strip().lower(): line.partition(":")[2].strip()
                         for line in headers}
                if names.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    headers = [h for h in headers if not h.lower().startswith("expect:")]
                body = await _read_body(reader, names)
                fault = self._fault_for(method, target)
                if fault is None or fault.action == "delay":
                    if fault is not None:
                        await asyncio.sleep(fault.seconds)
                    await self._forward(method, target, headers, body, writer)
                    return
                if fault.action == "status":
                    writer.write(_error_response(fault.status, method))
                    await writer.drain()
                    continue
                if fault.action == "hang":
                    await reader.read()  # until the client gives up and closes
                    return
                if fault.action == "drop_response":
                    await self._forward(method, target, headers, body, None)
                _reset(writer)
                return
        except ConnectionError:
            return
        finally:
            self._open.discard(writer)
            writer.close()

    async def _forward(self, method: str, target: str, headers: list[str], body: bytes,
                       writer: asyncio.StreamWriter | None) -> None:
        """Send the request upstream; relay the answer to ``writer`` (or read and drop it)."""
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            kept = [h for h in headers if h.partition(":")[0].strip().lower() != "connection"]
            up_writer.write(f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
                            + "".join(f"{h}\r\n" for h in kept).encode("latin-1")
                            + b"Connection: close\r\n\r\n" + body)
            await up_writer.drain()
            while chunk := await up_reader.read(65536):
                if writer is not None:
                    writer.write(chunk)
                    await writer.drain()
        finally:
            up_writer.close()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    """The request body, framed as sent (Content-Length or chunked)."""
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        return b""
    raw = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        raw += size_line
        size = int(size_line.split(b";")[0], 16)
        raw += await reader.readexactly(size + 2)
        if size == 0:
            return raw


def _error_response(status: int, method: str) -> bytes:
    code = _CODES.get(status, "ServiceUnavailable")
    body = b"" if method == "HEAD" else (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>injected by the fault proxy</Message></Error>").encode()
    return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
