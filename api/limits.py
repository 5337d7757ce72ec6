"""Limits applied before any route runs (pure ASGI middleware): a per-token rate limit, a maximum body size, and
a body that must be JSON, well-formed and not nested deeper than ``max_json_depth``.

* Rate: a token bucket (``rate_per_s``, ``burst``) per API token id (the public part of the bearer token, so a
  token's requests share one bucket whichever secret they carry), per client address without a token; applies
  to ``/v1/*``. Over the limit: 429 ``rate-limited`` with ``Retry-After``, before the database is touched.
* Size: ``Content-Length`` over ``max_body_bytes`` is refused at once (413); a body without one is read up to the
  limit and refused as soon as it passes it. Nothing larger is ever held in memory.
* CSV: a route of ``CSV_PATHS`` takes ``text/csv`` only (415 otherwise); its body is not parsed here.
* JSON: any other POST with a body must say ``application/json`` (415); it is parsed once here and refused if it is not
  JSON (400) or nests deeper than ``max_json_depth`` (400: the parser itself recurses, so a deeply nested
  document is refused before a route could crash on it). The body is then handed to the route unchanged and kept
  in ``request.state.raw_body`` for the Idempotency-Key hash.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import MALFORMED, RATE_LIMITED, TOO_LARGE, UNSUPPORTED_MEDIA, Problem
from api.settings import ApiSettings

_BODY_METHODS = {"POST", "PUT", "PATCH"}
CSV_MEDIA_TYPE = "text/csv"
CSV_PATHS = frozenset({"/v1/customers/import"})  # routes whose body is CSV: never parsed here, only size-checked
UNSUBSCRIBE_PATH = "/unsubscribe"  # rate-limited per client like /v1, but its body is a form, not JSON


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float) -> float:
        """0 if a request may go now (a token taken), else the seconds until one may."""
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1:
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets.clear()  # bounded memory under a flood of distinct keys
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


def _depth_exceeds(document: Any, limit: int) -> bool:
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return False


def _rate_key(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            parts = value.decode("latin-1").split()
            if len(parts) == 2 and parts[0].lower() == "bearer":
                token = str(parts[1])
                # cmpt_<16 hex id>_<secret>: the id is public and stable across the token's uses
                return "token:" + (token[5:21] if token.startswith("cmpt_") else token[:64])
    client = scope.get("client")
    return f"client:{client[0] if client else '?'}"


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, api: ApiSettings) -> None:
        self.app = app
        self.api = api
        self.buckets = TokenBuckets(api.rate_per_s, api.burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path.startswith("/v1/") or path == UNSUBSCRIBE_PATH:
            wait = self.buckets.take(_rate_key(scope), time.monotonic())
            if wait > 0:
                await self._refuse(scope, send, Problem(
                    RATE_LIMITED, f"more than {self.api.rate_per_s:g} requests/s (burst {self.api.burst}) for this "
                                  f"token; retry after {math.ceil(wait)} s",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))}))
                return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        limit = self.api.max_body_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._refuse(scope, send, Problem(TOO_LARGE, f"the body is {length} bytes; at most {limit}"))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, send, Problem(TOO_LARGE, f"the body is over {limit} bytes"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if path in CSV_PATHS:
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != CSV_MEDIA_TYPE:
                await self._refuse(scope, send, Problem(
                    UNSUPPORTED_MEDIA, f"Content-Type {media or '(none)'}: send {CSV_MEDIA_TYPE}"))
                return
        elif body.strip() and path != UNSUBSCRIBE_PATH:  # RFC 8058: a form body, List-Unsubscribe=One-Click
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json" and not media.endswith("+json"):
                await self._refuse(scope, send, Problem(
                    UNSUPPORTED_MEDIA, f"Content-Type {media or '(none)'}: send application/json"))
                return
            try:
                document = json.loads(body)
            except RecursionError:
                document, problem = None, f"the JSON nests deeper than {self.api.max_json_depth} levels"
            except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an integer over 4,300 digits
                document, problem = None, f"the body is not well-formed JSON: {str(exc)[:200]}"
            else:
                problem = (f"the JSON nests deeper than {self.api.max_json_depth} levels"
                           if _depth_exceeds(document, self.api.max_json_depth) else "")
            if problem:
                await self._refuse(scope, send, Problem(MALFORMED, problem))
                return
        scope.setdefault("state", {})["raw_body"] = body
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, problem: Problem) -> None:
        response = problem.response(scope.get("path"))
        await response(scope, _drain, send)


async def _drain() -> Message:
    return {"type": "http.disconnect"}
