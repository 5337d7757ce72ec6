"""The simulator's own HTTP/1.1 server (``simulator/http.py``) spoken to over raw loopback sockets.

The provider endpoints behind it are covered with every client backend (http1, aiohttp, httpx) in
``test_transports_simulator.py``; here: the protocol itself -- keep-alive, pipelining and the order of delayed
answers, bodies by length or chunks, ``Expect: 100-continue``, what is refused and how the connection ends.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from simulator.http import MAX_HEAD_BYTES, HttpServer, Request, Response

DEADLINE_S = 10.0


def echo(request: Request) -> Response:
    """Echoes what it parsed; ``/slow?ms=N`` answers N ms later, ``/boom`` raises."""
    if request.path == "/boom":
        raise RuntimeError("handler failed")
    delay = int(request.query.get("ms", "0")) / 1000 if request.path == "/slow" else 0.0
    body = json.dumps({"method": request.method, "path": request.path, "query": request.query,
                       "form": request.form(), "body": request.body.decode(), "auth": request.header("Authorization")})
    return Response(201, body.encode(), headers={"X-Seen": "1"}, delay_s=delay)


@asynccontextmanager
async def serving(keepalive_s: float = 75.0) -> AsyncIterator[tuple[HttpServer, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = HttpServer(echo, keepalive_s=keepalive_s)
    await server.start(sock)
    try:
        yield server, sock.getsockname()[1]
    finally:
        await server.stop()


async def answers(reader: asyncio.StreamReader, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` answers read off the connection: (status, headers, body)."""
    out = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), DEADLINE_S)
        out.append((int(lines[0].split(" ")[1]), headers, body))
    return out


def post(path: str, body: bytes = b"", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), DEADLINE_S) == b""


async def test_keep_alive_and_pipelined_requests_are_answered_in_order_even_when_the_first_waits() -> None:
    async with serving() as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Three requests in one write: the first answer is delayed, the others must not overtake it.
        writer.write(post("/slow?ms=200", b"To=%2B1&To=%2B2&Body=hi+there")
                     + post("/fast", b"a=1", "Authorization: Basic abc\r\n") + post("/fast", b""))
        got = await answers(reader, 3)
        assert [json.loads(b)["path"] for _, _, b in got] == ["/slow", "/fast", "/fast"]
        first = json.loads(got[0][2])
        assert first["form"] == {"To": "+1", "Body": "hi there"}  # the first value of a repeated field
        assert first["query"] == {"ms": "200"}
        assert json.loads(got[1][2])["auth"] == "Basic abc"
        assert all(status == 201 and headers["x-seen"] == "1" for status, headers, _ in got)
        assert all("connection" not in headers for _, headers, _ in got)  # HTTP/1.1: kept alive
        writer.write(post("/again"))
        assert (await answers(reader, 1))[0][0] == 201
        writer.close()


async def test_a_body_split_across_writes_and_a_chunked_body_are_read_whole() -> None:
    async with serving() as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = post("/split", b"x=" + b"y" * 5000)
        for i in range(0, len(request), 700):
            writer.write(request[i : i + 700])
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(b"POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"4;ext=1\r\nx=ab\r\n")
        await writer.drain()
        writer.write(b"3\r\ncde\r\n0\r\nTrailer: t\r\n\r\n")
        got = await answers(reader, 2)
        assert json.loads(got[0][2])["form"] == {"x": "y" * 5000}
        assert json.loads(got[1][2])["body"] == "x=abcde"
        writer.close()


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    async with serving() as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/e", b"", "Expect: 100-continue\r\n").replace(b"Content-Length: 0", b"Content-Length: 3"))
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"a=b")
        assert json.loads((await answers(reader, 1))[0][2])["form"] == {"a": "b"}
        writer.close()


async def test_connection_close_and_http_1_0_end_the_connection_after_the_answer() -> None:
    async with serving() as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/bye", b"", "Connection: close\r\n"))
        status, headers, _ = (await answers(reader, 1))[0]
        assert (status, headers["connection"]) == (201, "close")
        assert await closed(reader)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /old HTTP/1.0\r\n\r\n")
        assert (await answers(reader, 1))[0][0] == 201
        assert await closed(reader)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /again HTTP/1.0\r\n\r\n")
        assert [s for s, _, _ in await answers(reader, 2)] == [201, 201]
        assert await closed(reader)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nBad header\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES + 10), 431),
    ],
)
async def test_a_malformed_or_oversized_request_is_refused_and_the_connection_closed(
    request_bytes: bytes, status: int
) -> None:
    async with serving() as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes)
        got, headers, _ = (await answers(reader, 1))[0]
        assert (got, headers["connection"]) == (status, "close")
        assert await closed(reader)


async def test_a_handler_that_raises_is_answered_500_and_the_connection_stays_usable() -> None:
    async with serving() as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/boom") + post("/fine"))
        assert [s for s, _, _ in await answers(reader, 2)] == [500, 201]
        writer.close()


async def test_idle_connections_are_closed_after_the_keepalive_and_stop_closes_the_rest() -> None:
    async with serving(keepalive_s=0.2) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/one"))
        await answers(reader, 1)
        assert await closed(reader)  # idle past keepalive_s: closed by the sweep
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
    assert await closed(reader)  # the server stopped: its connections are closed
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while server.connections and loop.time() < deadline:  # each leaves the set when its loss is delivered
        await asyncio.sleep(0.01)
    assert not server.connections
