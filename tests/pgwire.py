"""A PostgreSQL wire-protocol proxy that counts round trips and transactions.

Clients connect to the proxy instead of the server (``proxy.dsn(database_url)``)
and every byte is forwarded unchanged.  It reads the message framing on the
way: each ``Sync`` or simple ``Query`` a client sends is one round trip (the
client then waits for ``ReadyForQuery``), and the transaction status in each
``ReadyForQuery`` tells when a transaction ended: a statement run outside a
transaction (idle -> idle) or a ``BEGIN`` block closing (in transaction -> idle).
TLS cannot be read, so the DSN it gives asks for ``sslmode=disable``.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SSL_REQUEST = 80877103


@dataclass
class Counts:
    round_trips: int = 0
    transactions: int = 0
    #: with ``WireCounter(trace=True)``: the statements sent, in order
    statements: list[str] = field(default_factory=list)


class WireCounter:
    """Forward connections to ``host:port`` and count what crosses them.

    host, port: the real PostgreSQL server.
    trace: also keep the text of every statement sent (to see what the counts are made of).
    """

    def __init__(self, host: str, port: int, *, trace: bool = False) -> None:
        self.upstream = (host, port)
        self.trace = trace
        self.counts = Counts()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def reset(self) -> Counts:
        """Return the counts so far and start again from zero."""
        counts, self.counts = self.counts, Counts()
        return counts

    def dsn(self, database_url: str) -> str:
        """``database_url`` pointed at the proxy, without TLS."""
        parts = urlsplit(database_url)
        user = f"{parts.username}@" if parts.username else ""
        query = dict(parse_qsl(parts.query))
        query["sslmode"] = "disable"
        return urlunsplit((parts.scheme, f"{user}127.0.0.1:{self.port}", parts.path,
                           urlencode(query), ""))

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        tasks = [asyncio.create_task(self._client_side(client_r, server_w, server_r, client_w)),
                 asyncio.create_task(self._server_side(server_r, client_w))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_w, server_w):
            writer.close()

    async def _client_side(self, reader, writer, server_r, client_w) -> None:
        # untyped start-up packets first: SSLRequest (answered by one byte) then StartupMessage
        while True:
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            body = await reader.readexactly(length - 8)
            writer.write(head + body)
            await writer.drain()
            if code != SSL_REQUEST:
                break
            answer = await server_r.readexactly(1)  # "N": go on in plain text
            client_w.write(answer)
            await client_w.drain()
        while True:
            kind = await reader.readexactly(1)
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            body = await reader.readexactly(length - 4)
            if kind in (b"S", b"Q"):
                self.counts.round_trips += 1
            if self.trace and kind in (b"Q", b"P"):  # the query text (Parse: after the name)
                text = body[:-1] if kind == b"Q" else body.split(b"\0", 2)[1]
                self.counts.statements.append(f"{kind.decode()} {text.decode(errors='replace')}")
            writer.write(kind + struct.pack("!i", length) + body)
            await writer.drain()

    async def _server_side(self, reader, writer) -> None:
        ready_before = False  # the first ReadyForQuery ends the start-up, not a transaction
        while True:
            kind = await reader.readexactly(1)
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            body = await reader.readexactly(length - 4)
            if kind == b"Z":  # ReadyForQuery: b"I" idle, b"T" in a transaction, b"E" failed one
                if body == b"I" and ready_before:
                    self.counts.transactions += 1
                ready_before = True
            writer.write(kind + struct.pack("!i", length) + body)
            await writer.drain()
