"""``campaigns api``: the HTTP API and dashboard on ``CAMPAIGNS_API__HOST:PORT`` (127.0.0.1:8080), served by
uvicorn in one process (the handlers run in its thread pool)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from api.settings import ApiSettings
from campaigns.settings import Settings


def serve(host: str | None = None, port: int | None = None, log_level: str = "info") -> int:
    import uvicorn

    from api.app import build_app
    from campaigns.settings import load_settings

    settings = load_settings()
    api = settings.api
    host = host or api.host
    port = api.port if port is None else port
    app = build_app(settings, api)
    logging.getLogger("campaigns.api").info("dashboard and API on http://%s:%s/", host, port)
    print(f"campaigns api: dashboard http://{host}:{port}/  OpenAPI http://{host}:{port}/openapi.json", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False,
                timeout_graceful_shutdown=5)
    return 0


class ApiThread:
    """The API server in a background thread of another program (``campaigns demo``): ``with ApiThread(...) as
    server: server.url``. Port 0, or a port already taken, picks a free one."""

    def __init__(self, settings: Settings, api: ApiSettings | None = None) -> None:
        self._settings = settings
        self._api = api or settings.api
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def __enter__(self) -> ApiThread:
        import uvicorn

        from api.app import build_app

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._api.host, self._api.port))
        except OSError:
            sock.bind((self._api.host, 0))
        host, port = sock.getsockname()[:2]
        config = uvicorn.Config(build_app(self._settings, self._api), log_level="warning", server_header=False,
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="api-server",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.url = f"http://{host}:{port}/"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
