"""Driving a server with wrk: a timed run over a file of signed deliveries, and a burst that sends
each delivery of a file exactly once and reports as it goes."""

from __future__ import annotations

import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

WEBHOOK_PATH = "/api/webhooks/clerk"

# Shared by both scripts: each wrk thread loads the file in init() (the main Lua state, which
# only runs setup() and done(), never holds it), so loading is not part of the measured time.
LOAD_DELIVERIES = r"""
local deliveries, count = {}, 0

function init(args)
  for line in io.lines(args[1]) do
    local id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    count = count + 1
    deliveries[count] = wrk.format("POST", args[2], {
      ["Content-Type"] = "application/json",
      ["svix-id"] = id, ["svix-timestamp"] = ts, ["svix-signature"] = sig,
    }, body)
  end
end

"""

# The line every script ends with (parsed by `parse`): throughput, latency, non-2xx answers
# (counted per thread in the global `non2xx`) and socket errors.
REPORT = r"""
non2xx = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end

local function report(summary, latency)
  local bad = 0
  for _, thread in ipairs(threads) do bad = bad + thread:get("non2xx") end
  local e = summary.errors
  io.write(string.format(
    "WRK requests=%d seconds=%.6f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000, bad,
    e.connect + e.read + e.write + e.timeout))
end
"""

# Cycles through the file for the run's duration (past its end, deliveries repeat: duplicates).
TIMED = (
    LOAD_DELIVERIES
    + REPORT
    + r"""
local i = 0
function request()
  i = i % count + 1
  return deliveries[i]
end

function response(status)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end

function done(summary, latency, requests) report(summary, latency) end
"""
)

# Each delivery once. wrk may call request() once per thread before any connection opens and
# drop the result (Debian's 4.1.0 does), so the first call and every call past the last delivery
# answer `GET /`, which every server here answers 404 or 405 and which is not counted. The thread
# stops once every delivery has been answered; progress is printed every 1,000 answers.
BURST = (
    LOAD_DELIVERIES
    + REPORT
    + r"""
local calls, answered = 0, 0
local idle = wrk.format("GET", "/")

function request()
  calls = calls + 1
  if calls == 1 then io.write("BURST started\n"); io.flush(); return idle end
  return deliveries[calls - 1] or idle
end

function response(status)
  if status == 404 or status == 405 then return end
  answered = answered + 1
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  if answered % 1000 == 0 then io.write(string.format("BURST answered=%d\n", answered)); io.flush() end
  if answered == count then io.write("BURST drained\n"); io.flush(); wrk.thread:stop() end
end

function done(summary, latency, requests) report(summary, latency) end
"""
)


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("bench: wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    return wrk


def parse(output: str) -> WrkResult:
    match = re.search(r"^WRK (.*)$", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    figures = dict(item.split("=") for item in match[1].split())
    return WrkResult(
        requests=int(figures["requests"]),
        seconds=float(figures["seconds"]),
        p50_ms=float(figures["p50_ms"]),
        p90_ms=float(figures["p90_ms"]),
        p99_ms=float(figures["p99_ms"]),
        max_ms=float(figures["max_ms"]),
        non2xx=int(figures["non2xx"]),
        socket_errors=int(figures["socket_errors"]),
    )


def command(
    script: Path, url: str, signed: Path, threads: int, connections: int, seconds: int
) -> list[str]:
    return [
        require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
        "-s", str(script), url, "--", str(signed), WEBHOOK_PATH,
    ]  # fmt: skip


def timed(
    work: Path, url: str, signed: Path, threads: int, connections: int, seconds: int
) -> WrkResult:
    script = work / "timed.lua"
    script.write_text(TIMED)
    done = subprocess.run(
        command(script, url, signed, threads, connections, seconds),
        capture_output=True, text=True, check=False, timeout=seconds + 300,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return parse(done.stdout)


@dataclass
class BurstResult:
    wrk: WrkResult
    drain_seconds: float  # to the last answer seen, if it did not drain
    drained: bool


def burst(
    work: Path,
    url: str,
    signed: Path,
    connections: int,
    on_progress: Callable[[str, float], None],
    limit_seconds: int = 900,
    stall_seconds: float = 30,
) -> BurstResult:
    """Send every delivery in `signed` once, calling on_progress("started"|"answered=N"|"drained",
    monotonic time) as wrk reports it. Gives up once nothing is answered for stall_seconds."""
    script = work / "burst.lua"
    script.write_text(BURST)
    proc = subprocess.Popen(
        command(script, url, signed, 1, connections, limit_seconds),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    marks: dict[str, float] = {}
    output: list[str] = []
    lines: queue.Queue[tuple[str, float] | None] = queue.Queue()

    def read(stream: IO[str]) -> None:
        for line in stream:
            lines.put((line, time.monotonic()))
        lines.put(None)

    readers = [
        threading.Thread(target=read, args=(stream,), daemon=True)
        for stream in (proc.stdout, proc.stderr)
        if stream is not None
    ]
    for reader in readers:
        reader.start()
    open_streams = len(readers)
    try:
        while open_streams:
            try:
                item = lines.get(timeout=stall_seconds)
            except queue.Empty:  # no progress: a delivery was lost (socket error) or it hangs
                proc.send_signal(signal.SIGINT)
                stall_seconds = 60
                continue
            if item is None:
                open_streams -= 1
                continue
            line, now = item
            output.append(line)
            if line.startswith("BURST "):
                event = line.split()[1]
                marks[event] = now
                on_progress(event, now)
                if event == "drained":
                    proc.send_signal(signal.SIGINT)  # wrk stops early and reports on SIGINT
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(output)
    if "started" not in marks:
        raise RuntimeError(f"the burst did not start:\n{text}")
    last = max(marks.values())
    return BurstResult(parse(text), last - marks["started"], "drained" in marks)
