"""The simulator's HTTP/1.1 server: one :class:`asyncio.Protocol` per connection and a synchronous handler.

Why it exists: the simulator shares the machine with the worker it is measured against (``python -m bench
simulator``: the worker, PostgreSQL, the broker and the simulator on two cores), so every microsecond it spends on
a request is taken from the system under test. aiohttp's server spent about 60 µs of Python a request on what a
provider stand-in never uses (a request and a response object with their multidicts, a handler task, header
preparation, a payload writer); this server parses a request, calls the handler and writes the answer in one
``transport.write``, with no task or future on the way.

What it does, and nothing more:

* HTTP/1.1 and 1.0 requests with a body delimited by ``Content-Length`` or the ``chunked`` transfer coding
  (extensions and trailers ignored); ``Expect: 100-continue`` is answered; heads over 64 KiB (431) and bodies over
  16 MiB (413) are refused and the connection closed, as is a malformed request (400) or another HTTP version (505);
* keep-alive as the protocol says (1.1 unless ``Connection: close``, 1.0 only with ``Connection: keep-alive``),
  pipelined requests answered in order; connections idle for ``keepalive_s`` (75 s, as aiohttp) are closed;
* the handler is a plain function ``Request -> Response``: everything the simulator decides, it decides the moment a
  request arrives. A :class:`Response` may carry a delay (the simulator's configured latency): it is written that
  long after the request, and the connection's next request waits for it (answers stay in order);
* a handler that raises is answered 500 and logged; the connection stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

log = logging.getLogger("simulator.http")

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
KEEPALIVE_S = 75.0
_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class Request:
    """One request: method, decoded path, query string, headers (names lower-cased) and the whole body."""

    __slots__ = ("_form", "body", "headers", "method", "path", "query_string")

    def __init__(self, method: str, path: str, query_string: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.query_string, self.headers, self.body = method, path, query_string, headers, body
        self._form: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        """The header's value (the first if repeated), ``name`` in any case; None if absent."""
        return self.headers.get(name.lower())

    @property
    def query(self) -> dict[str, str]:
        """The query string's fields (the first value of a repeated one)."""
        return _first_values(self.query_string)

    def form(self) -> dict[str, str]:
        """The body's form fields (the first value of a repeated one) when it is ``application/x-www-form-urlencoded``
        (or has no content type); empty otherwise, as aiohttp's ``post()`` for anything but forms."""
        if self._form is None:
            content_type = self.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if content_type not in ("", _FORM) or not self.body:
                self._form = {}
            else:
                self._form = _first_values(self.body.decode("utf-8", "replace"))
        return self._form


class Response:
    """An answer: status, body (sent as ``content_type``), extra headers, and how long to wait before writing it."""

    __slots__ = ("body", "content_type", "delay_s", "headers", "status")

    def __init__(
        self, status: int = 200, body: bytes = b"", *, content_type: str = _JSON,
        headers: Mapping[str, str] | None = None, delay_s: float = 0.0,
    ) -> None:
        self.status, self.body, self.content_type, self.headers, self.delay_s = (
            status, body, content_type, headers, delay_s)


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value).encode())


Handler = Callable[[Request], Response]


