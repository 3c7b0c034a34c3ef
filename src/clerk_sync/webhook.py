"""POST /api/webhooks/clerk: one delivery, top to bottom.

read the raw body (bounded) → verify the signature → parse the event → apply it once → answer.

Svix retries every answer that is not 2xx for about 27 hours, so each answer is chosen for what
the retry will do: 2xx once the event is durably handled (or known to be a duplicate, stale, or
ignored), 503 when the database may do better later, and 4xx for what no retry can fix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import cache, lru_cache
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from clerk_sync import metrics
from clerk_sync.events import NotAClerkEvent, Outcome, parse_event
from clerk_sync.limits import FailedVerificationLimiter
from clerk_sync.storage import EventRejected, Store, StoreUnavailable
from clerk_sync.verify import VerificationError, Verifier

log = logging.getLogger("clerk_sync.webhook")

RETRY_AFTER_SECONDS = "5"
# A client that has not sent its whole body by then is holding a connection, not delivering.
BODY_READ_SECONDS = 10
# Tells Svix to stop retrying this one message (and nothing more: never "disable").
ABORT_RETRIES = {"webhook-delivery": "abort-message"}
# Answers after which the connection is closed: the client was slow, too big or hostile.
_HANG_UP = frozenset((408, 413, 429))
# An answer: status, JSON body, extra headers, and the outcome (for the log line and metrics).
Answer = tuple[int, dict[str, Any], dict[str, str] | None, str]
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
    extra = tuple((headers or {}).items())
    extra += (("Connection", "close"),) if status in _HANG_UP else ()
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


@cache
def _delivery_counter(metric_type: str, outcome: str) -> Any:
    return metrics.DELIVERIES.labels(metric_type, outcome)


class WebhookReceiver:
    """The ASGI app for POST /api/webhooks/clerk."""

    def __init__(
        self,
        verifier: Verifier,
        store: Store,
        limiter: FailedVerificationLimiter,
        *,
        max_body_bytes: int,
    ) -> None:
        self.verifier = verifier
        self.store = store
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        line: dict[str, Any] = {}
        metrics.LIVE.in_flight += 1
        try:
            status, content, headers, outcome = await self._handle(scope, receive, line)
        except ClientGone:
            return
        finally:
            metrics.LIVE.in_flight -= 1
        await send_json(send, status, content, headers)
        elapsed = time.perf_counter() - started
        if line.get("type"):
            _delivery_counter(line["metric_type"], outcome).inc()
            metrics.LATENCY.observe(elapsed)
        line.update(outcome=outcome, status=status, duration_ms=round(elapsed * 1000, 1))
        log.log(
            logging.WARNING if status >= 500 or outcome == "invalid" else logging.INFO,
            "delivery",
            extra={"delivery": line},
        )

    async def _handle(self, scope: Scope, receive: Receive, line: dict[str, Any]) -> Answer:
        """Answer one delivery; `line` collects what its log line says. Returns the answer's
        status, body and headers, and its outcome: one of the contract's four, or why it was
        not applied."""
        declared, signature = read_headers(scope)
        try:
            async with asyncio.timeout(BODY_READ_SECONDS):
                body = await read_body(receive, self.max_body_bytes, declared)
        except BodyTooLarge:
            metrics.VERIFICATION_FAILURES.labels("body_too_large").inc()
            error = f"body larger than {self.max_body_bytes} bytes"
            return 413, {"error": error}, None, "too_large"
        except TimeoutError:
            metrics.VERIFICATION_FAILURES.labels("body_timeout").inc()
            error = f"the body took longer than {BODY_READ_SECONDS} s to arrive"
            return 408, {"error": error}, None, "body_timeout"

        try:
            delivery = self.verifier.verify(signature, body)
        except VerificationError as exc:
            return self._refuse(scope, exc)
        message_id = line["svix_id"] = delivery.message_id

        try:
            event = parse_event(body)
        except NotAClerkEvent as exc:
            line["error"] = str(exc)
            return await self._dead_letter(message_id, body, str(exc))
        line.update(type=event.type, metric_type=event.metric_type, user_id=event.user_id)

        try:
            outcome = await self.store.apply(message_id, event)
        except StoreUnavailable as exc:
            metrics.DATABASE_ERRORS.inc()
            line["error"] = str(exc)
            return self._unavailable("unavailable")
        except EventRejected as exc:
            line["error"] = f"the database refused it: {exc}"
            return await self._dead_letter(message_id, body, line["error"])
        if outcome is Outcome.APPLIED:
            metrics.LIVE.last_applied = time.time()
        return 200, {"outcome": outcome.value}, None, outcome.value

    def _refuse(self, scope: Scope, exc: VerificationError) -> Answer:
        metrics.VERIFICATION_FAILURES.labels(exc.reason).inc()
        client = scope.get("client")
        if self.limiter.record_failure(client[0] if client else "unknown"):
            error = "too many failed verifications from this client"
            return 429, {"error": error}, {"Retry-After": "60"}, "rate_limited"
        return exc.status, {"error": exc.message}, None, exc.reason

    def _unavailable(self, outcome: str) -> Answer:
        error = "database unavailable, retry later"
        return 503, {"error": error}, {"Retry-After": RETRY_AFTER_SECONDS}, outcome

    async def _dead_letter(self, message_id: str, body: bytes, error: str) -> Answer:
        """A genuine delivery that can never apply: keep it, and tell Svix to stop retrying."""
        try:
            await self.store.record_invalid(message_id, body, error)
        except StoreUnavailable:
            metrics.DATABASE_ERRORS.inc()
            # Not kept yet: let Svix bring it back when the database can take it.
            return self._unavailable("unavailable")
        except EventRejected:
            log.error("delivery %s could not even be kept as a dead letter", message_id)
        metrics.DEAD_LETTERS.inc()
        return 400, {"error": f"not a Clerk event: {error}"}, ABORT_RETRIES, "invalid"
