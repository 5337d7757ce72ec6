"""``campaigns api``: the HTTP API and dashboard on ``CAMPAIGNS_API__HOST:PORT`` (127.0.0.1:8080), served by
uvicorn in one process (the handlers run in its thread pool)."""

from __future__ import annotations

import logging


def serve(host: str | None = None, port: int | None = None, log_level: str = "info") -> int:
    import uvicorn

    from api.app import build_app
    from api.settings import load_api_settings
    from campaigns.settings import load_settings

    settings = load_settings()
    api = load_api_settings()
    host = host or api.host
    port = api.port if port is None else port
    app = build_app(settings, api)
    logging.getLogger("campaigns.api").info("dashboard and API on http://%s:%s/", host, port)
    print(f"campaigns api: dashboard http://{host}:{port}/  OpenAPI http://{host}:{port}/openapi.json", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False,
                timeout_graceful_shutdown=5)
    return 0
