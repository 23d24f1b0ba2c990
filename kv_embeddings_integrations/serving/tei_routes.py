"""text-embeddings-inference's routes (``router/src/http/server.rs``), and the cloud routes that
stand for them: SageMaker's ``/invocations`` and ``/ping``, Vertex AI's ``/vertex`` (and the
``AIP_PREDICT_ROUTE`` / ``AIP_HEALTH_ROUTE`` Vertex sets). Errors are TEI's shape and statuses."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from .engine import Embedded, EmbeddingEngine
from .errors import EmptyInput, InvalidInput, ServingError, TooManyInputs, Unsupported
from .http_errors import first_problem
from .replies import json_response, note, until_answered
from .schemas import (
    Info,
    SimpleToken,
    SparseValue,
    TEIDecodeRequest,
    TEIEmbedRequest,
    TEIEmbedSparseRequest,
    TEIError,
    TEIPredictRequest,
    TEIRerankRequest,
    TEISimilarityRequest,
    TEITokenizeRequest,
    VertexRequest,
    VertexResponse,
)

TAG = "text-embeddings-inference"
# TEI's error statuses (its ErrorType's, and axum's own 413 and 401), each in TEI's error shape.
_DESCRIPTIONS = {
    400: "Empty: an empty input or batch (or a body that is not JSON)",
    401: "No or a wrong API key (when the server has one)",
    413: "A body over --max-request-bytes (TEI's --payload-limit)",
    422: "Validation: a body that does not fit the request's types, an unknown name, too many inputs, a text "
    "too long with truncate false",
    424: "Backend: what this model cannot do",
    429: "Overloaded: more than --max-concurrent-requests at once; see Retry-After",
}


def tei_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``statuses`` in TEI's error shape."""
    return {status: {"model": TEIError, "description": _DESCRIPTIONS[status]} for status in statuses}


EMBED_ERRORS = tei_errors(400, 401, 413, 422, 429)
# Vertex AI reads its routes from these variables (set in its containers); health answers there too.
VERTEX_PREDICT_ENV, VERTEX_HEALTH_ENV = "AIP_PREDICT_ROUTE", "AIP_HEALTH_ROUTE"


def vertex_routes() -> tuple[str | None, str | None]:
    """The prediction and health routes Vertex AI asked for (``AIP_*``), if any."""
    return os.environ.get(VERTEX_PREDICT_ENV) or None, os.environ.get(VERTEX_HEALTH_ENV) or None


def _direction(body: Any) -> Literal["left", "right"]:
    return "left" if body.truncation_direction.lower() == "left" else "right"  # TEI's Left / left alike


