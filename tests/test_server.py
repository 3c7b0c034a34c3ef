"""The uvicorn server `clerk-sync serve` runs: startup objects frozen out of the garbage
collector's full passes, draining on a signal, and each answer written in one piece."""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import Any, cast

import pytest
import uvicorn
import uvloop
from starlette.applications import Starlette

from clerk_sync.server import Server, _Corked, http_protocol
from tests import support


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


def test_nothing_goes_out_once_the_connection_is_lost() -> None:
    async def go() -> RecordingTransport:
        transport = RecordingTransport()
        corked = _Corked(cast(asyncio.Transport, transport))
        corked.write(b"too late")
        corked.lost = True
        await asyncio.sleep(0)
        return transport

    assert asyncio.run(go()).writes == []


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_client_that_half_closes_still_gets_its_answer(run: Any) -> None:
    """A client may send its request, shut down its sending side, and read the answer."""

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": b"no"})

    async def go() -> list[bytes]:
        port = support.free_port()
        config = uvicorn.Config(
            answer, host="127.0.0.1", port=port, http=http_protocol(), lifespan="off",
            log_config=None,
        )  # fmt: skip
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        answers = []
        try:
            for _ in range(20):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
                writer.write_eof()
                answers.append(await asyncio.wait_for(reader.read(), 5))
                writer.close()
        finally:
            server.should_exit = True
            await serving
        return answers

    answers = run(go())
    assert all(a.startswith(b"HTTP/1.1 401") and a.endswith(b"\r\n\r\nno") for a in answers)
