"""The uvicorn server `clerk-sync serve` runs: startup objects frozen out of the garbage
collector's full passes, and draining on a signal."""

from __future__ import annotations

import asyncio
import gc
import signal

import uvicorn
from starlette.applications import Starlette

from clerk_sync.server import Server


def test_startup_freezes_what_exists_and_a_signal_starts_draining() -> None:
    app = Starlette()
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None), app)

    async def go() -> int:
        config = server.config
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup()
        try:
            return gc.get_freeze_count()
        finally:
            server.handle_exit(signal.SIGTERM, None)
            await server.shutdown()

    try:
        frozen = asyncio.run(go())
    finally:
        gc.unfreeze()
    assert frozen > 1000
    assert app.state.draining is True
    assert server.should_exit