def add_tei_routes(app: FastAPI, engine: EmbeddingEngine) -> None:
    """Register TEI's routes (and SageMaker's and Vertex AI's) on ``app`` over ``engine``."""
    settings = engine.settings

    def truncate_of(truncate: bool | None) -> bool:
        return settings.auto_truncate if truncate is None else truncate

    def embedding(body: TEIEmbedRequest) -> tuple[list[str], Any]:
        """The request's checked texts, and the work that embeds them (not started)."""
        prompt_type = engine.prompt_name(body.prompt_name)
        texts = engine.texts_of(body.inputs, "inputs", model_ids=True, prompt_type=prompt_type)
        engine.check_dimensions(body.dimensions)  # before a forward pass is spent on it
        work = engine.embed(
            texts,
            prompt_type=prompt_type,
            normalize=body.normalize,
            truncate=truncate_of(body.truncate),
            truncation_direction=_direction(body),
        )
        return texts, work

    def vectors_of(body: TEIEmbedRequest, embedded: Embedded) -> np.ndarray:
        return engine.with_dimensions(embedded.vectors, body.dimensions, normalize=body.normalize)

    async def embed(body: TEIEmbedRequest, request: Request) -> Response:
        texts, work = embedding(body)
        embedded = await until_answered(request, work)
        note(request, len(texts), embedded.total_tokens)
        return await json_response(vectors_of(body, embedded).tolist, embedded.num_truncated)

    summaries = {
        "/embed": "Embed (text-embeddings-inference's shape)",
        "/": "Embed (TEI's root route, for clients that post to the base URL)",
        "/invocations": "Embed (SageMaker's inference route: TEI's /embed for an embedding model)",
    }
    for path, summary in summaries.items():
        app.post(path, response_model=list[list[float]], responses=EMBED_ERRORS, summary=summary, tags=[TAG])(embed)

    @app.post(
        "/embed_all",
        response_model=list[list[list[float]]],
        responses=EMBED_ERRORS,
        summary="Every token's state at the pooled layer, in the re-routed pass (TEI's /embed_all)",
        tags=[TAG],
    )
    async def embed_all(body: TEIEmbedSparseRequest, request: Request) -> Response:
        prompt_type = engine.prompt_name(body.prompt_name)
        texts = engine.texts_of(body.inputs, "inputs", model_ids=True, prompt_type=prompt_type)
        work = engine.embed_tokens(
            texts, prompt_type=prompt_type, truncate=truncate_of(body.truncate), truncation_direction=_direction(body)
        )
        states = await until_answered(request, work)
        note(request, len(texts), sum(states.token_counts))
        return await json_response(lambda: [s.tolist() for s in states.states], sum(states.truncated))

    @app.post(
        "/embed_sparse",
        response_model=list[list[SparseValue]],
        responses={**EMBED_ERRORS, **tei_errors(424)},
        summary="Sparse lexical vectors (text-embeddings-inference's shape), from the dense vectors' pass",
        tags=[TAG],
    )
    async def embed_sparse(body: TEIEmbedSparseRequest, request: Request) -> Response:
        prompt_type = engine.prompt_name(body.prompt_name)
        engine.check_sparse()
        texts = engine.texts_of(body.inputs, "inputs", model_ids=True, prompt_type=prompt_type)
        work = engine.embed(
            texts,
            prompt_type=prompt_type,
            truncate=truncate_of(body.truncate),
            truncation_direction=_direction(body),
            sparse=True,
        )
        embedded = await until_answered(request, work)
        note(request, len(texts), embedded.total_tokens)
        sparse = embedded.sparse
        assert sparse is not None  # asked for

        def render() -> list[list[dict[str, Any]]]:
            return [
                [{"index": i, "value": v} for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
                for ids, values in zip(sparse.indices, sparse.values, strict=True)
            ]

        return await json_response(render, embedded.num_truncated)

    @app.post(
        "/similarity",
        response_model=list[float],
        responses=EMBED_ERRORS,
        summary="Cosine similarity of a source sentence with each of the others (TEI's /similarity)",
        tags=[TAG],
    )
    async def similarity(body: TEISimilarityRequest, request: Request) -> Response:
        inputs, parameters = body.inputs, body.parameters
        if not inputs.sentences:
            raise EmptyInput("`inputs.sentences` cannot be empty", param="inputs")
        size = len(inputs.sentences) + 1  # the source sentence too, as TEI counts
        if size > settings.max_client_batch_size:
            raise TooManyInputs(
                f"batch size {size} > maximum allowed batch size {settings.max_client_batch_size} "
                "(the source sentence and the sentences; --max-client-batch-size)",
                param="inputs",
            )
        prompt_type = engine.prompt_name(parameters.prompt_name if parameters else None, "parameters.prompt_name")
        texts = engine.texts_of([inputs.source_sentence, *inputs.sentences], "inputs", prompt_type=prompt_type)
        work = engine.embed(
            texts,
            prompt_type=prompt_type,
            truncate=truncate_of(parameters.truncate if parameters else None),
            truncation_direction=_direction(parameters) if parameters else "right",
        )
        embedded = await until_answered(request, work)
        note(request, len(texts), embedded.total_tokens)
        cosines = engine.embedder.similarity(embedded.vectors[:1], embedded.vectors[1:])[0]
        return await json_response(cosines.astype(np.float32).tolist, embedded.num_truncated)

    # A classifier's and a re-ranker's routes: here for TEI's clients, answered as TEI answers an
    # embedding model; out of the document, as no request to them can succeed on this server.
    @app.post(
        "/predict",
        include_in_schema=False,
        responses=tei_errors(401, 413, 422, 424),
        summary="A classifier's route: this server's model is an embedding model, so 424 as TEI answers",
        tags=[TAG],
    )
    async def predict(body: TEIPredictRequest) -> Response:
        batch = isinstance(body.inputs, list) and bool(body.inputs) and isinstance(body.inputs[0], list)
        if batch and len(body.inputs) > settings.max_client_batch_size:
            size, most = len(body.inputs), settings.max_client_batch_size
            raise TooManyInputs(f"batch size {size} > maximum allowed batch size {most}", param="inputs")
        raise Unsupported(
            "Backend error: Model is not a classifier model (this server serves an embedding model: use /embed)"
        )

    @app.post(
        "/rerank",
        include_in_schema=False,
        responses=tei_errors(400, 401, 413, 422, 424),
        summary="A re-ranker's route: this server's model is an embedding model, so 424 as TEI answers",
        tags=[TAG],
    )
    async def rerank(body: TEIRerankRequest) -> Response:
        raise _not_a_reranker(body)

    async def vertex(body: VertexRequest, request: Request) -> Response:
        requests = [_vertex_instance(instance, index) for index, instance in enumerate(body.instances)]
        prepared: list[tuple[list[str], Any]] = []
        try:  # every instance checked before any is embedded
            for r in requests:
                prepared.append(embedding(r))
        except ServingError:
            for _, work in prepared:
                work.close()  # never started
            raise
        results: list[Embedded] = await until_answered(request, asyncio.gather(*(work for _, work in prepared)))
        note(request, sum(len(texts) for texts, _ in prepared), sum(e.total_tokens for e in results))

        def render() -> dict[str, Any]:
            return {"predictions": [vectors_of(r, e).tolist() for r, e in zip(requests, results, strict=True)]}

        return await json_response(render)

    predict_route, _ = vertex_routes()
    for path in dict.fromkeys(("/vertex", predict_route or "/vertex")):
        app.post(
            path,
            response_model=VertexResponse,
            responses={**EMBED_ERRORS, **tei_errors(424)},
            summary="Vertex AI's prediction route: each instance is an /embed request",
            tags=[TAG],
        )(vertex)

    @app.get("/info", response_model=Info, responses=tei_errors(401), summary="TEI's Info", tags=[TAG])
    async def info() -> dict[str, Any]:
        return engine.info()

    @app.post(
        "/tokenize",
        response_model=list[list[SimpleToken]],
        responses=tei_errors(400, 401, 413, 422),
        summary="Tokens of each input, optionally inside a prompt (text-embeddings-inference's shape)",
        tags=[TAG],
    )
    async def tokenize(body: TEITokenizeRequest) -> Response:
        prompt_type = engine.prompt_name(body.prompt_name) if body.prompt_name is not None else None
        texts = engine.texts_of(body.inputs, "inputs")
        tokens = await asyncio.to_thread(
            engine.tokens, texts, add_special_tokens=body.add_special_tokens, prompt_type=prompt_type
        )
        return JSONResponse(tokens)

    @app.post(
        "/decode",
        response_model=list[str],
        responses=tei_errors(400, 401, 413, 422),
        summary="Text of token ids (text-embeddings-inference's shape)",
        tags=[TAG],
    )
    async def decode(body: TEIDecodeRequest) -> Response:
        return JSONResponse(engine.decode(body.ids, skip_special_tokens=body.skip_special_tokens))


def _not_a_reranker(body: TEIRerankRequest) -> ServingError:
    if not body.texts:  # TEI checks this before the model's kind
        return EmptyInput("`texts` cannot be empty", param="texts")
    return Unsupported(
        "Backend error: model is not a re-ranker model (this server serves an embedding model: use /embed, or "
        "/similarity for scores)"
    )


def _vertex_instance(instance: dict[str, Any], index: int) -> TEIEmbedRequest:
    """One Vertex instance as TEI reads it: a re-rank request if it is one (refused: an embedding
    model), else an ``/embed`` request; a bad one is an
    [`InvalidInput`][kv_embeddings_integrations.serving.errors.InvalidInput] naming its place."""
    try:
        rerank = TEIRerankRequest.model_validate(instance)
    except ValidationError:
        pass
    else:
        raise _not_a_reranker(rerank)
    try:
        return TEIEmbedRequest.model_validate(instance)
    except ValidationError as error:
        _, location, message = first_problem(error.errors())
        where = "".join(f".{part}" for part in location)
        raise InvalidInput(f"instances[{index}]{where}: {message}", param="instances") from None
