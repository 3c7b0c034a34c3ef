"""What a client can hold of a running `clerk-sync serve` before any of clerk-sync's own code
runs: connections that send nothing or dribble their headers, endless headers, more
connections than the open-file limit allows, many large bodies left unfinished, and the
connection after a 408/413/429. Each attack runs against a real server on loopback, bounded in
connections and time; genuine signed deliveries must still be answered 200 meanwhile.

The figures the README states come from `test_a_thousand_idle_and_a_hundred_dribbling`
(run it with `-s` to see them)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import secrets
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests import support

pytestmark = pytest.mark.slow

WEBHOOK_PATH = "/api/webhooks/clerk"
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def enough_file_descriptors() -> None:
    """This process opens a thousand connections or so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))


@contextlib.contextmanager
def server(
    db: str, secret: str, nofile: int | None = None, **env: str
) -> Iterator[support.ServerProcess]:
    process = support.ServerProcess(
        {"CLERK_WEBHOOK_SECRET": secret, "DATABASE_URL": db, **env},
        ["--no-migrate", "--log-level", "warning"],
    )
    try:
        if nofile is not None:  # before the interpreter has even finished starting
            resource.prlimit(process.proc.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
        process.wait_ready()
        yield process
    finally:
        process.stop()


def rss_mb(process: support.ServerProcess) -> float:
    return psutil.Process(process.proc.pid).memory_info().rss / MiB


async def deliver(url: str, key: bytes, client: httpx.AsyncClient | None = None) -> int:
    """One genuine signed delivery (a new user) on a connection of its own; its status."""
    user_id = "user_" + secrets.token_hex(8)
    body = support.dumps(support.user_event("user.created", user_id, 1_700_000_000_000))
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient(timeout=15))
        try:
            response = await client.post(
                url + WEBHOOK_PATH, content=body, headers=support.signed_headers(key, body)
            )
        except httpx.HTTPError as exc:
            raise AssertionError(f"a genuine delivery failed: {exc!r}") from exc
        return response.status_code


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before it closed the connection; None if it is still open."""
    received = b""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                return received
            received += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        return received
    return None


async def dribble(writer: asyncio.StreamWriter, stop: asyncio.Event, every: float) -> None:
    """A request's headers, one short line at a time, never finished."""
    with contextlib.suppress(ConnectionError):
        writer.write(f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: x\r\n".encode())
        while not stop.is_set():
            writer.write(b"x-a: b\r\n")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)


def test_silent_dribbling_and_idle_connections_are_closed_at_the_header_deadline(
    db: str, secret: tuple[str, bytes]
) -> None:
    async def go(url: str, port: int) -> None:
        silent = [await connect(port) for _ in range(20)]
        dribbling = [await connect(port) for _ in range(20)]
        idle = await connect(port)  # one whole request, then nothing (keep-alive)
        idle[1].write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        stop = asyncio.Event()
        dribblers = [asyncio.create_task(dribble(w, stop, 0.2)) for _, w in dribbling]
        started = time.monotonic()
        try:
            silent_ends = await asyncio.gather(*(closed_within(r, 4) for r, _ in silent))
            dribbling_ends = await asyncio.gather(*(closed_within(r, 4) for r, _ in dribbling))
            idle_end = await closed_within(idle[0], 4)
            elapsed = time.monotonic() - started
            assert await deliver(url, secret[1]) == 200
        finally:
            stop.set()
            await asyncio.gather(*dribblers)
            for _, writer in [*silent, *dribbling, idle]:
                writer.close()
        assert all(end == b"" for end in silent_ends), "silent connections still open after 4 s"
        assert all(end is not None for end in dribbling_ends), "dribbling connections still open"
        for end in dribbling_ends:
            assert end is not None
            assert end.startswith(b"HTTP/1.1 408"), end
            assert b"connection: close" in end.lower()
            assert end.endswith(b'{"error":"the request\'s headers took too long to arrive"}')
        assert idle_end is not None and idle_end.startswith(b"HTTP/1.1 200"), idle_end
        assert elapsed < 4

    with server(db, secret[0], CLERK_SYNC_HEADER_TIMEOUT="1") as s:
        asyncio.run(go(s.url, s.port))


