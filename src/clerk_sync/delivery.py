"""One webhook delivery, whatever the framework: verify → parse → apply → answer.

`DeliveryHandler.handle` takes a delivery's headers, its raw body and the client's address and
returns the `Answer` to send. Every entry point calls it: the ASGI receiver (`webhook.py`, which
`clerk-sync serve`, the Vercel function and the FastAPI example run) and the Flask example; a
framework of your own needs only a few lines (docs/deploy.md). Metrics and the delivery's log
line are produced here, so every entry point counts and logs the same.

Svix retries every answer that is not 2xx for about 27 hours, so each answer is chosen for what
the retry will do: 2xx once the event is durably handled (or known to be a duplicate, stale, or
ignored), 503 when the database may do better later, and 4xx for what no retry can fix. A
verified delivery that can never apply is kept as a dead letter (clerk_sync.inbox, outcome
`invalid`, replayable) and answered 400 with `webhook-delivery: abort-message`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from clerk_sync import metrics
from clerk_sync.custom_columns import EVENT_WRITES, NO_COLUMNS, CustomColumns
from clerk_sync.events import NOT_A_CLERK_EVENT, NotAClerkEvent, Outcome, parse_event
from clerk_sync.limits import FailedVerificationLimiter
from clerk_sync.storage import EventRejected, Store, StoreUnavailable
from clerk_sync.verify import VerificationError, Verifier

if TYPE_CHECKING:
    from clerk_sync.settings import Settings

# The logger's name predates this module: log configurations and filters know it.
log = logging.getLogger("clerk_sync.webhook")

MAX_BODY_BYTES = 1024 * 1024
FAILED_VERIFICATION_LIMIT = 20  # per client and minute
# What is read of a body from a client over that limit: Clerk's events are a few KB.
LIMITED_BODY_BYTES = 64 * 1024
RETRY_AFTER_SECONDS = "5"
# A client that has not sent its whole body by then is holding a connection, not delivering.
BODY_READ_SECONDS = 10
# Tells Svix to stop retrying this one message (and nothing more: never "disable").
ABORT_RETRIES = {"webhook-delivery": "abort-message"}
UNAVAILABLE = "database unavailable, retry later"


class Answer(NamedTuple):
    """What to answer a delivery with."""

    status: int
    content: dict[str, Any]  # the JSON body
    headers: dict[str, str] | None  # extra headers (Retry-After, webhook-delivery), if any
    outcome: str  # one of the contract's four, or why the delivery was not applied
    log: dict[str, Any]  # the fields of the delivery's log line

    @property
    def body(self) -> bytes:
        """The JSON body, encoded."""
        return orjson.dumps(self.content)


# An Answer made without the Python-level `__new__` a NamedTuple gets: ~0.25 µs less per
# delivery, on the hot path.
_new_tuple = tuple.__new__

# What an answer is decided from: status, JSON body, extra headers, outcome.
_Decision = tuple[int, dict[str, Any], dict[str, str] | None, str]


def _rate_limited() -> _Decision:
    error = "too many failed verifications from this client"
    return 429, {"error": error}, {"Retry-After": "60"}, "rate_limited"


def _unavailable() -> _Decision:
    return 503, {"error": UNAVAILABLE}, {"Retry-After": RETRY_AFTER_SECONDS}, "unavailable"


@cache
def _delivery_counter(metric_type: str, outcome: str) -> Any:
    return metrics.DELIVERIES.labels(metric_type, outcome)


class DeliveryHandler:
    """Answers deliveries to POST /api/webhooks/clerk: holds the verifier, the store and the
    failed-verification limiter. Build one per process (`from_settings`) and call `handle`
    for each delivery; the store must have been opened on the event loop `handle` runs on."""

    def __init__(
        self,
        verifier: Verifier,
        store: Store,
        limiter: FailedVerificationLimiter | None = None,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        custom_columns: CustomColumns = NO_COLUMNS,
    ) -> None:
        self.verifier = verifier
        self.store = store
        self.limiter = limiter or FailedVerificationLimiter(FAILED_VERIFICATION_LIMIT)
        self.max_body_bytes = max_body_bytes  # for the caller to bound the body it reads
        self.custom_columns = custom_columns  # to count the values that do not convert

    @classmethod
    def from_settings(cls, settings: Settings, store: Store) -> DeliveryHandler:
        """The handler `clerk-sync serve` would use: the configured signing secrets, body
        limit and failed-verification limit, writing through `store`."""
        return cls(
            Verifier(settings.signing_keys),
            store,
            FailedVerificationLimiter(settings.failed_verification_limit),
            max_body_bytes=settings.max_body_bytes,
            custom_columns=settings.custom_columns,
        )

    async def handle(
        self,
        headers: Mapping[str, str],
        body: bytes,
        client: str | None,
        started: float | None = None,
    ) -> Answer:
        """Verify, parse and apply one delivery, and say what to answer.

        `headers` needs only the `svix-*`/`webhook-*` ones (lower-case names, or a
        case-insensitive mapping such as a framework's request headers); `body` is the raw
        body, all of it, no larger than `max_body_bytes`; `client` is the sender's address,
        for the failed-verification limit. `started` (from `time.perf_counter()`) is when the
        request began, if earlier than this call: the latency metric counts from there."""
        if started is None:
            started = time.perf_counter()
        line: dict[str, Any] = {}
        metrics.LIVE.in_flight += 1
        try:
            try:
                delivery = self.verifier.verify(headers, body)
            except VerificationError as exc:
                return self._finish(started, line, *self._refuse(exc, client))
            message_id = line["svix_id"] = delivery.message_id

            try:
                event = parse_event(body)
            except NotAClerkEvent as exc:
                line["error"] = error = str(exc)
                return self._finish(
                    started,
                    line,
                    *await self._dead_letter(
                        message_id, body, error, f"{NOT_A_CLERK_EVENT}{error}"
                    ),
                )
            # Item by item, here and in _finish: `update(**fields)` builds a dict of its own.
            line["type"], line["metric_type"] = event.type, event.metric_type
            line["user_id"] = event.user_id

            try:
                outcome = await self.store.apply(message_id, event)
            except StoreUnavailable as exc:
                metrics.DATABASE_ERRORS.inc()
                line["error"] = str(exc)
                return self._finish(started, line, *_unavailable())
            except EventRejected as exc:
                # A constraint or trigger of the app's: kept until the cause is fixed and the
                # event replayed. The description names the constraint, never the row's values.
                error = str(exc)
                if not error.startswith(NOT_A_CLERK_EVENT):  # the write path's own checks
                    error = f"the database refused it: {error}"
                line["error"] = error
                return self._finish(
                    started, line, *await self._dead_letter(message_id, body, error, error)
                )
            if outcome is Outcome.APPLIED:
                metrics.LIVE.last_applied = time.time()
                if self.custom_columns and event.type in EVENT_WRITES:
                    self._count_unconvertible(event.type, event.data, line)
            return self._finish(started, line, 200, {"outcome": outcome.value}, None, outcome.value)
        finally:
            metrics.LIVE.in_flight -= 1

    def _count_unconvertible(
        self, event_type: str, data: dict[str, Any], line: dict[str, Any]
    ) -> None:
        """The custom columns this applied event set to their default because its value did
        not convert: counted, and named (never the value) in the delivery's log line."""
        found = self.custom_columns.unconvertible_in(event_type, data)
        for column in found:
            metrics.CUSTOM_COLUMN_UNCONVERTIBLE.labels(column.table, column.name).inc()
        if found:
            line["unconvertible"] = ",".join(column.label for column in found)

    def too_large(self, started: float | None = None) -> Answer:
        """The answer to a body larger than `max_body_bytes` (refuse it from its declared
        Content-Length, before reading it, where the framework allows)."""
        metrics.VERIFICATION_FAILURES.labels("body_too_large").inc()
        error = f"body larger than {self.max_body_bytes} bytes"
        return self._finish(
            started or time.perf_counter(), {}, 413, {"error": error}, None, "too_large"
        )

    def too_slow(self, started: float | None = None) -> Answer:
        """The answer to a body that took longer than BODY_READ_SECONDS to arrive."""
        metrics.VERIFICATION_FAILURES.labels("body_timeout").inc()
        error = f"the body took longer than {BODY_READ_SECONDS} s to arrive"
        return self._finish(
            started or time.perf_counter(), {}, 408, {"error": error}, None, "body_timeout"
        )

    def is_limited(self, client: str | None) -> bool:
        """Whether `client` is over the failed-verification limit: then its body should be read
        only if `refuse_limited` passes its headers, and only up to LIMITED_BODY_BYTES. Costs
        next to nothing while nobody has failed lately."""
        return self.limiter.is_limited(client or "unknown")

    def refuse_limited(
        self, headers: Mapping[str, str], client: str | None, started: float | None = None
    ) -> Answer | None:
        """For a client over the limit, before its body is read: 429 for whatever the headers
        alone refuse (missing, malformed, out of tolerance, no `v1` signature), not counted;
        None when a body is worth reading (it may be a genuine delivery, never throttled)."""
        try:
            self.verifier.check_headers(headers)
        except VerificationError as exc:
            metrics.VERIFICATION_FAILURES.labels(exc.reason).inc()
            return self._finish(started or time.perf_counter(), {}, *_rate_limited())
        return None

    def limited_too_large(self, started: float | None = None) -> Answer:
        """The answer to a client over the limit whose body exceeds LIMITED_BODY_BYTES."""
        metrics.VERIFICATION_FAILURES.labels("body_too_large").inc()
        return self._finish(started or time.perf_counter(), {}, *_rate_limited())

    def _refuse(self, exc: VerificationError, client: str | None) -> _Decision:
        metrics.VERIFICATION_FAILURES.labels(exc.reason).inc()
        client = client or "unknown"
        # A client already over the limit is not counted again: a refused request does not
        # extend the limit (it lasts a minute from the last failure that counted).
        if self.limiter.is_limited(client) or self.limiter.record_failure(client):
            return _rate_limited()
        return exc.status, {"error": exc.message}, None, exc.reason

    async def _dead_letter(
        self, message_id: str, body: bytes, error: str, answer: str
    ) -> _Decision:
        """A genuine delivery that can never apply: keep it (with `error`), and tell Svix to
        stop retrying (with `answer`)."""
        try:
            await self.store.record_invalid(message_id, body, error)
        except StoreUnavailable:
            metrics.DATABASE_ERRORS.inc()
            # Not kept yet: let Svix bring it back when the database can take it.
            return _unavailable()
        except EventRejected:
            log.error("delivery %s could not even be kept as a dead letter", message_id)
        metrics.DEAD_LETTERS.inc()
        return 400, {"error": answer}, dict(ABORT_RETRIES), "invalid"

    def _finish(
        self,
        started: float,
        line: dict[str, Any],
        status: int,
        content: dict[str, Any],
        headers: dict[str, str] | None,
        outcome: str,
    ) -> Answer:
        """Count the answer and write its log line (the logs' own thread formats it)."""
        elapsed = time.perf_counter() - started
        if line.get("type"):
            _delivery_counter(line["metric_type"], outcome).inc()
            metrics.LATENCY.observe(elapsed)
        line["outcome"], line["status"] = outcome, status
        # round(x, 1) on a float goes through decimal digits: ~3x the cost of this.
        line["duration_ms"] = round(elapsed * 10_000) / 10
        log.log(
            logging.WARNING if status >= 500 or outcome == "invalid" else logging.INFO,
            "delivery",
            extra={"delivery": line},
        )
        return _new_tuple(Answer, (status, content, headers, outcome, line))
