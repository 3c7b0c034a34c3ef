"""The HTTP server `clerk-sync serve` runs: uvicorn (httptools, uvloop), with what a webhook
receiver needs at the start and the end of its life, and each answer written in one piece."""

from __future__ import annotations

import asyncio
import gc
import socket
from types import FrameType
from typing import Any, cast

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, _Corked(transport)))