def test_endless_headers_are_cut_off_and_hold_no_memory(db: str, secret: tuple[str, bytes]) -> None:
    async def endless_header(port: int) -> bytes | None:
        """16 MiB of one header's value, never finished; what the server answered."""
        reader, writer = await connect(port)
        writer.write(f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: x\r\nx-long: ".encode())
        with contextlib.suppress(ConnectionError):
            for _ in range(256):
                writer.write(b"a" * 65536)
                await writer.drain()
        answer = await closed_within(reader, 5)
        writer.close()
        return answer

    async def just_over(port: int) -> bytes | None:
        reader, writer = await connect(port)
        writer.write(f"POST {WEBHOOK_PATH} HTTP/1.1\r\nx-long: {'a' * 17000}".encode())
        answer = await closed_within(reader, 5)
        writer.close()
        return answer

    async def go(url: str, port: int) -> tuple[list[bytes | None], bytes | None]:
        endless = await asyncio.gather(*(endless_header(port) for _ in range(4)))
        over = await just_over(port)
        assert await deliver(url, secret[1]) == 200
        return endless, over

    with server(db, secret[0]) as s:
        before = rss_mb(s)
        endless, over = asyncio.run(go(s.url, s.port))
        grew = rss_mb(s) - before
    print(f"RSS {before:.0f} MB before, grew {grew:.1f} MB after 4 endless 16 MiB headers")
    assert all(end is not None for end in endless), "a connection sending an endless header"
    assert over is not None and over.startswith(b"HTTP/1.1 431"), over
    assert b"connection: close" in over.lower()
    # 4 x 16 MiB had taken the server from 61 MB to 153 MB; now 16 KiB of headers each.
    assert grew < 10, f"the server grew by {grew:.0f} MB"


def test_at_a_low_open_file_limit_silent_connections_do_not_shut_out_deliveries(
    db: str, secret: tuple[str, bytes]
) -> None:
    async def go(url: str, port: int) -> tuple[int, int, int]:
        held = []
        for _ in range(200):
            with contextlib.suppress(OSError):
                held.append(await connect(port))
        try:
            delivered = await deliver(url, secret[1])
            async with httpx.AsyncClient(timeout=15) as client:
                healthz = (await client.get(url + "/healthz")).status_code
            return delivered, healthz, len(held)
        finally:
            for _, writer in held:
                writer.close()

    with server(db, secret[0], nofile=128, CLERK_SYNC_HEADER_TIMEOUT="30") as s:
        delivered, healthz, held = asyncio.run(go(s.url, s.port))
        output = s.output()
    assert held == 200
    # 200 silent connections at a limit of 128 had made both fail with a connection reset.
    assert (delivered, healthz) == (200, 200)
    assert "the open-file limit (128) leaves room for" in output


def test_unfinished_large_bodies_stay_within_the_budget(db: str, secret: tuple[str, bytes]) -> None:
    body_size = MiB - 1

    async def unfinished_body(port: int) -> bytes | None:
        reader, writer = await connect(port)
        head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: {MiB}\r\n\r\n"
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + b"{" * body_size)
            await writer.drain()
        answer = await closed_within(reader, 8)
        writer.close()
        return answer

    async def go(url: str, port: int) -> tuple[list[bytes | None], list[int], float]:
        attack = [asyncio.create_task(unfinished_body(port)) for _ in range(100)]
        await asyncio.sleep(1.5)
        peak = rss_mb(s)
        during = [await deliver(url, secret[1]) for _ in range(10)]
        return await asyncio.gather(*attack), during, peak

    with server(db, secret[0]) as s:  # the default budget: 16 MiB
        before = rss_mb(s)
        answers, during, peak = asyncio.run(go(s.url, s.port))
    print(f"RSS {before:.0f} MB before, {peak:.0f} MB under 100 unfinished 1 MiB bodies")
    assert during == [200] * 10
    shed = [a for a in answers if a and a.startswith(b"HTTP/1.1 503")]
    # Past the 16 MiB budget, every further unfinished 1 MiB body pushes out the oldest one.
    assert len(shed) >= 100 - 16 - 2, answers[:3]
    assert all(b"retry-after: 5" in a and b"connection: close" in a for a in shed)
    # 100 x (1 MiB - 1) had taken the server from 57 MB to 163 MB; the budget is 16 MiB.
    assert peak - before < 40, f"the server grew by {peak - before:.0f} MB"