def _first_values(encoded: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in parse_qsl(encoded, keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _Head:
    """A parsed request head waiting for its body."""

    __slots__ = ("body_length", "chunked", "continued", "headers", "keep_alive", "method", "target")

    def __init__(self, method: str, target: str, headers: dict[str, str], keep_alive: bool,
                 body_length: int, chunked: bool) -> None:
        self.method, self.target, self.headers, self.keep_alive = method, target, headers, keep_alive
        self.body_length, self.chunked, self.continued = body_length, chunked, False


def _parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(505 if version.startswith("HTTP/") else 400, f"unsupported version {version[:20]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        headers.setdefault(name.lower(), value.strip())
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    chunked = False
    length = 0
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if "content-length" in headers or coding.strip().lower() != "chunked":
            raise _BadRequest(400, "unsupported transfer coding")
        chunked = True
    elif "content-length" in headers:
        text = headers["content-length"]
        if not text.isdigit():
            raise _BadRequest(400, "bad Content-Length")
        length = int(text)
        if length > MAX_BODY_BYTES:
            raise _BadRequest(413, "body too large")
    return _Head(method, target, headers, keep_alive, length, chunked)


def _encode(response: Response, keep_alive: bool) -> bytes:
    status = response.status
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Type: {response.content_type}"
            f"\r\nContent-Length: {len(response.body)}\r\n"]
    if response.headers:
        head.extend(f"{name}: {value}\r\n" for name, value in response.headers.items())
    if not keep_alive:
        head.append("Connection: close\r\n")
    head.append("\r\n")
    return "".join(head).encode("latin-1") + response.body


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: _Head | None = None
        self.busy = False  # an answer is waiting for its delay: later requests wait for it
        self.closing = False
        self.last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_active = time.monotonic()
        if not self.busy:
            self._serve()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _serve(self) -> None:
        """Answer every complete request in the buffer, in order, until one has to wait for its delay."""
        while not self.busy and not self.closing:
            try:
                ready = self._next_request()
            except _BadRequest as exc:
                self._write(Response(exc.status, json.dumps({"error": str(exc)}).encode()), keep_alive=False)
                return
            if ready is None:
                return
            request, keep_alive = ready
            response = self.server.call(request)
            if response.delay_s > 0.0:
                self.busy = True
                asyncio.get_running_loop().call_later(response.delay_s, self._delayed, response, keep_alive)
                return
            self._write(response, keep_alive)

    def _delayed(self, response: Response, keep_alive: bool) -> None:
        self.busy = False
        if self.closing:
            return
        self._write(response, keep_alive)
        self._serve()

    def _write(self, response: Response, keep_alive: bool) -> None:
        assert self.transport is not None
        self.transport.write(_encode(response, keep_alive))
        if not keep_alive:
            self.close()

    def _next_request(self) -> tuple[Request, bool] | None:
        """The next complete request and whether to keep the connection after it, or None if more bytes are needed
        (a head already parsed waits in ``self.head`` for its body)."""
        buffer = self.buffer
        if self.head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise _BadRequest(431, "request head too large")
                return None
            if end > MAX_HEAD_BYTES:
                raise _BadRequest(431, "request head too large")
            self.head = _parse_head(bytes(buffer[:end]))
            del buffer[: end + 4]
        head = self.head
        if head.chunked:
            body = self._chunked_body()
            if body is None:
                self._continue(head)
                return None
        else:
            if len(buffer) < head.body_length:
                self._continue(head)
                return None
            body = bytes(buffer[: head.body_length])
            del buffer[: head.body_length]
        path, _, query = head.target.partition("?")
        if "%" in path:
            path = unquote(path)
        self.head = None
        return Request(head.method, path, query, head.headers, body), head.keep_alive

    def _continue(self, head: _Head) -> None:
        if not head.continued and head.headers.get("expect", "").lower() == "100-continue":
            head.continued = True
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _chunked_body(self) -> bytes | None:
        """The whole chunked body, consumed from the buffer; None (nothing consumed) until all of it is there."""
        buffer, position, total = self.buffer, 0, 0
        chunks: list[bytes] = []
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            size_text = bytes(buffer[position:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            total += size
            if total > MAX_BODY_BYTES:
                raise _BadRequest(413, "body too large")
            position = line_end + 2
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer_end = buffer.find(b"\r\n", position)
                    if trailer_end < 0:
                        return None
                    empty = trailer_end == position
                    position = trailer_end + 2
                    if empty:
                        del buffer[:position]
                        return b"".join(chunks)
            if len(buffer) < position + size + 2:
                return None
            chunks.append(bytes(buffer[position : position + size]))
            position += size + 2


class HttpServer:
    """Serves ``handler`` on a bound socket: ``await start(sock)``, ``await stop()``."""

    def __init__(self, handler: Handler, *, keepalive_s: float = KEEPALIVE_S) -> None:
        self.handler = handler
        self.keepalive_s = keepalive_s
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def call(self, request: Request) -> Response:
        try:
            return self.handler(request)
        except Exception:
            log.exception("simulator: %s %s failed", request.method, request.path)
            return Response(500, b'{"error":"internal error"}')

    async def start(self, sock: Any, *, backlog: int = 1024) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=backlog)
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close connections idle for ``keepalive_s`` (a client reuses a connection long before that, or drops it)."""
        while True:
            await asyncio.sleep(min(self.keepalive_s, 15.0))
            edge = time.monotonic() - self.keepalive_s
            for connection in [c for c in self.connections if c.last_active < edge and not c.busy]:
                connection.close()

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)
            self._server = None
