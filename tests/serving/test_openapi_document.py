"""The server's own OpenAPI document is true, and its pages render without the internet: /docs and
/redoc load nothing from outside the server (an air-gapped deployment sees them whole)."""

from __future__ import annotations

import re

import pytest
from server_harness import AUTH, NAME, get, post

pytestmark = pytest.mark.timing

TEI_ERROR = "#/components/schemas/TEIError"
OPENAI_ERROR = "#/components/schemas/OpenAIError"


def _schema_ref(response: dict) -> str | None:
    return response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")


def test_docs_and_redoc_load_nothing_from_outside_the_server(server):
    for page in ("/docs", "/redoc"):
        response = get(f"{server.url}{page}")
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
        html = response.text
        # No absolute URL anywhere in the page (scripts, styles, fonts, favicon): all from this server.
        assert not re.findall(r"(?:https?:)?//[\w.-]+\.\w+", html), re.findall(r"(?:https?:)?//[\w.-]+\.\w+", html)
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        assert assets and all(a.startswith("/") for a in assets), assets
        for asset in assets:
            fetched = get(f"{server.url}{asset}")
            assert fetched.status_code == 200 and fetched.content, asset
        assert "/openapi.json" in html
    # Swagger UI 5.x renders OpenAPI 3.1 (4.x cannot).
    bundle = next(a for a in re.findall(r'src="([^"]+)"', get(f"{server.url}/docs").text) if "swagger-ui" in a)
    assert re.search(r'"5\.\d+\.\d+"', get(f"{server.url}{bundle}").text)
    assert get(f"{server.url}/openapi.json").json()["openapi"].startswith("3.1")


def test_get_root_is_teis_health_answer(server):
    # TEI routes GET / to its health check (POST / embeds): no key, 200.
    assert get(f"{server.url}/").status_code == 200


def test_the_document_declares_what_the_server_answers(server, local):
    document = get(f"{server.url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    # FastAPI's {"detail": [...]} body is never sent here, so it is not declared.
    assert "HTTPValidationError" not in schemas and "HTTPValidationError" not in str(document)
    # The key, as a bearer scheme, on the routes that need it (not on probes, metrics, docs).
    assert document["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer", "description": "the server's --api-key / $KV_EMBED_API_KEY"}
    }
    paths = document["paths"]
    for path in ("/health", "/ping", "/ready", "/metrics"):
        assert "security" not in paths[path]["get"], path
    assert "security" not in paths["/"]["get"] and paths["/"]["post"]["security"] == [{"bearer": []}]
    tei = ["/embed", "/", "/embed_all", "/similarity", "/invocations", "/vertex"]
    for path in tei:
        responses = paths[path]["post"]["responses"]
        for status in ("400", "401", "413", "422", "429"):
            assert _schema_ref(responses[status]) == TEI_ERROR, (path, status)
        assert paths[path]["post"]["security"] == [{"bearer": []}]
    # Routes no request can succeed on here (TEI's 424: a classifier's, a re-ranker's, and sparse
    # vectors on this model without its LM head) answer, but are not promised in the document.
    for path in ("/predict", "/rerank", "/embed_sparse"):
        assert path not in paths, path
        assert (
            post(f"{server.url}{path}", json={"inputs": "a", "query": "q", "texts": ["a"]}, headers=AUTH).status_code
            == 424
        )
    for path in ("/v1/embeddings", "/embeddings"):
        responses = paths[path]["post"]["responses"]
        assert {"200", "400", "401", "413", "429"} <= set(responses) and "422" not in responses, path
        for status in ("400", "401", "413", "429"):
            assert _schema_ref(responses[status]) == OPENAI_ERROR, (path, status)
    # Prometheus' text format, declared as text.
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    # The running server's rules: served names, prompt names, vocabulary, dimensions, non-empty inputs.
    openai = schemas["EmbeddingRequest"]["properties"]
    assert openai["model"]["anyOf"][0]["enum"] == [NAME, local.name]
    assert openai["input_type"]["enum"] == list(local.prompt_names)
    embed = schemas["TEIEmbedRequest"]["properties"]
    assert embed["prompt_name"]["anyOf"][0]["enum"] == list(local.prompt_names)
    assert embed["dimensions"]["anyOf"][0]["enum"] == [local.dimension]
    assert embed["normalize"]["enum"] == [True]  # the default's lexical half only means something normalised
    single, ids, batch = embed["inputs"]["anyOf"]
    assert single == {"type": "string", "minLength": 1}
    assert ids["minItems"] == 1 and ids["items"]["maximum"] == len(local.tokenizer) - 1
    assert batch["minItems"] == 1 and batch["maxItems"] == 2048
    info = schemas["Info"]
    assert {"served_model_name", "max_batch_tokens", "auto_truncate"} <= set(info["required"])
    assert info["properties"]["max_batch_tokens"] == {"type": "integer", "title": "Max Batch Tokens"}
    assert get(f"{server.url}/docs", headers=AUTH).status_code == 200
