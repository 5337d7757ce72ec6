"""The lean HTTP/1.1 client's connections (``campaigns/transports/http1.py``) against scripted loopback servers.

The transports' behaviour against the provider simulator (answers, classification, timeouts after acceptance,
concurrency) is covered with every backend in ``test_transports_simulator.py``; here: what only a server that
misbehaves on purpose shows -- connection reuse and its limits, closes, resets, silence, TLS verification.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from campaigns.errors import TransientDeliveryError
from campaigns.transports.http1 import IDLE_KEEPALIVE_S, Http1Poster
from tests.integration.test_transports_simulator import _self_signed_cert

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Reply = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[bool]]  # (request number, request) -> keep open?


class Scripted:
    """A loopback HTTP server whose answers a test scripts; counts connections and requests."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.open_now = 0
        self.most_open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.reply(len(self.requests), request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


@asynccontextmanager
async def scripted(reply: Reply, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[Scripted, int]]:
    server_state = Scripted(reply)
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield server_state, server.sockets[0].getsockname()[1]
        # The clients are closed by now: their connections' handlers end (bounded) before the loop does.
        await asyncio.wait_for(_until(lambda: server_state.open_now == 0), 5)
    finally:
        server.close()


async def answer_ok(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(OK)
    await writer.drain()
    return True


def poster(port: int, *, timeout_s: float = 5.0, connections: int = 10, scheme: str = "http", **kw) -> Http1Poster:
    return Http1Poster(
        f"{scheme}://127.0.0.1:{port}/sms/Messages.json?x=1",
        {"Authorization": "Basic c2VjcmV0"},
        timeout_s,
        connections,
        **kw,
    )


async def test_requests_reuse_one_keep_alive_connection_and_carry_their_headers() -> None:
    async with scripted(answer_ok) as (server, port):
        client = poster(port)
        for i in range(3):
            status, body, _ = await client.post(b"To=%2B1", {"Idempotency-Key": f"m-{i}"})
            assert (status, body) == (200, b"ok")
        await client.aclose()
    assert server.connections == 1
    head = server.requests[2].decode()
    assert head.startswith("POST /sms/Messages.json?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    for line in (
        "Authorization: Basic c2VjcmV0",
        "Accept-Encoding: identity",
        "Idempotency-Key: m-2",
        "Content-Length: 7",
    ):
        assert f"\r\n{line}\r\n" in head
    assert head.endswith("\r\n\r\nTo=%2B1")


async def test_concurrent_requests_open_at_most_max_connections() -> None:
    async def slow_ok(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0)  # let the other requests queue up
        return await answer_ok(n, request, writer)

    async with scripted(slow_ok) as (server, port):
        client = poster(port, connections=2)
        results = await asyncio.gather(*(client.post(b"x", {}) for _ in range(12)))
        await client.aclose()
    assert [status for status, _, _ in results] == [200] * 12
    assert server.most_open <= 2 and len(server.requests) == 12


@pytest.mark.parametrize(
    "first_answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nok",  # delimited by the close
    ],
)
async def test_a_connection_the_server_ends_is_not_reused(first_answer: bytes) -> None:
    async def reply(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(first_answer if n == 1 else OK)
        await writer.drain()
        return n != 1

    async with scripted(reply) as (server, port):
        client = poster(port)
        assert (await client.post(b"x", {}))[:2] == (200, b"ok")
        assert (await client.post(b"x", {}))[:2] == (200, b"ok")
        await client.aclose()
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    async def once(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK)
        await writer.drain()
        return False  # the server closes every connection after its first answer, without saying so

    async with scripted(once) as (server, port):
        client = poster(port)
        assert (await client.post(b"x", {}))[0] == 200
        # The client's loop has seen the end of stream of its idle connection (the test's condition, not a
        # guess: a request written before that would meet the close, as it may in production).
        await asyncio.wait_for(_until(lambda: not any(c.usable for c, _ in client._idle)), 5)
        assert (await client.post(b"x", {}))[0] == 200
        await client.aclose()
    assert server.connections == 2


async def test_a_connection_idle_too_long_is_closed_not_reused() -> None:
    async with scripted(answer_ok) as (server, port):
        client = poster(port)
        assert (await client.post(b"x", {}))[0] == 200
        ((connection, since),) = client._idle
        client._idle[0] = (connection, since - IDLE_KEEPALIVE_S)  # as if unused for that long
        assert (await client.post(b"x", {}))[0] == 200
        assert not connection.usable  # closed by the client, not left to the server
        await client.aclose()
    assert server.connections == 2


@pytest.mark.parametrize(
    "misbehaviour",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
)
async def test_closed_before_the_whole_answer_is_a_connection_error(misbehaviour: bytes) -> None:
    async def cut(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(misbehaviour)
        await writer.drain()
        return False

    async with scripted(cut) as (_, port):
        client = poster(port)
        with pytest.raises(TransientDeliveryError) as info:
            await client.post(b"x", {})
        assert info.value.reason == "connection_error"
        await client.aclose()


async def test_garbage_answer_is_a_connection_error() -> None:
    async def garbage(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        return True

    async with scripted(garbage) as (_, port):
        client = poster(port)
        with pytest.raises(TransientDeliveryError) as info:
            await client.post(b"x", {})
        assert info.value.reason == "connection_error"
        await client.aclose()


async def test_silence_is_a_timeout_and_frees_the_connection_slot() -> None:
    async def silent_then_ok(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            return True  # never answers the first request
        return await answer_ok(n, request, writer)

    async with scripted(silent_then_ok) as (server, port):
        client = poster(port, timeout_s=0.2, connections=1)
        with pytest.raises(TransientDeliveryError) as info:
            await client.post(b"x", {})
        assert info.value.reason == "timeout"
        assert (await client.post(b"x", {}))[0] == 200  # on a new connection: the silent one was dropped
        await client.aclose()
    assert server.connections == 2


async def test_a_deadline_sooner_than_the_timeout_cuts_the_whole_call_by_then() -> None:
    """The sender hands its lease-bounded budget down as ``deadline``: the call ends by it, whichever part of the
    call (waiting for a slot, the exchange) it is in, though ``timeout_s`` is far longer."""
    async def silent(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        return True  # reads on, never answers

    async with scripted(silent) as (server, port):
        client = poster(port, timeout_s=60.0, connections=1)
        loop = asyncio.get_running_loop()
        first_deadline = loop.time() + 2.0
        first = asyncio.ensure_future(client.post(b"x", {}, first_deadline))
        await asyncio.wait_for(_until(lambda: len(server.requests) == 1), 5)  # it holds the only slot
        with pytest.raises(TransientDeliveryError) as waiting:
            await client.post(b"x", {}, loop.time() + 0.1)
        assert waiting.value.reason == "pool_timeout"
        with pytest.raises(TransientDeliveryError) as exchanging:
            await first
        assert exchanging.value.reason == "timeout"
        assert first_deadline <= loop.time() < first_deadline + 30  # its deadline cut it, not the 60-s timeout
        await client.aclose()


async def test_a_cancelled_call_drops_its_connection_and_frees_its_slot() -> None:
    async def silent_then_ok(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        return True if n == 1 else await answer_ok(n, request, writer)

    async with scripted(silent_then_ok) as (server, port):
        client = poster(port, connections=1)
        call = asyncio.ensure_future(client.post(b"x", {}))
        await asyncio.wait_for(_until(lambda: len(server.requests) == 1), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await client.post(b"x", {}))[0] == 200
        await client.aclose()
    assert server.connections == 2


async def test_closing_the_poster_mid_call_closes_that_connection_after_its_answer() -> None:
    release = asyncio.Event()

    async def held(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        return await answer_ok(n, request, writer)

    async with scripted(held) as (server, port):
        client = poster(port)
        call = asyncio.ensure_future(client.post(b"x", {}))
        await asyncio.wait_for(_until(lambda: len(server.requests) == 1), 5)
        await client.aclose()
        release.set()
        assert (await call)[0] == 200  # the call in flight still completes
        await asyncio.wait_for(_until(lambda: server.open_now == 0), 5)  # and its connection is closed
        assert client._idle == []


async def test_connection_refused_is_a_connect_error() -> None:
    async with scripted(answer_ok) as (_, port):
        pass  # closed: nothing listens on the port any more
    client = poster(port)
    with pytest.raises(TransientDeliveryError) as info:
        await client.post(b"x", {})
    assert info.value.reason == "connect_error"
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.post(b"x", {})


async def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with scripted(answer_ok, tls=server_tls) as (server, port):
        untrusting = poster(port, scheme="https")  # the system's CAs: a self-signed certificate is refused
        with pytest.raises(TransientDeliveryError) as info:
            await untrusting.post(b"x", {})
        assert info.value.reason == "connect_error"
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
        await untrusting.aclose()
        trusting = poster(port, scheme="https", ssl_context=ssl.create_default_context(cafile=str(cert)))
        for _ in range(2):
            assert (await trusting.post(b"x", {}))[:2] == (200, b"ok")
        await trusting.aclose()
    assert server.connections == 1  # one reused TLS connection (a refused handshake never reaches the handler)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)
