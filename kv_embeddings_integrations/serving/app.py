"""The HTTP application: OpenAI's and text-embeddings-inference's routes over an engine.

Routes (``docs/serving.md`` has the table): OpenAI's ``POST /v1/embeddings`` (and TEI's
``POST /embeddings``) and ``GET /v1/models``
([`openai_routes`][kv_embeddings_integrations.serving.openai_routes]); TEI's ``/embed``, ``/``,
``/embed_all``, ``/embed_sparse``, ``/similarity``, ``/predict``, ``/rerank``, ``/tokenize``,
``/decode``, ``/info`` and the cloud routes ``/invocations``, ``/vertex``
([`tei_routes`][kv_embeddings_integrations.serving.tei_routes]); health (``/health``, ``GET /``,
``/ping``), readiness (``/ready``: 503 once shutdown begins), ``/metrics`` (Prometheus) and the
OpenAPI pages ``/docs`` and ``/redoc``, served from the package (no CDN: they work air-gapped).
Errors on TEI's routes are TEI-shaped (``{"error", "error_type"}``, TEI's statuses), every other
error OpenAI-shaped; the engine's refusals get theirs from
[`http_errors`][kv_embeddings_integrations.serving.http_errors], and the middlewares are in
[`middleware`][kv_embeddings_integrations.serving.middleware].
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount, Route, WebSocketRoute

from ..version import __version__
from .engine import EmbeddingEngine
from .errors import ServingError
from .http_errors import APIError, as_api_error, invalid_request
from .middleware import CLIENT_CLOSED, AccessLog, APIKeyGuard, BodyLimit, RouteKinds
from .openai_routes import EMBEDDINGS_PATHS, add_openai_routes
from .openapi import install_openapi
from .replies import ClientGone
from .tei_routes import add_tei_routes, vertex_routes

logger = logging.getLogger("kv_embeddings_integrations.serving")
# TEI's routes, whose errors are TEI-shaped (the Vertex route Vertex AI names is added to them).
TEI_PATHS = frozenset(
    {"/embed", "/", "/embed_all", "/embed_sparse", "/similarity", "/predict", "/rerank", "/info", "/tokenize",
     "/decode", "/invocations", "/vertex"}
)  # fmt: skip
HEALTH_PATHS = ("/health", "/", "/ping")  # TEI's health, its Inference API's GET /, SageMaker's probe


class Status(BaseModel):
    status: str
    model: str | None = None


def create_app(engine: EmbeddingEngine) -> FastAPI:
    """The FastAPI application serving ``engine`` (run it with uvicorn; see ``serving.server``)."""
    settings, metrics = engine.settings, engine.metrics
    app = FastAPIOffline(
        title="kv-embed",
        version=__version__,
        description="Text embeddings from a frozen LLM by KV re-routing, in OpenAI's and TEI's shapes.",
        swagger_ui_parameters={"validatorUrl": None},  # else Swagger UI asks validator.swagger.io
    )
    app.state.engine = engine
    app.state.ready = True
    predict_route, health_route = vertex_routes()
    tei = TEI_PATHS | ({predict_route} if predict_route else set())
    protected = frozenset(tei | {*EMBEDDINGS_PATHS, "/v1/models"})
    kinds = RouteKinds(tei=frozenset(tei), protected=protected, open=frozenset({"/"}))

    add_openai_routes(app, engine, created=int(time.time()))
    add_tei_routes(app, engine)

    async def health() -> Status:
        return Status(status="ok")

    for path in dict.fromkeys((*HEALTH_PATHS, health_route or "/health")):
        summary = "Liveness (TEI's health; SageMaker's /ping)"
        app.get(path, response_model=Status, response_model_exclude_none=True, summary=summary, tags=["health"])(health)

    @app.get(
        "/ready",
        response_model=Status,
        responses={503: {"model": Status, "description": "shutting down"}},
        summary="Readiness (the model is loaded; 503 once shutdown begins)",
        tags=["health"],
    )
    async def ready() -> Response:
        if not app.state.ready:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ready", "model": settings.served_model_name})

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format)", tags=["health"])
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(ServingError)
    async def refused(request: Request, error: ServingError) -> Response:
        return kinds.error_response(request.url.path, as_api_error(error))

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> Response:
        return kinds.error_response(request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> Response:
        return kinds.error_response(request.url.path, invalid_request(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {error.detail}"
        headers = dict(error.headers or {})
        if error.status_code == 405:  # every method of the path (GET / and POST / are two routes)
            headers["Allow"] = ", ".join(sorted(allowed.get(request.url.path, ())))
        # TEI's framework answers these (405 for a wrong method) itself: the status stays.
        failure = APIError(error.status_code, message, type=kind, headers=headers, tei_status=error.status_code)
        return kinds.error_response(request.url.path, failure)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> Response:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        failure = APIError(500, "internal server error; the server's log has the details", type="server_error")
        return kinds.error_response(request.url.path, failure)

    allowed: dict[str, set[str]] = {}
    for route in app.routes:
        if isinstance(route, Route) and route.methods:
            allowed.setdefault(route.path, set()).update(route.methods)
    install_openapi(app, engine, kinds)
    # Outermost last: the log sees everything, the key is checked before the body is read.
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes, kinds=kinds)
    app.add_middleware(APIKeyGuard, key=settings.api_key.get_secret_value() if settings.api_key else None, kinds=kinds)
    paths = frozenset(r.path for r in app.routes if isinstance(r, (Route, WebSocketRoute, Mount)))
    app.add_middleware(AccessLog, metrics=metrics, routes=paths)
    return app
