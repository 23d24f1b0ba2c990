"""The HTTP layer: FastAPI routes in OpenAI's and text-embeddings-inference's shapes over an engine.

Routes: ``POST /v1/embeddings`` (OpenAI), ``POST /embed``, ``POST /``, ``POST /embed_sparse``,
``POST /tokenize``, ``POST /decode`` and ``GET /info`` (TEI), ``GET /v1/models``,
``GET /health`` (liveness), ``GET /ready`` (readiness: 503 once shutdown begins), ``GET /metrics``
(Prometheus) and FastAPI's ``/docs`` and ``/openapi.json``. Errors on TEI's routes are TEI-shaped
(``{"error", "error_type"}``, TEI's statuses), every other error OpenAI-shaped. With an API key,
the embedding and model routes need ``Authorization: Bearer <key>``; health, readiness, metrics
and the docs stay open (probes and scrapers carry no key).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount, Route, WebSocketRoute

from ..version import __version__
from .engine import Embedded, EmbeddingEngine, encode_base64
from .errors import APIError
from .schemas import (
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    SimpleToken,
    SparseValue,
    TEIDecodeRequest,
    TEIEmbedRequest,
    TEIEmbedSparseRequest,
    TEITokenizeRequest,
)

logger = logging.getLogger("kv_embeddings_integrations.serving")
TRUNCATED_HEADER = "X-Truncated-Inputs"
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer


class _ClientGone(Exception):
    pass


class BodyLimit:
    """ASGI middleware: reads each request body up to ``limit`` bytes (413 past it), then hands
    it on; later ``receive`` calls reach the server (so a route can see a disconnect)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

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
            await _send_error(scope, send, too_large)
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
                await _send_error(scope, send, too_large)
                return
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# text-embeddings-inference's routes: their errors are TEI-shaped.
TEI_ROUTES = frozenset({"/embed", "/", "/embed_sparse", "/info", "/tokenize", "/decode"})
# Routes that need the API key when one is set; health, readiness, metrics and docs stay open.
PROTECTED = TEI_ROUTES | {"/v1/embeddings", "/v1/models"}


class APIKeyGuard:
    """ASGI middleware: ``Authorization: Bearer <key>`` on :data:`PROTECTED` routes, checked in
    constant time before the body is read (so a bad key is a 401 whatever the body)."""

    def __init__(self, app, key: str | None) -> None:
        self.app = app
        self.key = key.encode() if key is not None else None

    async def __call__(self, scope, receive, send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] not in PROTECTED:
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
        )
        await _send_error(scope, send, error)


class AccessLog:
    """ASGI middleware: one log line per request (method, path, status, texts, tokens, ms) and
    the request counter and latency histogram (labelled by route; unknown paths as "other")."""

    def __init__(self, app, metrics, routes: frozenset[str]) -> None:
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


