"""Logs: one line per delivery, JSON when not a terminal, and never a secret or an email."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from clerk_sync import logs


def capture(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    return formatter.format(record)


def delivery_record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "clerk_sync.webhook", logging.INFO, __file__, 1, "delivery", None, None
    )
    record.delivery = fields  # type: ignore[attr-defined]
    return record


def test_masking() -> None:
    text = "key whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw and sk_live_abcdefghijkl and ada@example.com"
    masked = logs.mask(text)
    assert "MfKQ9r8GKYqr" not in masked and "whsec_Mf…" in masked
    assert "abcdefghijkl" not in masked and "sk_live_…" in masked
    assert "ada@example.com" not in masked and "<email>" in masked


@pytest.mark.parametrize(
    "address",
    [
        "jöhn.doe@exämple.de",
        "李雷@例子.中国",
        "zoë+tag@müller.co.uk",
        "user@xn--mller-kva.de",
        "ivan@пример.xn--p1ai",
    ],
)
def test_masking_covers_addresses_with_non_ascii_letters(address: str) -> None:
    masked = logs.mask(f"Failing row contains (user_1, {address}, t)")
    assert "@" not in masked and "<email>" in masked


def test_a_delivery_is_one_json_line() -> None:
    line = capture(
        logs.JsonFormatter(),
        delivery_record(svix_id="msg_1", type="user.created", user_id="user_1", outcome="applied",
                        status=200, duration_ms=3.2, error=None),
    )  # fmt: skip
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "delivery"
    assert {k: parsed[k] for k in ("svix_id", "type", "user_id", "outcome", "status")} == {
        "svix_id": "msg_1", "type": "user.created", "user_id": "user_1", "outcome": "applied",
        "status": 200,
    }  # fmt: skip
    assert "error" not in parsed


def test_an_error_carrying_user_data_is_masked() -> None:
    record = delivery_record(svix_id="msg_2", outcome="invalid", status=400,
                             error='invalid input: "bob@corp.io" whsec_abcdefghijklmnop')  # fmt: skip
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        line = capture(formatter, record)
        assert "bob@corp.io" not in line and "abcdefghijklmnop" not in line


@pytest.fixture
def configured() -> Iterator[logging.Handler]:
    """logs.configure() for one test; yields the handler its writer thread writes through."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("info", json_lines=True)
        assert logs._writer is not None
        yield logs._writer.handlers[0]
    finally:
        logs.stop()
        root.handlers[:], level = saved
        root.setLevel(level)


def test_configure_routes_everything_through_the_masking_formatter(
    configured: logging.Handler,
) -> None:
    stream = io.StringIO()
    assert isinstance(configured, logging.StreamHandler)
    configured.setStream(stream)
    logging.getLogger("clerk_sync.test").info("connecting with sk_test_0123456789abcdef")
    logs.flush()
    out = stream.getvalue()
    assert "0123456789abcdef" not in out
    assert json.loads(out)["level"] == "info"


class SlowStream(io.StringIO):
    """A disk or a pipe that takes its time."""

    def write(self, text: str) -> int:
        time.sleep(0.2)
        return super().write(text)


def test_a_slow_output_never_holds_up_the_caller_and_loses_nothing(
    configured: logging.Handler,
) -> None:
    stream = SlowStream()
    assert isinstance(configured, logging.StreamHandler)
    configured.setStream(stream)
    log = logging.getLogger("clerk_sync.test")
    started = time.monotonic()
    for n in range(5):
        log.info("line %d", n)
    logging_took = time.monotonic() - started
    logs.stop()  # as at exit: everything queued is written first
    assert logging_took < 0.5  # written in line, five lines would take 1 s
    lines = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
    assert lines == [f"line {n}" for n in range(5)]


class StalledStream(io.StringIO):
    """An output that takes nothing until it is released."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def write(self, text: str) -> int:
        self.released.wait(10)
        return super().write(text)


def test_a_stalled_output_drops_lines_past_the_limit_and_says_how_many(
    configured: logging.Handler, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = StalledStream()
    assert isinstance(configured, logging.StreamHandler)
    configured.setStream(stream)
    root = logging.getLogger()
    assert logs._writer is not None
    limit = 5
    monkeypatch.setattr(logs._writer.queue, "maxsize", limit)
    log = logging.getLogger("clerk_sync.test")
    for n in range(limit + 10):
        log.info("line %d", n)
    stream.released.set()
    logs.flush()
    log.info("after")
    logs.flush()
    messages = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
    assert messages[-1] == "after"
    dropped = int(messages[-2].removesuffix(" log lines dropped: the output did not keep up"))
    kept = messages[:-2]
    # The queue's five, and the one the writer may have taken before the output stalled.
    assert len(kept) in (limit, limit + 1)
    assert kept == [f"line {n}" for n in range(len(kept))]
    assert len(kept) + dropped == limit + 10
    assert root.handlers


def test_lines_logged_after_the_writer_stops_are_written_directly(
    configured: logging.Handler,
) -> None:
    stream = io.StringIO()
    assert isinstance(configured, logging.StreamHandler)
    configured.setStream(stream)
    logs.stop()  # as at exit
    logging.getLogger("clerk_sync.test").warning("late")
    assert json.loads(stream.getvalue())["message"] == "late"