def test_the_connection_is_closed_after_408_413_and_429(db: str, secret: tuple[str, bytes]) -> None:
    async def answer_then_eof(port: int, request: bytes, wait: float) -> bytes | None:
        reader, writer = await connect(port)
        writer.write(request)
        answer = await closed_within(reader, wait)
        writer.close()
        return answer

    forged = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nsvix-id: msg_1\r\n"
        "svix-timestamp: 1\r\nsvix-signature: v1,AAAA\r\n\r\n{}"
    ).encode()

    async def go(port: int) -> tuple[bytes | None, bytes | None, bytes | None]:
        slow_body = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{{"
        too_large = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: {2 * MiB}\r\n\r\n"
        return await asyncio.gather(
            answer_then_eof(port, slow_body.encode(), 15),
            answer_then_eof(port, too_large.encode(), 5),
            answer_then_eof(port, forged * 2, 5),  # the second is over the limit of 1
        )

    with server(db, secret[0], CLERK_SYNC_FAILED_VERIFICATION_LIMIT="1") as s:
        timed_out, too_large, limited = asyncio.run(go(s.port))
    for answer, status in ((timed_out, b"408"), (too_large, b"413"), (limited, b"429")):
        assert answer is not None, f"the connection stayed open after {status.decode()}"
        last = answer[answer.rfind(b"HTTP/1.1 ") :]
        assert last.startswith(b"HTTP/1.1 " + status), answer
        assert b"connection: close" in last.lower(), answer


def test_a_thousand_idle_and_a_hundred_dribbling(db: str, secret: tuple[str, bytes]) -> None:
    """The README's figures: with 1,000 idle and 100 dribbling connections kept open (each
    opened again as soon as the server closes it), genuine deliveries still answer 200, and the
    server's memory stays under RSS_LIMIT_MB. Default limits."""
    idle_count, dribbling_count, seconds = 1000, 100, 12
    rss_limit_mb = 100

    async def hold(port: int, stop: asyncio.Event, dribbling: bool) -> int:
        """One attacker's connection, opened again whenever it is closed; how many it opened."""
        opened = 0
        while not stop.is_set():
            try:
                reader, writer = await connect(port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            opened += 1
            if dribbling:
                ends = asyncio.create_task(dribble(writer, stop, 0.5))
            with contextlib.suppress(ConnectionError):
                read = asyncio.create_task(reader.read())
                await asyncio.wait(
                    [read, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED"
                )
                read.cancel()
            if dribbling:
                await ends
            writer.close()
        return opened

    async def go(url: str, port: int) -> tuple[list[int], float, int, int]:
        stop = asyncio.Event()
        holders = [asyncio.create_task(hold(port, stop, False)) for _ in range(idle_count)]
        holders += [asyncio.create_task(hold(port, stop, True)) for _ in range(dribbling_count)]
        await asyncio.sleep(2)
        statuses, peak, most = [], 0.0, 0
        ends = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=15) as client:
            while time.monotonic() < ends:
                statuses.append(await deliver(url, secret[1]))  # a fresh connection each
                statuses.append(await deliver(url, secret[1], client))  # kept alive
                peak = max(peak, rss_mb(s))
                most = max(most, len(psutil.Process(s.proc.pid).net_connections()))
                await asyncio.sleep(0.05)
        stop.set()
        opened = sum(await asyncio.gather(*holders))
        return statuses, peak, most, opened

    with server(db, secret[0]) as s:
        before = rss_mb(s)
        statuses, peak, most, opened = asyncio.run(go(s.url, s.port))
    print(
        f"{len(statuses)} genuine deliveries, answered {set(statuses)}; server RSS {before:.0f} MB "
        f"before, at most {peak:.0f} MB with {most} connections open; {opened} attacker "
        f"connections opened in all"
    )
    assert statuses and set(statuses) == {200}
    assert most >= idle_count + dribbling_count
    assert peak < rss_limit_mb, f"the server's RSS reached {peak:.0f} MB"
