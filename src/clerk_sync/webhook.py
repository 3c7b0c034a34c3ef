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
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

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


class BodyTooLarge(Exception):
    pass


def json_response(
    status: int, content: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class WebhookReceiver:
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

    async def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        line: dict[str, Any] = {}
        metrics.IN_FLIGHT.inc()
        try:
            response, outcome = await self._handle(request, line)
        finally:
            metrics.IN_FLIGHT.dec()
        elapsed = time.perf_counter() - started
        if line.get("type"):
            metrics.DELIVERIES.labels(line["metric_type"], outcome).inc()
            metrics.LATENCY.observe(elapsed)
        line.update(
            outcome=outcome, status=response.status_code, duration_ms=round(elapsed * 1000, 1)
        )
        log.log(
            logging.WARNING
            if response.status_code >= 500 or outcome == "invalid"
            else logging.INFO,
            "delivery",
            extra={"delivery": line},
        )
        return response

    async def _handle(self, request: Request, line: dict[str, Any]) -> tuple[Response, str]:
        """Answer one delivery; `line` collects what its log line says. Returns the response
        and its outcome: one of the contract's four, or why it was not applied."""
        try:
            async with asyncio.timeout(BODY_READ_SECONDS):
                body = await read_body(request, self.max_body_bytes)
        except BodyTooLarge:
            metrics.VERIFICATION_FAILURES.labels("body_too_large").inc()
            error = f"body larger than {self.max_body_bytes} bytes"
            return json_response(413, {"error": error}), "too_large"
        except TimeoutError:
            metrics.VERIFICATION_FAILURES.labels("body_timeout").inc()
            error = f"the body took longer than {BODY_READ_SECONDS} s to arrive"
            return json_response(408, {"error": error}), "body_timeout"

        try:
            delivery = self.verifier.verify(request.headers, body)
        except VerificationError as exc:
            return self._refuse(request, exc)
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
            return self._unavailable(), "unavailable"
        except EventRejected as exc:
            line["error"] = f"the database refused it: {exc}"
            return await self._dead_letter(message_id, body, line["error"])
        if outcome is Outcome.APPLIED:
            metrics.LAST_APPLIED.set_to_current_time()
        return json_response(200, {"outcome": outcome.value}), outcome.value

    def _refuse(self, request: Request, exc: VerificationError) -> tuple[Response, str]:
        metrics.VERIFICATION_FAILURES.labels(exc.reason).inc()
        client = request.client.host if request.client else "unknown"
        if self.limiter.record_failure(client):
            error = "too many failed verifications from this client"
            return json_response(429, {"error": error}, {"Retry-After": "60"}), "rate_limited"
        return json_response(exc.status, {"error": exc.message}), exc.reason

    def _unavailable(self) -> Response:
        return json_response(
            503,
            {"error": "database unavailable, retry later"},
            {"Retry-After": RETRY_AFTER_SECONDS},
        )

    async def _dead_letter(self, message_id: str, body: bytes, error: str) -> tuple[Response, str]:
        """A genuine delivery that can never apply: keep it, and tell Svix to stop retrying."""
        try:
            await self.store.record_invalid(message_id, body, error)
        except StoreUnavailable:
            metrics.DATABASE_ERRORS.inc()
            # Not kept yet: let Svix bring it back when the database can take it.
            return self._unavailable(), "unavailable"
        except EventRejected:
            log.error("delivery %s could not even be kept as a dead letter", message_id)
        metrics.DEAD_LETTERS.inc()
        return json_response(
            400, {"error": f"not a Clerk event: {error}"}, ABORT_RETRIES
        ), "invalid"
