"""The HTTP server `clerk-sync serve` runs: uvicorn (httptools, uvloop), with what a webhook
receiver needs at the start and the end of its life, and each answer written in one piece."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from types import FrameType
from typing import Any, cast

import uvicorn
from starlette.applications import Starlette

from clerk_sync.app import start_draining


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What exists now (modules, the app, the pool) lives as long as the process: keep it
        # out of the cyclic garbage collector's full passes, which otherwise walk all of it
        # every few thousand deliveries and hold every answer for ~30 ms (the p99, measured
        # with bench/run.py).
        gc.collect()
        gc.freeze()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """On SIGTERM or Ctrl+C: /readyz turns 503 at once, no new connections are taken, and
        deliveries in flight finish (within the grace period) before the database closes."""
        start_draining(self._app)
        super().handle_exit(sig, frame)


class _Corked:
    """A connection's transport whose writes during one pass of the event loop leave as one:
    uvicorn writes a response's head and body separately, two system calls and two TCP
    segments for every delivery."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self.lost = False  # the connection is gone: nothing more can be sent

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if self.lost:
            return
        # A transport that is closing still sends what it is given, as it would have been
        # given it straight away; one whose socket is already closed may refuse.
        with contextlib.suppress(RuntimeError):
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol with corked writes; without httptools (it is installed on
    CPython only), uvicorn's own choice."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class CorkedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._corked = _Corked(transport)
            super().connection_made(cast(asyncio.Transport, self._corked))

        def eof_received(self) -> None:
            # The client has sent all it will (it may still read): send what is ready before
            # the transport closes itself.
            self._corked.flush()

        def connection_lost(self, exc: Exception | None) -> None:
            self._corked.lost = True
            super().connection_lost(exc)

    return CorkedHttpToolsProtocol
