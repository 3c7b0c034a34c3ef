"""POST /api/webhooks/clerk as ASGI: what is left for the HTTP layer once `delivery.py` has
decided the answer. One pass over the headers, the raw body read with a size limit and a
deadline (413, 408), and each answer written straight through ASGI, in one piece. A client over
the failed-verification limit is answered 429 from its headers where they suffice, before its
body is read, and its body is read only up to LIMITED_BODY_BYTES."""

from __future__ import annotations

import asyncio
import time
from functools import lru_cache
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from clerk_sync.delivery import BODY_READ_SECONDS, LIMITED_BODY_BYTES, DeliveryHandler

# Answers after which the connection is closed: the client was slow, too big or hostile.
_HANG_UP = frozenset((408, 413, 429))
# The headers a delivery is verified with (Svix's names and their Standard Webhooks twins).
_SIGNATURE_HEADERS = frozenset(
    f"{family}-{name}".encode()
    for family in ("svix", "webhook")
    for name in ("id", "timestamp", "signature")
)


class BodyTooLarge(Exception):
    pass


def json_response(
    status: int, content: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


@lru_cache(maxsize=256)
def _answer_headers(
    length: int, extra: tuple[tuple[str, str], ...]
) -> tuple[tuple[bytes, bytes], ...]:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % length)]
    headers += [(name.lower().encode(), value.encode()) for name, value in extra]
    return tuple(headers)


async def send_json(
    send: Send, status: int, content: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """Answer with a JSON body, straight through ASGI (the webhook's hot path)."""
    body = orjson.dumps(content)
    # A fresh list each time: middleware (GZip, say) may edit the headers it is given.
    extra = tuple(headers.items()) if headers else ()
    if status in _HANG_UP:
        extra += (("Connection", "close"),)
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": list(_answer_headers(len(body), extra)),
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


class ClientGone(Exception):
    """The client disconnected before its whole body arrived: there is nobody to answer."""


def read_headers(scope: Scope) -> tuple[int | None, dict[str, str]]:
    """In one pass over a request's headers (lower case in ASGI): its declared content-length,
    and its svix-*/webhook-* headers, of a header sent twice the first (as Starlette's
    `Headers.get` gives)."""
    declared: int | None = None
    signature: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _SIGNATURE_HEADERS:
            signature.setdefault(name.decode(), value.decode("latin-1"))
        elif name == b"content-length" and value.isdigit():
            declared = int(value)
    return declared, signature


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The raw body, refused as soon as it is known to exceed `limit` bytes."""
    if declared is not None and declared > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class WebhookReceiver:
    """The ASGI app for POST /api/webhooks/clerk: reads the body (bounded in size and time),
    has the delivery handler answer it, and writes the answer."""

    def __init__(self, handler: DeliveryHandler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        handler = self.handler
        declared, signature = read_headers(scope)
        client = scope.get("client")
        host = client[0] if client else None
        limit = handler.max_body_bytes
        limited = handler.limiter.is_limited(host or "unknown")  # at once, if nobody failed lately
        if limited:
            # Over the failed-verification limit: refused from the headers where they suffice,
            # else a small body read, verified, and applied if genuine.
            refusal = handler.refuse_limited(signature, host, started)
            if refusal is not None:
                await send_json(send, refusal.status, refusal.content, refusal.headers)
                return
            limit = min(limit, LIMITED_BODY_BYTES)
        try:
            async with asyncio.timeout(BODY_READ_SECONDS):
                body = await read_body(receive, limit, declared)
        except BodyTooLarge:
            answer = handler.limited_too_large(started) if limited else handler.too_large(started)
        except TimeoutError:
            answer = handler.too_slow(started)
        except ClientGone:
            return
        else:
            answer = await handler.handle(signature, body, host, started)
        status, content, headers, _, _ = answer  # one unpacking, not three attribute lookups
        await send_json(send, status, content, headers)
