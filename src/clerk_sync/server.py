"""The HTTP server `clerk-sync serve` runs: uvicorn (httptools, uvloop), with what a webhook
receiver needs at the start and the end of its life, each answer written in one piece, and
limits on what a client can hold (connections, time, header and body bytes) before any of
clerk-sync's own code runs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar, cast

import orjson
import psutil
import uvicorn
from starlette.applications import Starlette

from clerk_sync import metrics
from clerk_sync.app import start_draining

log = logging.getLogger("clerk_sync.server")


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

    def is_closing(self) -> bool:
        # Asked after every answer: spelled out, not found through __getattr__ (which CPython
        # reaches only after raising and catching an AttributeError).
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@dataclass(frozen=True)
class ConnectionLimits:
    """What `serve` lets clients hold, all of them together or each one."""

    max_connections: int = 2048
    # From a connection's start, or the end of its previous answer, to the end of a request's
    # headers: a client that sends nothing (an idle keep-alive one too) or dribbles is closed.
    header_timeout: float = 5.0
    max_header_bytes: int = 16 * 1024
    # Bytes of request bodies that have started to arrive and not finished, all requests
    # together: past it the oldest unfinished body is answered 503 and its connection closed.
    max_body_bytes_in_flight: int = 16 * 1024 * 1024
    # File descriptors left for everything but client connections (the database pool, logs).
    other_fds: int = 64


def _answer(status: bytes, error: str, retry_after: bytes = b"") -> bytes:
    """A whole answer with `Connection: close`, for the protocol to send and hang up."""
    body = orjson.dumps({"error": error})
    return b"".join(
        [
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            % (status, len(body)),
            b"retry-after: %s\r\n" % retry_after if retry_after else b"",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


def fit_to_open_file_limit(limits: ConnectionLimits) -> int:
    """How many client connections fit in this process's open-file limit: raised to the hard
    limit first where that is allowed. At the limit the event loop can accept no connection
    at all (libuv then drops the waiting ones), so the cap stays below it."""
    try:
        import resource
    except ImportError:  # not POSIX
        return limits.max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        wanted = limits.max_connections + limits.other_fds + 64
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections
    room = soft - psutil.Process().num_fds() - limits.other_fds
    if room < limits.max_connections:
        log.warning(
            "the open-file limit (%d) leaves room for %d connections, not %d: raise it "
            "(ulimit -n) or lower CLERK_SYNC_MAX_CONNECTIONS",
            soft,
            max(room, 1),
            limits.max_connections,
        )
    return max(1, min(limits.max_connections, room))


def server_options(limits: ConnectionLimits) -> dict[str, Any]:
    """uvicorn.Config options for `serve`: the guarded httptools protocol (CPython, where
    httptools is a dependency); elsewhere uvicorn's h11 protocol with what of the limits it
    has (no header deadline, no body budget: put a reverse proxy in front)."""
    try:
        return {"http": http_protocol(limits)}
    except ImportError:
        log.warning(
            "httptools is not installed: serving with uvicorn's h11 protocol, without the "
            "header deadline and the body budget; put a reverse proxy in front"
        )
        return {
            "http": "h11",
            "limit_concurrency": fit_to_open_file_limit(limits),
            "timeout_keep_alive": limits.header_timeout,
            "h11_max_incomplete_event_size": limits.max_header_bytes,
        }


def http_protocol(given: ConnectionLimits | None = None) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with corked writes and the `given` limits (ImportError without
    httptools, which is installed on CPython only).

    What it costs a request is O(1) and small, less than uvicorn's keep-alive timer that it
    replaces: a timestamp in a dict, and a few comparisons per read (counting a body starts
    only when it spans more than one read). One sweep a fraction of a second enforces the
    header deadline for every connection."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    limits = given or ConnectionLimits()
    timed_out = _answer(b"408 Request Timeout", "the request's headers took too long to arrive")
    head_too_large = _answer(
        b"431 Request Header Fields Too Large",
        f"request headers larger than {limits.max_header_bytes} bytes",
    )
    too_many_connections = _answer(
        b"503 Service Unavailable", "too many connections, retry later", b"1"
    )
    too_many_bodies = _answer(
        b"503 Service Unavailable", "too many request bodies arriving at once, retry later", b"5"
    )

    # How often the header deadline is checked: a connection is closed between
    # `header_timeout` and `header_timeout + sweep` after it began to wait.
    sweep = max(0.05, min(0.5, limits.header_timeout / 5))

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        # Shared by every connection of the server (one event loop: no locks), oldest first:
        # connections waiting for a request's headers (with since when), and requests whose
        # body is arriving in more than one read.
        max_connections = fit_to_open_file_limit(limits)
        waiting: ClassVar[dict[GuardedHttpToolsProtocol, float]] = {}
        reading: ClassVar[dict[GuardedHttpToolsProtocol, None]] = {}
        body_bytes = 0
        sweeping_on: ClassVar[asyncio.AbstractEventLoop | None] = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._corked = _Corked(transport)
            self._waiting = False
            self._head_bytes = 0
            self._body_bytes = 0
            HttpToolsProtocol.connection_made(self, cast(asyncio.Transport, self._corked))
            if len(self.connections) > self.max_connections and not self._close_oldest_waiting():
                self._answer_and_close(too_many_connections, "too_many_connections")
                return
            self._wait_for_head()

        def _wait_for_head(self) -> None:
            # A timestamp, not a timer per request: one sweep serves every connection.
            self.waiting[self] = self.loop.time()
            self._waiting = True
            if GuardedHttpToolsProtocol.sweeping_on is not self.loop:
                GuardedHttpToolsProtocol.sweeping_on = self.loop
                self.loop.call_later(sweep, GuardedHttpToolsProtocol._sweep, self.loop)

        def _stop_waiting(self) -> None:
            if self._waiting:
                self._waiting = False
                del self.waiting[self]

        @classmethod
        def _sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
            """Close the connections whose headers are overdue; again in `sweep` seconds while
            any connection waits."""
            if cls.sweeping_on is not loop:
                return
            cutoff = loop.time() - limits.header_timeout
            overdue = []
            for connection, since in cls.waiting.items():  # in the order they began to wait
                if since > cutoff:
                    break
                overdue.append(connection)
            for connection in overdue:
                connection._stop_waiting()
                connection._head_timed_out()
            if cls.waiting:
                loop.call_later(sweep, cls._sweep, loop)
            else:
                cls.sweeping_on = None

        @classmethod
        def _close_oldest_waiting(cls) -> bool:
            """Make room by closing the connection that has waited longest for headers: a
            genuine client sends its own within milliseconds of connecting."""
            if not cls.waiting:
                return False
            oldest = next(iter(cls.waiting))
            oldest._stop_waiting()
            oldest.transport.close()
            metrics.HTTP_REFUSALS.labels("idle_evicted").inc()
            return True

        def _head_timed_out(self) -> None:
            if self._head_bytes:  # part of a request came
                self._answer_and_close(timed_out, "header_timeout")
            else:  # idle between requests: nothing to answer
                self.transport.close()

        def _answer_and_close(self, answer: bytes, reason: str) -> None:
            if self.transport.is_closing():
                return
            metrics.HTTP_REFUSALS.labels(reason).inc()
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # Its app (reading the body) sees a disconnect, and sends nothing more.
                cycle.disconnected = True
                cycle.message_event.set()
                if cycle.response_started:
                    answer = b""
            if answer:
                self.transport.write(answer)
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            # Counted per read after parsing it, so httptools holds at most one read past a
            # limit; a request that arrives whole in one read (a delivery) counts nothing.
            before = self.cycle
            HttpToolsProtocol.data_received(self, data)
            cycle = self.cycle
            if cycle is not before:  # a request's headers ended in this read
                if self._waiting:  # _stop_waiting(), inline: this runs for every request
                    self._waiting = False
                    del self.waiting[self]
                self._head_bytes = 0
            receiving_body = cycle is not None and cycle.more_body
            if receiving_body:
                self._count_body(len(data))
            elif self._body_bytes:  # the body ended in this read
                self._release_body()
            if self._waiting and not receiving_body:
                self._head_bytes += len(data)
                if self._head_bytes > limits.max_header_bytes:
                    self._answer_and_close(head_too_large, "header_too_large")

        def _count_body(self, size: int) -> None:
            cls = type(self)
            if not self._body_bytes:
                self.reading[self] = None
            self._body_bytes += size
            cls.body_bytes += size
            while cls.body_bytes > limits.max_body_bytes_in_flight and self.reading:
                oldest = next(iter(self.reading))
                oldest._release_body()
                oldest._answer_and_close(too_many_bodies, "body_budget")

        def _release_body(self) -> None:
            if self._body_bytes:
                type(self).body_bytes -= self._body_bytes
                self._body_bytes = 0
                del self.reading[self]

        def on_response_complete(self) -> None:
            # uvicorn's, with the header deadline in place of its keep-alive timer (which any
            # byte received cancels, so a client that dribbles never meets it).
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._wait_for_head()

        def eof_received(self) -> None:
            # The client has sent all it will (it may still read): send what is ready before
            # the transport closes itself.
            self._corked.flush()

        def connection_lost(self, exc: Exception | None) -> None:
            self._corked.lost = True
            self._stop_waiting()
            self._release_body()
            HttpToolsProtocol.connection_lost(self, exc)

    return GuardedHttpToolsProtocol
