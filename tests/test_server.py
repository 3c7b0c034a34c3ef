"""The uvicorn server `clerk-sync serve` runs: startup objects frozen out of the garbage
collector's full passes, draining on a signal, and each answer written in one piece."""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import cast

import uvicorn
from starlette.applications import Starlette

from clerk_sync.server import Server, _Corked


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


class RecordingTransport:
    """Just enough of an asyncio transport to see what reaches the socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5000)}.get(name, default)


def test_writes_in_one_pass_of_the_loop_leave_as_one() -> None:
    async def go() -> tuple[list[bytes], list[bytes]]:
        transport = RecordingTransport()
        corked = _Corked(cast(asyncio.Transport, transport))
        corked.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        corked.write(b"{}")
        before = list(transport.writes)
        await asyncio.sleep(0)
        return before, transport.writes

    before, after = asyncio.run(go())
    assert before == []
    assert after == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]


def test_closing_sends_what_is_pending_first_and_nothing_goes_out_after() -> None:
    async def go() -> RecordingTransport:
        transport = RecordingTransport()
        corked = _Corked(cast(asyncio.Transport, transport))
        assert corked.get_extra_info("peername") == ("127.0.0.1", 5000)
        corked.write(b"bye")
        corked.close()
        corked.write(b"late")
        await asyncio.sleep(0)
        return transport

    transport = asyncio.run(go())
    assert transport.writes == [b"bye"]
    assert transport.closed
