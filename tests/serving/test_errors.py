"""Every refusal in its route's shape and status (OpenAI's, TEI's), and fuzzed bodies that never
get a 500."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import HANG, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import AUTH, JSON, NAME, get, post

from kv_embeddings_integrations import KVEmbedder

pytestmark = pytest.mark.timing


# -- errors ----------------------------------------------------------------------------------------

ERRORS = [
    # (name, path, headers, body (bytes or JSON), status, words in the message, param)
    ("no key", "/v1/embeddings", {}, {"input": "a", "model": NAME}, 401, "no API key", None),
    ("wrong key", "/v1/embeddings", {"Authorization": "Bearer nope"}, {"input": "a", "model": NAME}, 401,
     "incorrect API key", None),
    ("bad JSON", "/v1/embeddings", AUTH, b'{"input": ', 400, "not valid JSON", None),
    ("not an object", "/v1/embeddings", AUTH, [1, 2], 400, "JSON object", None),
    ("wrong input type", "/v1/embeddings", AUTH, {"input": 3.5, "model": NAME}, 400, "'input' must be a string",
     "input"),
    ("mixed input", "/v1/embeddings", AUTH, {"input": ["a", 1], "model": NAME}, 400, "input[1] does not fit", "input"),
    ("empty string", "/v1/embeddings", AUTH, {"input": ["a", "b", ""], "model": NAME}, 400, "input[2] is empty",
     "input"),
    ("empty array", "/v1/embeddings", AUTH, {"input": [], "model": NAME}, 400, "empty array", "input"),
    ("unknown model", "/v1/embeddings", AUTH, {"input": "a", "model": "gpt-4"}, 400, "model 'gpt-4' is not served",
     "model"),
    ("bad encoding", "/v1/embeddings", AUTH, {"input": "a", "model": NAME, "encoding_format": "hex"}, 400,
     "encoding_format", "encoding_format"),
    ("dimensions", "/v1/embeddings", AUTH, {"input": "a", "model": NAME, "dimensions": 16}, 400,
     "not trained for truncation", "dimensions"),
    ("token id out of range", "/v1/embeddings", AUTH, {"input": [[1, 999999]], "model": NAME}, 400,
     "token id 999999, outside cl100k_base", "input"),
    ("undefined token id", "/v1/embeddings", AUTH, {"input": [100261], "model": NAME}, 400, "cannot decode", "input"),
    ("too many inputs", "/v1/embeddings", AUTH, {"input": ["a"] * 5, "model": NAME}, 413, "at most 4", "input"),
    ("body too large", "/v1/embeddings", AUTH, {"input": ["x" * 30000], "model": NAME}, 413,
     "over this server's 20000 bytes", None),
    ("input type", "/v1/embeddings", AUTH, {"input": "a", "model": NAME, "input_type": "search"}, 400,
     "unknown input_type 'search'; known: 'document', 'query', 'search_document'", "input_type"),
    ("input type not a string", "/v1/embeddings", AUTH, {"input": "a", "model": NAME, "input_type": 1}, 400,
     "input_type", "input_type"),
    ("unknown route", "/v2/embeddings", AUTH, {"input": "a"}, 404, "Not Found", None),
    # Strict types, as TEI's serde (and OpenAI's API): no string for a number or a bool.
    ("dimensions as a string", "/v1/embeddings", AUTH, {"input": "a", "dimensions": "16"}, 400, "'dimensions'",
     "dimensions"),
    ("no truncation", "/v1/embeddings", AUTH, {"input": "word " * 1500}, 200, None, None),
    ("no path without v1", "/embeddings", AUTH, {"input": "a", "model": "gpt-4"}, 400, "model 'gpt-4' is not served",
     "model"),
]  # fmt: skip


@pytest.mark.parametrize("case", ERRORS, ids=[case[0] for case in ERRORS])
def test_openai_routes_errors_are_openai_shaped_with_the_right_status(strict, case):
    _, path, headers, body, status, words, param = case
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = post(f"{strict.url}{path}", content=content, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    if status == 200:  # not an error: cut, as TEI's --auto-truncate default does on this route
        return
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"], error["message"]
    assert error["param"] == param


# TEI's ErrorType and status (router/src/http/server.rs: Validation and Tokenizer 422, Empty 400,
# Overloaded 429, Backend 424; axum's own answers: 400 for a body that is not JSON, 413 over the body
# limit, 405 for a wrong method; a bad key is TEI's bare 401, given a body here).
TEI_ERRORS = [
    # (name, method, path, headers, body (bytes or JSON), status, error_type, words in the message)
    ("no key", "POST", "/embed", {}, {"inputs": "a"}, 401, "Unauthorized", "no API key"),
    ("wrong key", "GET", "/info", {"Authorization": "Bearer nope"}, None, 401, "Unauthorized", "incorrect API key"),
    ("bad JSON", "POST", "/embed", AUTH, b'{"inputs": ', 400, "Validation", "not valid JSON"),
    ("not an object", "POST", "/embed", AUTH, [1, 2], 422, "Validation", "JSON object"),
    ("missing inputs", "POST", "/embed", AUTH, {"normalize": True}, 422, "Validation", "'inputs' is required"),
    ("wrong inputs type", "POST", "/embed", AUTH, {"inputs": 3.5}, 422, "Validation", "'inputs' must be a string"),
    ("not an id", "POST", "/embed", AUTH, {"inputs": [["a"]]}, 422, "Validation", "inputs[0][0] is str, not a token"),
    ("an id beside texts", "POST", "/embed", AUTH, {"inputs": ["a", 1]}, 422, "Validation",
     "inputs[1] is a token id beside"),
    ("empty array", "POST", "/embed", AUTH, {"inputs": []}, 400, "Empty", "'inputs' is an empty array"),
    ("empty string", "POST", "/embed", AUTH, {"inputs": ["a", ""]}, 400, "Empty", "inputs[1] is empty"),
    ("empty ids", "POST", "/embed", AUTH, {"inputs": ["a", []]}, 400, "Empty", "inputs[1] is an empty array of token"),
    ("id out of range", "POST", "/embed", AUTH, {"inputs": ["a", [5, 10**6]]}, 422, "Validation",
     "inputs[1][1] is token id 1000000, outside this model's vocabulary (0.."),
    ("negative id", "POST", "/embed", AUTH, {"inputs": [5, -1]}, 422, "Validation", "inputs[1] is token id -1"),
    ("truncation direction", "POST", "/embed", AUTH, {"inputs": "a", "truncation_direction": "LEFT"}, 422,
     "Validation", "'truncation_direction': Input should be 'right', 'Right', 'left' or 'Left'"),
    ("prompt name", "POST", "/embed", AUTH, {"inputs": "a", "prompt_name": "summary"}, 422, "Validation",
     "unknown prompt_name 'summary'; known: 'document', 'query', 'search_document'"),
    ("dimensions", "POST", "/embed", AUTH, {"inputs": "a", "dimensions": 16}, 422, "Validation",
     "dimensions=16 is not available"),
    ("too many inputs", "POST", "/embed", AUTH, {"inputs": ["a"] * 5}, 422, "Validation", "at most 4"),
    ("no truncation", "POST", "/embed", AUTH, {"inputs": ["a", "word " * 1500], "truncate": False}, 422,
     "Validation", "input 1 is longer than the model's max_length (1024 tokens"),
    ("body too large", "POST", "/embed", AUTH, {"inputs": ["x" * 30000]}, 413, "Validation",
     "over this server's 20000 bytes"),
    ("wrong method", "GET", "/embed", AUTH, None, 405, "Validation", "GET /embed: Method Not Allowed"),
    ("root route", "POST", "/", AUTH, {"inputs": []}, 400, "Empty", "'inputs' is an empty array"),
    ("sparse without an LM head", "POST", "/embed_sparse", AUTH, {"inputs": "a"}, 424, "Backend", "LM head"),
    ("sparse direction", "POST", "/embed_sparse", AUTH, {"inputs": "a", "truncation_direction": "up"}, 422,
     "Validation", "'truncation_direction'"),
    ("tokenize ids", "POST", "/tokenize", AUTH, {"inputs": [1, 2]}, 422, "Validation", "inputs[0] is int"),
    ("tokenize empty", "POST", "/tokenize", AUTH, {"inputs": []}, 400, "Empty", "'inputs' is an empty array"),
    ("tokenize prompt name", "POST", "/tokenize", AUTH, {"inputs": "a", "prompt_name": "summary"}, 422,
     "Validation", "unknown prompt_name 'summary'"),
    ("decode empty", "POST", "/decode", AUTH, {"ids": []}, 400, "Empty", "ids is an empty array"),
    ("decode empty row", "POST", "/decode", AUTH, {"ids": [[1], []]}, 400, "Empty", "ids[1] is an empty array"),
    ("decode out of range", "POST", "/decode", AUTH, {"ids": [[1, 10**9]]}, 422, "Validation",
     "ids[0][1] is token id 1000000000, outside this model's vocabulary"),
    ("decode not ids", "POST", "/decode", AUTH, {"ids": "abc"}, 422, "Validation", "'ids' must be an array"),
    ("decode mixed", "POST", "/decode", AUTH, {"ids": [1, "a"]}, 422, "Validation", "ids[1] is str, not a token id"),
    # Strict types, as TEI's serde: a wrong type is a 422 naming the field, never read as another.
    ("normalize as a string", "POST", "/embed", AUTH, {"inputs": "a", "normalize": "yes"}, 422, "Validation",
     "'normalize': Input should be a valid boolean"),
    ("truncate as a string", "POST", "/embed", AUTH, {"inputs": "a", "truncate": "false"}, 422, "Validation",
     "'truncate'"),
    ("dimensions as a float", "POST", "/embed", AUTH, {"inputs": "a", "dimensions": 16.5}, 422, "Validation",
     "'dimensions'"),
    ("skip as a number", "POST", "/decode", AUTH, {"ids": [1], "skip_special_tokens": 0}, 422, "Validation",
     "'skip_special_tokens'"),
    ("special tokens as a string", "POST", "/tokenize", AUTH, {"inputs": "a", "add_special_tokens": "no"}, 422,
     "Validation", "'add_special_tokens'"),
    # The routes TEI adds, and the cloud ones.
    ("embed_all empty", "POST", "/embed_all", AUTH, {"inputs": []}, 400, "Empty", "'inputs' is an empty array"),
    ("similarity without sentences", "POST", "/similarity", AUTH,
     {"inputs": {"source_sentence": "a", "sentences": []}}, 400, "Empty", "`inputs.sentences` cannot be empty"),
    ("similarity too many", "POST", "/similarity", AUTH,
     {"inputs": {"source_sentence": "a", "sentences": ["b"] * 4}}, 422, "Validation", "batch size 5 > maximum"),
    ("similarity missing source", "POST", "/similarity", AUTH, {"inputs": {"sentences": ["b"]}}, 422, "Validation",
     "'inputs.source_sentence' is required"),
    ("predict on an embedding model", "POST", "/predict", AUTH, {"inputs": ["a", "b"]}, 424, "Backend",
     "Model is not a classifier model"),
    ("predict bad inputs", "POST", "/predict", AUTH, {"inputs": [["a", "b", "c"]]}, 422, "Validation", "'inputs'"),
    ("rerank on an embedding model", "POST", "/rerank", AUTH, {"query": "q", "texts": ["a"]}, 424, "Backend",
     "model is not a re-ranker model"),
    ("rerank empty", "POST", "/rerank", AUTH, {"query": "q", "texts": []}, 400, "Empty", "`texts` cannot be empty"),
    ("vertex bad instance", "POST", "/vertex", AUTH, {"instances": [{"inputs": "a"}, {"input": "b"}]}, 422,
     "Validation", "instances[1].inputs: Field required"),
    ("vertex rerank instance", "POST", "/vertex", AUTH, {"instances": [{"query": "q", "texts": ["a"]}]}, 424,
     "Backend", "re-ranker"),
    ("invocations empty", "POST", "/invocations", AUTH, {"inputs": []}, 400, "Empty", "'inputs' is an empty array"),
    ("no key on invocations", "POST", "/invocations", {}, {"inputs": "a"}, 401, "Unauthorized", "no API key"),
]  # fmt: skip


@pytest.mark.parametrize("case", TEI_ERRORS, ids=[case[0] for case in TEI_ERRORS])
def test_tei_routes_errors_are_tei_shaped_with_teis_statuses(strict, case):
    _, method, path, headers, body, status, error_type, words = case
    content = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.request(
        method, f"{strict.url}{path}", content=content, headers={**headers, "Content-Type": "application/json"},
        timeout=HANG,
    )  # fmt: skip
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error", "error_type"} and error["error_type"] == error_type, error
    assert words in error["error"], error["error"]


def test_key_is_checked_before_the_body(strict):
    response = post(
        f"{strict.url}/v1/embeddings",
        content=b"{not json",
        headers={"Authorization": "Bearer nope", "Content-Type": "application/json"},
    )
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_unencodable_text_is_repaired_not_a_500(strict):
    # A lone surrogate (JSON can carry one; UTF-8 cannot), also on the no-truncation path.
    for body in ({"inputs": ["a \ud800 b"], "truncate": False}, {"inputs": "\udfff"}):
        response = post(f"{strict.url}/embed", content=json.dumps(body).encode(), headers=JSON)
        assert response.status_code == 200, response.text


def test_blank_text_under_empty_text_error_is_a_400(model_dir):
    from kv_embeddings_integrations.serving import EmbeddingEngine, ServeSettings
    from kv_embeddings_integrations.serving.errors import InvalidInput
    from kv_embeddings_integrations.serving.http_errors import as_api_error

    embedder = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], postprocess="none", empty_text="error")
    engine = EmbeddingEngine(embedder, ServeSettings(served_model_name=NAME))
    with pytest.raises(InvalidInput, match=r"input\[1\] is whitespace only") as caught:
        engine.texts_of(["fine", "   "], "input")
    assert as_api_error(caught.value).status == 400
    assert engine.texts_of(["fine", "  x "], "input") == ["fine", "  x "]


def test_token_ids_without_tiktoken_name_the_client_setting(strict, model_dir, monkeypatch):
    # Where cl100k_base cannot be had offline, token ids get a 400 naming the client setting.
    from kv_embeddings_integrations.serving import EmbeddingEngine, ServeSettings, engine
    from kv_embeddings_integrations.serving.errors import InvalidInput
    from kv_embeddings_integrations.serving.http_errors import as_api_error

    monkeypatch.setattr(engine, "cl100k", lambda: None)
    embedder = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], postprocess="none")
    with pytest.raises(InvalidInput, match="check_embedding_ctx_length=False") as caught:
        EmbeddingEngine(embedder, ServeSettings(served_model_name=NAME)).texts_of([[15339, 1917]], "input")
    assert as_api_error(caught.value).status == 400


@pytest.mark.parametrize("route", ["/v1/embeddings", "/embed"])
def test_too_many_concurrent_requests_get_429_with_retry_after(gated, route):
    # Two requests admitted (one in the held pass, one waiting behind it): the third is refused at once.
    body = {"input": ["word " * 50] * 4, "model": NAME}
    with ThreadPoolExecutor(2) as clients:
        first = clients.submit(post, f"{gated.url}/v1/embeddings", json=body, headers=AUTH)
        assert gated.next_pass() == 4
        second = clients.submit(post, f"{gated.url}/v1/embeddings", json=body, headers=AUTH)
        wait_until(lambda: gated.metric("kv_embed_queue_depth") == 2, "the second request to be admitted")
        tei = {"inputs": body["input"]}
        refused = post(f"{gated.url}{route}", json=tei if route == "/embed" else body, headers=AUTH)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        if route == "/embed":  # TEI's Overloaded
            assert refused.json()["error_type"] == "Overloaded"
            assert "--max-concurrent-requests 2" in refused.json()["error"]
        else:
            assert "--max-concurrent-requests 2" in refused.json()["error"]["message"]
            assert refused.json()["error"]["type"] == "rate_limit_error"
        gated.step()
        assert gated.next_pass() == 4  # the waiting one's own pass
        gated.step()
        assert [first.result().status_code, second.result().status_code] == [200, 200]
    # Room again once they are answered.
    with ThreadPoolExecutor(1) as clients:
        again = clients.submit(post, f"{gated.url}/v1/embeddings", json=body, headers=AUTH)
        assert gated.next_pass() == 4
        gated.step()
        assert again.result().status_code == 200


# -- fuzzing ---------------------------------------------------------------------------------------

# Any Unicode, lone surrogates included (JSON escapes them; the server decodes them to str).
_unicode = st.text(st.characters(exclude_categories=()))
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _unicode
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_bodies = st.one_of(
    _json,
    st.fixed_dictionaries(
        {"input": _json, "model": st.sampled_from([NAME, "x"])},
        optional={"encoding_format": _json, "dimensions": _json, "input_type": _json, "user": _json},
    ),
    st.fixed_dictionaries(
        {"inputs": _json},
        optional={"normalize": _json, "truncate": _json, "prompt_name": _json, "truncation_direction": _json},
    ),
    # TEI's token-id inputs (this model's ids, some out of its vocabulary), alone, batched, mixed.
    st.fixed_dictionaries({"inputs": st.recursive(st.integers(-2, 400), lambda x: st.lists(x | _unicode, max_size=3))}),
    st.fixed_dictionaries({"input": st.lists(_unicode.filter(bool), min_size=1, max_size=3), "model": st.just(NAME)}),
)  # fmt: skip


_FUZZ_STATUSES: set[int] = set()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_bodies, path=st.sampled_from(["/v1/embeddings", "/embed"]))
def test_fuzzed_bodies_never_get_a_500(strict, body, path):
    response = post(f"{strict.url}{path}", content=json.dumps(body).encode(), headers=JSON)
    _FUZZ_STATUSES.add(response.status_code)
    if path == "/embed":  # TEI's shape and statuses
        assert response.status_code in (200, 400, 413, 422, 429), (response.status_code, response.text)
        if response.status_code != 200:
            assert set(response.json()) == {"error", "error_type"}, response.text
        return
    assert response.status_code in (200, 400, 413, 429), (response.status_code, response.text)
    if response.status_code != 200:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200))
def test_fuzzed_bytes_never_get_a_500(strict, raw):
    response = post(f"{strict.url}/v1/embeddings", content=raw, headers=JSON)
    assert response.status_code in (400, 413), (response.status_code, response.text)


def test_server_still_answers_after_the_fuzzing(strict):
    # The fuzzing reached both the embedding path and the refusals.
    assert {200, 400} <= _FUZZ_STATUSES or not _FUZZ_STATUSES, _FUZZ_STATUSES
    response = post(f"{strict.url}/v1/embeddings", json={"input": "still here", "model": NAME}, headers=AUTH)
    assert response.status_code == 200 and strict.process.poll() is None


def test_every_refusal_status_is_declared_in_the_servers_own_document(strict):
    # The document's responses hold every status the cases above get, on their own route and method.
    paths = get(f"{strict.url}/openapi.json").json()["paths"]
    cases = [("POST", path, status) for _, path, _, _, status, _, _ in ERRORS if path in paths]
    cases += [(method, path, status) for _, method, path, _, _, status, _, _ in TEI_ERRORS if path in paths]
    for method, path, status in cases:
        declared = paths[path].get(method.lower(), {}).get("responses", {})
        if status == 405:  # no such method: the framework's answer, for an operation that does not exist
            assert method.lower() not in paths[path]
            continue
        assert str(status) in declared, (method, path, status, sorted(declared))
