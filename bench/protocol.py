"""What `serve`'s HTTP protocol costs one request, without a network or a database.

    .venv/bin/python bench/protocol.py [--requests 3000] [--src OTHER_CHECKOUT/src]

Feeds a delivery-sized POST (3 KB body, Svix's headers) to 32 connections of the protocol
`serve` uses (`clerk_sync.server.http_protocol()`), answered by an app that does nothing else,
on uvloop, and prints the time per request. `--src` measures another checkout's protocol (say the
commit before a change) the same way.

On a shared machine time is noisy; count instructions instead, as the README's figures do: run
it under `valgrind --tool=cachegrind --cache-sim=no` with two values of --requests and divide the
difference in "I refs" by the difference in requests (x 32 connections).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any


class Transport:
    """Just enough of a socket's transport: what is written is counted, nothing sent."""

    def __init__(self) -> None:
        self.writes = 0
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"22")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"outcome": "applied"}'})


def request() -> bytes:
    body = b"x" * 3000
    head = (
        "POST /api/webhooks/clerk HTTP/1.1\r\nhost: hooks.example.com\r\n"
        "content-type: application/json\r\nuser-agent: Svix-Webhooks/1.62.0\r\n"
        "svix-id: msg_2x9tW5fVxtMUWMIVlbK6vxJO4kl\r\nsvix-timestamp: 1700000000\r\n"
        "svix-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def measure(requests: int, rounds: int) -> float:
    import uvicorn
    from uvicorn.server import ServerState

    from clerk_sync.server import http_protocol

    config = uvicorn.Config(answer, lifespan="off", log_config=None)
    config.load()
    protocol = http_protocol()
    state = ServerState()
    connections = []
    for _ in range(32):
        connection = protocol(config=config, server_state=state, app_state={})  # type: ignore[call-arg]
        transport = Transport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connections.append((connection, transport))
    data = request()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(requests):
            for connection, _ in connections:
                connection.data_received(data)  # type: ignore[attr-defined]
            await asyncio.sleep(0)  # the apps run
            await asyncio.sleep(0)  # their answers leave (corked writes)
        best = min(best, time.perf_counter() - started)
    answered = sum(t.writes for _, t in connections)
    assert answered == 32 * requests * rounds, answered
    return best / (32 * requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per connection, per round")
    parser.add_argument("--rounds", type=int, default=3, help="the best round is reported")
    parser.add_argument("--src", help="another checkout's src/ to measure instead")
    args = parser.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
    import uvloop

    seconds = uvloop.run(measure(args.requests, args.rounds))
    import clerk_sync

    print(f"{seconds * 1e6:.2f} us per request ({clerk_sync.__file__})")


if __name__ == "__main__":
    main()
