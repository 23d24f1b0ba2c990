"""The server's own OpenAPI document, made true to what it serves.

FastAPI writes the document from the request and response models; what it cannot know comes from
the running server and is written in here, so that generated clients and schemathesis read the
rules the server applies: the served model names, the prompt names, the vocabulary (token ids),
the batch limit, the available ``dimensions``, that inputs are never empty, and the bearer key.
FastAPI's own 422 body (``{"detail": [...]}``) never goes out here, so it leaves the document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .engine import EmbeddingEngine
from .middleware import RouteKinds

BEARER = "bearer"
# cl100k_base's ordinary tokens (0..100255): every id the OpenAI route decodes (its special ids do not).
CL100K_ORDINARY = 100256
_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def install_openapi(app: FastAPI, engine: EmbeddingEngine, kinds: RouteKinds) -> None:
    """Make ``app.openapi()`` return the document with this server's rules (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = complete(document, engine, kinds)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: dict[str, Any], engine: EmbeddingEngine, kinds: RouteKinds) -> dict[str, Any]:
    """``document`` with the running server's rules written in (see the module docstring)."""
    embedder, settings = engine.embedder, engine.settings
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.get("responses", {})
            if _refers(responses.get("422"), _FASTAPI_422):
                del responses["422"]  # OpenAI's routes answer a body that does not fit with a 400
            if settings.api_key is not None and kinds.needs_key(method.upper(), path):
                operation["security"] = [{BEARER: []}]
    if settings.api_key is not None:
        document["components"]["securitySchemes"] = {
            BEARER: {"type": "http", "scheme": "bearer", "description": "the server's --api-key / $KV_EMBED_API_KEY"}
        }
    paths = document.get("paths", {})
    if not engine.sparse_available():  # its 424 is certain: no request to it can succeed here
        paths.pop("/embed_sparse", None)
    instances = schemas["VertexRequest"]["properties"]["instances"]
    instances["items"] = {"$ref": "#/components/schemas/TEIEmbedRequest"}
    vocabulary = len(embedder.tokenizer)
    batch = settings.max_client_batch_size
    names = list(embedder.prompt_names)
    dimension = embedder.dimension
    reducible = embedder.config.postprocess in ("pca", "whiten") and embedder.lexical is None
    dimensions: dict[str, Any] = {"minimum": 1, "maximum": dimension} if reducible else {"enum": [dimension]}

    def field(model: str, name: str) -> dict[str, Any]:
        return _plain(schemas[model]["properties"][name])

    for model in ("TEIEmbedRequest", "TEIEmbedSparseRequest"):
        _texts_or_ids(schemas[model]["properties"]["inputs"], vocabulary, batch)
        field(model, "prompt_name").update(enum=names)
    tei_embed = schemas["TEIEmbedRequest"]["properties"]
    _plain(tei_embed["dimensions"]).update(dimensions)
    if embedder.lexical is not None:  # unit dense and lexical halves: only ever normalised
        tei_embed["normalize"].update(enum=[True])
    openai = schemas["EmbeddingRequest"]["properties"]
    _texts_or_ids(openai["input"], CL100K_ORDINARY, batch)
    _plain(openai["model"]).update(enum=[settings.served_model_name, *settings.aliases])
    openai["input_type"].update(enum=names)
    _plain(openai["dimensions"]).update(dimensions)
    _texts_or_ids(schemas["TEITokenizeRequest"]["properties"]["inputs"], None, batch)
    field("TEITokenizeRequest", "prompt_name").update(enum=names)
    _texts_or_ids(schemas["TEIDecodeRequest"]["properties"]["ids"], vocabulary, None)
    similarity = schemas["SimilarityInput"]["properties"]["sentences"]
    similarity.update(minItems=1, maxItems=batch - 1)
    similarity["items"].update(minLength=1)
    field("SimilarityParameters", "prompt_name").update(enum=names)
    return document


def _refers(response: dict[str, Any] | None, ref: str) -> bool:
    if not response:
        return False
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") == ref


def _plain(schema: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an optional field's schema (``anyOf: [X, null]``), else the schema."""
    for branch in schema.get("anyOf", ()):
        if branch.get("type") != "null":
            return branch
    return schema


def _texts_or_ids(schema: dict[str, Any], vocabulary: int | None, batch: int | None) -> None:
    """Every string in ``schema`` non-empty, every array non-empty (the outer ones at most
    ``batch`` long), every token id within ``vocabulary`` (when given: this model's ids)."""

    def visit(node: dict[str, Any], outer: bool) -> None:
        kind = node.get("type")
        if kind == "string":
            node["minLength"] = 1
        elif kind == "integer":
            node["minimum"] = 0
            if vocabulary is not None:
                node["maximum"] = vocabulary - 1
        elif kind == "array":
            node["minItems"] = 1
            items = node.get("items", {})
            if outer and batch is not None and not (items.get("type") == "integer"):
                node["maxItems"] = batch
            visit(items, False)
        for branch in node.get("anyOf", ()):
            visit(branch, outer)

    visit(schema, True)
