"""The HTTP server `clerk-sync serve` runs: uvicorn, with what a webhook receiver needs at the
start and the end of its life."""

from __future__ import annotations

import gc
import socket
from types import FrameType

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
