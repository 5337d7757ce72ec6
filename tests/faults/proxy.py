"""A TCP proxy that can hold traffic: a network partition between a worker and its provider.

In ``hold()`` mode bytes from clients are kept in the proxy instead of being forwarded, so a worker's
provider calls are on the wire (written, awaiting an answer) but the provider has not seen them. Then
:meth:`HoldingProxy.drop_held` closes those connections and throws the bytes away: the requests never
landed. That places a crash deterministically *after* the claim and *before* the provider call, which a
race on timing could not.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    held: list[bytes] = field(default_factory=list)


class HoldingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="holding-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._holding = False
        self.port = 0

    def __enter__(self) -> HoldingProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro, timeout: float = 10.0):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # --- control (from the test thread) ---------------------------------------------------------

    def hold(self) -> None:
        async def set_hold() -> None:
            self._holding = True

        self._call(set_hold())

    def held_requests(self) -> int:
        """Connections with bytes held back (requests the provider has not seen)."""

        async def count() -> int:
            return sum(1 for c in self._conns if c.held)

        return int(self._call(count()))

    def drop_held(self) -> int:
        """Close every connection holding bytes, discard them, and forward again. Returns how many."""

        async def drop() -> int:
            victims = [c for c in self._conns if c.held]
            for conn in victims:
                conn.held.clear()
                for writer in (conn.client, conn.upstream):
                    writer.transport.abort()
                self._conns.discard(conn)
            self._holding = False
            return len(victims)

        return int(self._call(drop()))

    # --- the proxy ---------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            for writer in (conn.client, conn.upstream):
                writer.transport.abort()
        self._conns.clear()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_writer.transport.abort()
            return
        conn = _Conn(client_writer, up_writer)
        self._conns.add(conn)

        async def upstream_to_client() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await up_reader.read(65536):
                    client_writer.write(data)
                    await client_writer.drain()
            client_writer.transport.abort()

        back = asyncio.create_task(upstream_to_client())
        try:
            while True:
                try:
                    data = await client_reader.read(65536)
                except OSError:
                    break
                if not data:
                    break
                if self._holding or conn.held:
                    conn.held.append(data)
                    continue
                up_writer.write(data)
                await up_writer.drain()
        except OSError:
            pass
        finally:
            # Client gone (or dropped): never forward what was held.
            conn.held.clear()
            up_writer.transport.abort()
            self._conns.discard(conn)
            back.cancel()
