"""The ASGI middlewares around the routes: the body limit, the API key and the access log; and the
one place an error gets its shape (TEI's on TEI's routes, OpenAI's elsewhere; the engine's
refusals get their statuses in [`http_errors`][kv_embeddings_integrations.serving.http_errors])."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

from fastapi.responses import JSONResponse

from .http_errors import APIError
from .metrics import ServerMetrics

logger = logging.getLogger("kv_embeddings_integrations.serving")
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer


@dataclass(frozen=True)
class RouteKinds:
    """Which paths answer errors in TEI's shape, and which need the API key.

    Attributes:
        tei: text-embeddings-inference's routes (and the cloud routes that stand for them).
        protected: the routes that need ``Authorization: Bearer <key>`` when a key is set; health,
            readiness, metrics and the docs stay open (probes and scrapers carry no key).
        open: protected paths whose GET is a health probe, open as the others (TEI's ``GET /``).
    """

    tei: frozenset[str]
    protected: frozenset[str]
    open: frozenset[str] = frozenset()

    def needs_key(self, method: str, path: str) -> bool:
        return path in self.protected and not (method in ("GET", "HEAD") and path in self.open)

    def error_response(self, path: str, error: APIError) -> JSONResponse:
        """``error`` in the shape of the route at ``path``: TEI's on TEI's routes, else OpenAI's."""
        if path in self.tei:
            return JSONResponse(error.tei_body(), status_code=error.tei_status, headers=error.headers)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def send_error(self, scope, send, error: APIError) -> None:
        """Send ``error`` as the whole response (from a middleware, before any route runs)."""
        response = self.error_response(scope["path"], error)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(response.body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})


class BodyLimit:
    """ASGI middleware: reads each request body up to ``limit`` bytes (413 past it), then hands
    it on; later ``receive`` calls reach the server (so a route can see a disconnect)."""

    def __init__(self, app, limit: int, kinds: RouteKinds) -> None:
        self.app = app
        self.limit = limit
        self.kinds = kinds

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_large = APIError(
            413,
            f"the request body is over this server's {self.limit} bytes (--max-request-bytes); send fewer or "
            "shorter inputs per request",
            code="request_too_large",
            tei_status=413,  # TEI's body limit (axum's DefaultBodyLimit) answers 413 too
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self.kinds.send_error(scope, send, too_large)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self.kinds.send_error(scope, send, too_large)
                return
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class APIKeyGuard:
    """ASGI middleware: ``Authorization: Bearer <key>`` on the protected routes, checked in
    constant time before the body is read (so a bad key is a 401 whatever the body)."""

    def __init__(self, app, key: str | None, kinds: RouteKinds) -> None:
        self.app = app
        self.key = key.encode() if key is not None else None
        self.kinds = kinds

    async def __call__(self, scope, receive, send) -> None:
        if self.key is None or scope["type"] != "http" or not self.kinds.needs_key(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, key = header.partition(b" ")
        if scheme.lower() == b"bearer" and secrets.compare_digest(key.strip(), self.key):
            await self.app(scope, receive, send)
            return
        message = "missing or incorrect API key" if header else "no API key"
        error = APIError(
            401,
            f"{message}: send 'Authorization: Bearer <key>'",
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await self.kinds.send_error(scope, send, error)


class AccessLog:
    """ASGI middleware: one log line per request (method, path, status, texts, tokens, ms) and
    the request counter and latency histogram (labelled by route; unknown paths as "other")."""

    def __init__(self, app, metrics: ServerMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), None

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except BaseException:
            status = status or 500
            raise
        finally:
            # No response and no error: the client hung up before there was one to send.
            status = status or CLIENT_CLOSED
            elapsed = time.perf_counter() - started
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            state = scope.get("state", {})
            logger.info(
                "%s %s %d texts=%d tokens=%d %.1fms",
                scope["method"],
                scope["path"],
                status,
                state.get("texts", 0),
                state.get("tokens", 0),
                elapsed * 1000,
            )