async def _send_error(scope, send, error: APIError) -> None:
    response = _error_response(scope["path"], error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(response.body)).encode())]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def _error_response(path: str, error: APIError) -> JSONResponse:
    """``error`` in the shape of the route at ``path``: TEI's on TEI's routes, else OpenAI's."""
    if path in TEI_ROUTES:
        return JSONResponse(error.tei_body(), status_code=error.tei_status, headers=error.headers)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(engine: EmbeddingEngine) -> FastAPI:
    """The FastAPI application serving ``engine`` (run it with uvicorn; see ``serving.server``)."""
    settings, metrics = engine.settings, engine.metrics
    app = FastAPI(
        title="kv-embed",
        version=__version__,
        description="Text embeddings from a frozen LLM by KV re-routing, in OpenAI's and TEI's shapes.",
    )
    app.state.engine = engine
    app.state.ready = True
    created = int(time.time())

    def check_model(name: str) -> None:
        if not settings.accepts_model(name):
            names = ", ".join(repr(n) for n in (settings.served_model_name, *settings.aliases))
            raise APIError(
                400,
                f"model {name!r} is not served here; this server serves {names}",
                param="model",
                code="model_not_found",
            )

    async def until_answered(request: Request, work) -> Any:
        """Await ``work``; if the client disconnects first, cancel it (a waiting request is
        withdrawn from the coalescing queue) and raise _ClientGone."""
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            watcher.cancel()
        if task in done:
            return task.result()
        task.cancel()
        raise _ClientGone

    def note(request: Request, texts: int, embedded: Embedded) -> None:
        request.state.texts, request.state.tokens = texts, embedded.total_tokens

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingResponse,
        summary="Embeddings (OpenAI's shape)",
    )
    async def openai_embeddings(body: EmbeddingRequest, request: Request) -> Response:
        check_model(body.model)
        texts = engine.texts_of(body.input, "input")
        engine.check_dimensions(body.dimensions)  # before a forward pass is spent on it
        engine.check_embedding_types(body.embedding_types, body.dimensions)
        prompt_type = engine.prompt_name(body.input_type, "input_type")
        embedded = await until_answered(request, engine.embed(texts, prompt_type=prompt_type))
        note(request, len(texts), embedded)

        def render() -> dict[str, Any]:
            # EmbeddingResponse's shape as plain data: validating every float through pydantic
            # would cost more than the JSON itself.
            vectors = engine.with_dimensions(embedded.vectors, body.dimensions)
            as_base64 = body.encoding_format == "base64"

            def wire(v: np.ndarray) -> str | list:
                return encode_base64(v) if as_base64 else v.tolist()

            if body.embedding_types:
                typed = engine.typed(vectors, body.embedding_types)
                items: list[Any] = [{kind: wire(typed[kind][i]) for kind in typed} for i in range(len(vectors))]
            else:
                items = [wire(v) for v in vectors]
            payload = {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": item} for i, item in enumerate(items)],
                "model": body.model,
                "usage": {"prompt_tokens": embedded.total_tokens, "total_tokens": embedded.total_tokens},
            }
            return payload

        return await _json_response(render, embedded)

    def direction_of(body: TEIEmbedSparseRequest) -> Literal["left", "right"]:
        return "left" if body.truncation_direction.lower() == "left" else "right"  # TEI's Left / left alike

    async def tei_embed(body: TEIEmbedRequest, request: Request) -> Response:
        prompt_type = engine.prompt_name(body.prompt_name)
        texts = engine.texts_of(body.inputs, "inputs", model_ids=True)
        engine.check_dimensions(body.dimensions)  # before a forward pass is spent on it
        truncate = True if body.truncate is None else body.truncate
        work = engine.embed(
            texts,
            prompt_type=prompt_type,
            normalize=body.normalize,
            truncate=truncate,
            truncation_direction=direction_of(body),
        )
        embedded = await until_answered(request, work)
        note(request, len(texts), embedded)
        vectors = engine.with_dimensions(embedded.vectors, body.dimensions, normalize=body.normalize)
        return await _json_response(vectors.tolist, embedded)

    tei_model = list[list[float]]
    app.post("/embed", summary="Embed (text-embeddings-inference's shape)", response_model=tei_model)(tei_embed)
    app.post("/", summary="Embed (TEI's root route, for clients that post to the base URL)", response_model=tei_model)(
        tei_embed
    )

    @app.post(
        "/embed_sparse",
        response_model=list[list[SparseValue]],
        summary="Sparse lexical vectors (text-embeddings-inference's shape), from the dense vectors' pass",
    )
    async def tei_embed_sparse(body: TEIEmbedSparseRequest, request: Request) -> Response:
        prompt_type = engine.prompt_name(body.prompt_name)
        engine.check_sparse()
        texts = engine.texts_of(body.inputs, "inputs", model_ids=True)
        truncate = True if body.truncate is None else body.truncate
        work = engine.embed(
            texts, prompt_type=prompt_type, truncate=truncate, truncation_direction=direction_of(body), sparse=True
        )
        embedded = await until_answered(request, work)
        note(request, len(texts), embedded)

        def render() -> list[list[dict[str, Any]]]:
            return [
                [{"index": i, "value": v} for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
                for ids, values in zip(embedded.sparse.indices, embedded.sparse.values, strict=True)
            ]

        return await _json_response(render, embedded)

    @app.get("/info", summary="Server and model information (text-embeddings-inference's shape)")
    async def info() -> dict[str, Any]:
        return engine.info()

    @app.post(
        "/tokenize",
        response_model=list[list[SimpleToken]],
        summary="Tokens of each input, optionally inside a prompt (text-embeddings-inference's shape)",
    )
    async def tokenize(body: TEITokenizeRequest) -> Response:
        prompt_type = engine.prompt_name(body.prompt_name) if body.prompt_name is not None else None
        texts = engine.texts_of(body.inputs, "inputs")
        tokens = await asyncio.to_thread(
            engine.tokens, texts, add_special_tokens=body.add_special_tokens, prompt_type=prompt_type
        )
        return JSONResponse(tokens)

    @app.post("/decode", response_model=list[str], summary="Text of token ids (text-embeddings-inference's shape)")
    async def decode(body: TEIDecodeRequest) -> Response:
        return JSONResponse(engine.decode(body.ids, skip_special_tokens=body.skip_special_tokens))

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.served_model_name, created=created)])

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness (the model is loaded; 503 once shutdown begins)")
    async def ready() -> Response:
        if not app.state.ready:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ready", "model": settings.served_model_name})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> Response:
        return _error_response(request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        return _error_response(request.url.path, _validation_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {error.detail}"
        # TEI's framework answers these (405 for a wrong method) itself: the status stays.
        failure = APIError(
            error.status_code, message, type=kind, headers=dict(error.headers or {}), tei_status=error.status_code
        )
        return _error_response(request.url.path, failure)

    @app.exception_handler(_ClientGone)
    async def client_gone(request: Request, error: _ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> Response:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        failure = APIError(500, "internal server error; the server's log has the details", type="server_error")
        return _error_response(request.url.path, failure)

    # Outermost last: the log sees everything, the key is checked before the body is read.
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.add_middleware(APIKeyGuard, key=settings.api_key.get_secret_value() if settings.api_key else None)
    paths = frozenset(r.path for r in app.routes if isinstance(r, (Route, WebSocketRoute, Mount)))
    app.add_middleware(AccessLog, metrics=metrics, routes=paths)
    return app


async def _json_response(render, embedded: Embedded) -> Response:
    """The JSON response of what ``render`` builds, made (and serialised) in a worker thread:
    thousands of floats per vector must not hold up the event loop (probes, admission, others)."""
    headers = {TRUNCATED_HEADER: str(embedded.num_truncated)}
    return await asyncio.to_thread(lambda: JSONResponse(render(), headers=headers))


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _validation_error(error: RequestValidationError) -> APIError:
    """The first problem of a request that did not parse or validate, as one clear message: a 400
    (OpenAI's shape), on TEI's routes a 422 ``Validation`` (axum's status for a body that does not
    fit TEI's types; a body that is not JSON at all is its 400)."""
    problems = error.errors()
    if not problems:
        return APIError(400, "invalid request body")
    first = problems[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return APIError(
            400, f"the request body is not valid JSON ({first.get('msg', '')}); send a JSON object", tei_status=400
        )
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = f"'{location[0] if location else 'body'}' is required"
    elif first.get("type") in ("model_attributes_type", "dict_type") and not location:
        message = "the request body must be a JSON object, sent with 'Content-Type: application/json'"
    elif location and not message.startswith("'"):
        message = f"'{'.'.join(location)}': {message}"
    return APIError(400, message, param=location[0] if location else None)
