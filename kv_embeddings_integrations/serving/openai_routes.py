"""OpenAI's routes: ``POST /v1/embeddings`` (and ``POST /embeddings``, TEI's spelling of it) and
``GET /v1/models``; their errors are OpenAI's shape, which the ``openai`` client reads."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from .engine import EmbeddingEngine, encode_base64
from .errors import InvalidInput
from .replies import json_response, note, until_answered
from .schemas import EmbeddingRequest, EmbeddingResponse, ModelCard, ModelList, OpenAIError

EMBEDDINGS_PATHS = ("/v1/embeddings", "/embeddings")
# The statuses these routes answer besides 200, all in OpenAI's error shape.
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIError, "description": "A request this server cannot embed (the message names the field)"},
    401: {"model": OpenAIError, "description": "No or a wrong API key (when the server has one)"},
    413: {"model": OpenAIError, "description": "More inputs than --max-client-batch-size, or a body too large"},
    429: {"model": OpenAIError, "description": "More than --max-concurrent-requests at once; see Retry-After"},
}


def add_openai_routes(app: FastAPI, engine: EmbeddingEngine, created: int) -> None:
    """Register OpenAI's routes on ``app`` over ``engine`` (``created``: the models' timestamp)."""
    settings = engine.settings

    def check_model(name: str | None) -> str:
        if name is None:  # as TEI: the one model served
            return settings.served_model_name
        if not settings.accepts_model(name):
            names = ", ".join(repr(n) for n in (settings.served_model_name, *settings.aliases))
            raise InvalidInput(
                f"model {name!r} is not served here; this server serves {names} (or leave 'model' out)",
                param="model",
                code="model_not_found",
            )
        return name

    async def openai_embeddings(body: EmbeddingRequest, request: Request) -> Response:
        model = check_model(body.model)
        texts = engine.texts_of(body.input, "input")
        engine.check_dimensions(body.dimensions)  # before a forward pass is spent on it
        engine.check_embedding_types(body.embedding_types, body.dimensions)
        prompt_type = engine.prompt_name(body.input_type, "input_type")
        work = engine.embed(texts, prompt_type=prompt_type, truncate=settings.auto_truncate)
        embedded = await until_answered(request, work)
        note(request, len(texts), embedded.total_tokens)

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
            return {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": item} for i, item in enumerate(items)],
                "model": model,
                "usage": {"prompt_tokens": embedded.total_tokens, "total_tokens": embedded.total_tokens},
            }

        return await json_response(render, embedded.num_truncated)

    for path in EMBEDDINGS_PATHS:
        app.post(
            path,
            response_model=EmbeddingResponse,
            responses=OPENAI_ERRORS,
            summary="Embeddings (OpenAI's shape)" + ("" if path.startswith("/v1") else ", TEI's path without /v1"),
            tags=["OpenAI"],
        )(openai_embeddings)

    @app.get("/v1/models", response_model=ModelList, responses={401: OPENAI_ERRORS[401]}, tags=["OpenAI"])
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.served_model_name, created=created)])
