"""text-embeddings-inference's routes on a real server: /embed, /info, /tokenize, /decode,
/embed_sparse, truncation (both directions) and token-id inputs."""

from __future__ import annotations

import bisect

import numpy as np
import pytest
from helpers import PAPER, tied_model_dir
from pydantic import BaseModel, ConfigDict, Field
from server_harness import AUTH, DOCS, LAYERS, NAME, QUERY, Server, cosine, cosines, get, post

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.running.inputs import TokenIds

pytestmark = pytest.mark.timing


def test_tei_embed_route_normalize_prompt_name_and_root(server, local, strict, model_dir):
    strict_local = KVEmbedder.from_pretrained(str(model_dir), layers=[int(n) for n in LAYERS.split(",")], **PAPER)
    body = {"inputs": DOCS[:3], "prompt_name": "query"}
    response = post(f"{server.url}/embed", json=body, headers=AUTH)
    assert response.status_code == 200 and response.headers["x-truncated-inputs"] == "0"
    assert cosines(response.json(), local.embed(DOCS[:3], prompt_type="query").vectors).min() >= 0.9999
    # The default's vectors carry a lexical half, which only means something at unit length:
    # unnormalised vectors are refused, naming the field (TEI's 422 on its routes).
    refused = post(f"{server.url}/", json={"inputs": DOCS[0], "normalize": False}, headers=AUTH)
    assert refused.status_code == 422 and "normalize" in refused.json()["error"], refused.text
    # The strict server's dense vectors (--lexical none) come unnormalised when asked.
    raw = post(f"{strict.url}/", json={"inputs": DOCS[0], "normalize": False}, headers=AUTH).json()
    assert abs(np.linalg.norm(raw[0]) - 1) > 1e-3  # not normalised
    assert cosines(raw, strict_local.embed(DOCS[:1]).vectors)[0] >= 0.9999


class TEIEmbeddingModel(BaseModel):
    pooling: str


class TEIModelType(BaseModel):
    embedding: TEIEmbeddingModel


class TEIInfo(BaseModel):
    """TEI's ``Info`` schema, field by field as its OpenAPI document gives it (required, types,
    nullability), parsed strictly as a typed client would; other fields are allowed."""

    model_config = ConfigDict(strict=True, extra="allow")

    model_id: str
    model_sha: str | None
    model_dtype: str
    served_model_name: str
    model_type: TEIModelType
    max_concurrent_requests: int = Field(ge=0)
    max_input_length: int = Field(ge=0)
    max_batch_tokens: int = Field(ge=0)
    max_batch_requests: int | None = Field(default=None, ge=0)
    max_client_batch_size: int = Field(ge=0)
    auto_truncate: bool
    tokenization_workers: int = Field(ge=0)
    version: str
    sha: str | None = None
    docker_label: str | None = None


def test_tei_info_route_parses_as_teis_info_and_reports_the_method(server, local):
    info = get(f"{server.url}/info", headers=AUTH)
    assert info.status_code == 200
    body = info.json()
    parsed = TEIInfo.model_validate(body)  # a strictly typed TEI client reads it
    assert parsed.model_id == local.name and parsed.model_dtype == "float32" and parsed.served_model_name == NAME
    assert parsed.model_sha is None  # a local folder, not a hub download
    assert parsed.max_input_length == 256 == local.max_length
    assert parsed.max_client_batch_size == 2048 and parsed.max_concurrent_requests == 512
    # No token budget set: the rows per pass times the longest row bound a pass's tokens.
    assert parsed.max_batch_tokens == 32 * 256 and parsed.max_batch_requests == 32
    assert parsed.auto_truncate is True  # TEI's default, and this server's: over-long inputs are cut
    assert body["model_type"] == {"embedding": {"pooling": local.pooling}}
    assert parsed.version
    assert body["kv_embed"]["layers"] == [1, 2] and body["kv_embed"]["method"] == local.config.resolved_method
    assert body["kv_embed"]["identity"] == local.identity()["fingerprint"]
    assert get(f"{server.url}/info").status_code == 401  # behind the key, as the embedding routes


def test_a_server_configured_by_environment_variables(model_dir, env):
    # As a container would start it: options from KV_EMBED_*, a flag still above them, and the
    # routes Vertex AI names in its own variables.
    variables = {
        "KV_EMBED_LAYERS": "1",
        "KV_EMBED_MAX_CLIENT_BATCH_SIZE": "3",
        "KV_EMBED_MAX_CONCURRENT_REQUESTS": "9",
        "KV_EMBED_AUTO_TRUNCATE": "false",
        "AIP_PREDICT_ROUTE": "/predictions/kv",
        "AIP_HEALTH_ROUTE": "/healthz",
    }
    names = ["--served-model-name", f"{NAME},second"]  # after the harness's own: the last flag wins
    server = Server(
        str(model_dir), "--max-concurrent-requests", "7", "--max-length", "64", *names, env={**env, **variables}
    )
    try:
        info = get(f"{server.url}/info", headers=AUTH).json()
        assert info["kv_embed"]["layers"] == [1]
        assert (info["max_client_batch_size"], info["max_concurrent_requests"]) == (3, 7)
        assert info["served_model_name"] == NAME  # the first name; the others are accepted too
        second = post(f"{server.url}/v1/embeddings", json={"input": "a", "model": "second"}, headers=AUTH)
        assert second.status_code == 200 and second.json()["model"] == "second"
        refused = post(f"{server.url}/embed", json={"inputs": ["a"] * 4}, headers=AUTH)
        assert refused.status_code == 422 and "at most 3" in refused.json()["error"]
        # --auto-truncate false: an over-long input is refused unless the request asks for a cut.
        assert info["auto_truncate"] is False
        long = "word " * 200
        refused = post(f"{server.url}/embed", json={"inputs": long}, headers=AUTH)
        assert refused.status_code == 422 and "longer than the model's max_length" in refused.json()["error"]
        cut = post(f"{server.url}/embed", json={"inputs": long, "truncate": True}, headers=AUTH)
        assert cut.status_code == 200 and cut.headers["x-truncated-inputs"] == "1"
        # Vertex AI's prediction and health routes, where its variables put them.
        vertex = post(f"{server.url}/predictions/kv", json={"instances": [{"inputs": "a"}]}, headers=AUTH)
        direct = post(f"{server.url}/embed", json={"inputs": "a"}, headers=AUTH).json()
        assert vertex.status_code == 200 and vertex.json() == {"predictions": [direct]}
        assert get(f"{server.url}/healthz").status_code == 200
        assert post(f"{server.url}/predictions/kv", json={"instances": []}).status_code == 401  # behind the key
    finally:
        server.stop()


def test_tei_tokenize_and_decode_show_what_the_model_sees(server, local):
    text = "Café au lait, naïve — 東京 <bos> done"
    response = post(f"{server.url}/tokenize", json={"inputs": [text, DOCS[0]]}, headers=AUTH)
    assert response.status_code == 200
    rows = response.json()
    assert len(rows) == 2
    reference = local.tokenizer([text, DOCS[0]], return_special_tokens_mask=True)
    for row, ids, mask, string in zip(
        rows, reference["input_ids"], reference["special_tokens_mask"], [text, DOCS[0]], strict=True
    ):
        assert [t["id"] for t in row] == ids
        assert [t["special"] for t in row] == [bool(m) for m in mask]
        for token in row:
            assert set(token) == {"id", "text", "special", "start", "stop"}
            if token["special"]:
                assert token["start"] is token["stop"] is None
                assert token["text"] == local.tokenizer.convert_ids_to_tokens(token["id"])
            else:
                # UTF-8 byte offsets into the input, as TEI's; the text is that slice.
                assert string.encode()[token["start"] : token["stop"]].decode() == token["text"]
    # As TEI (the tokenizer's special-token mask): a special token typed in the text is the text's.
    bos = next(t for t in rows[0] if t["text"] == "<bos>")
    assert bos["id"] == local.tokenizer.convert_tokens_to_ids("<bos>") and not bos["special"]
    assert "".join(t["text"] for t in rows[1]) == DOCS[0]
    # Inside the query prompt: exactly the ids the model is given.
    prompted = post(f"{server.url}/tokenize", json={"inputs": QUERY, "prompt_name": "query"}, headers=AUTH).json()
    assert [t["id"] for t in prompted[0]] == local.tokenize([QUERY], "query")[0].input_ids
    assert QUERY in "".join(t["text"] for t in prompted[0])
    # /decode inverts it, one string per array of ids (a single array is one text).
    decoded = post(f"{server.url}/decode", json={"ids": [t["id"] for t in rows[1]]}, headers=AUTH)
    assert decoded.status_code == 200 and decoded.json() == [DOCS[0]]
    both = post(
        f"{server.url}/decode", json={"ids": reference["input_ids"], "skip_special_tokens": False}, headers=AUTH
    )
    assert both.json() == local.tokenizer.batch_decode(reference["input_ids"], skip_special_tokens=False)
    # Their refusals: TEI_ERRORS.


def test_tei_embed_sparse_route_gives_the_cores_sparse_vectors(sparse_server, server):
    local = KVEmbedder.from_pretrained(tied_model_dir(), method="kv", layers=[1], postprocess="none")
    for prompt_name in (None, "query"):
        body = {"inputs": DOCS[:3]} | ({"prompt_name": prompt_name} if prompt_name else {})
        response = post(f"{sparse_server.url}/embed_sparse", json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        expected = local.encode_sparse(DOCS[:3], prompt_type=prompt_name or "document").to_dicts()
        got = response.json()
        # TEI's shape: per input, a list of {"index", "value"}.
        assert all(set(item) == {"index", "value"} for row in got for item in row)
        assert [[item["index"] for item in row] for row in got] == [sorted(row) for row in expected]
        for row, want in zip(got, expected, strict=True):
            np.testing.assert_allclose([i["value"] for i in row], [want[i["index"]] for i in row], rtol=1e-4)
    one = post(f"{sparse_server.url}/embed_sparse", json={"inputs": DOCS[0]}, headers=AUTH).json()
    assert len(one) == 1
    # A model without its LM head (an untied base model) cannot: TEI's 424 for a model that has no
    # sparse pooling, not a 500.
    refused = post(f"{server.url}/embed_sparse", json={"inputs": "a"}, headers=AUTH)
    assert refused.status_code == 424 and refused.json()["error_type"] == "Backend"
    assert "LM head" in refused.json()["error"]
    bad = post(f"{sparse_server.url}/embed_sparse", json={"inputs": "a", "prompt_name": "x"}, headers=AUTH)
    assert bad.status_code == 422 and "prompt_name" in bad.json()["error"]


def test_models_health_ready_metrics_and_docs(server):
    models = get(f"{server.url}/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == [NAME] and models["object"] == "list"
    assert get(f"{server.url}/health").json() == {"status": "ok"}
    assert get(f"{server.url}/ready").json()["status"] == "ready"
    assert "/v1/embeddings" in get(f"{server.url}/openapi.json").json()["paths"]
    assert get(f"{server.url}/docs").status_code == 200
    passes, texts = server.metric("kv_embed_batch_texts_count"), server.metric("kv_embed_texts_total")
    post(f"{server.url}/v1/embeddings", json={"input": DOCS, "model": NAME}, headers=AUTH)
    # Observed, not only declared: one more coalesced pass, the request's texts counted.
    assert server.metric("kv_embed_batch_texts_count") >= passes + 1
    assert server.metric("kv_embed_texts_total") == texts + len(DOCS)
    metrics = get(f"{server.url}/metrics").text
    for name in (
        'kv_embed_requests_total{route="/v1/embeddings",status="200"}',
        "kv_embed_texts_total",
        "kv_embed_tokens_total",
        "kv_embed_batch_texts_bucket",
        "kv_embed_request_texts_bucket",
        "kv_embed_queue_depth",
        "kv_embed_request_seconds_bucket",
    ):
        assert name in metrics, name


def test_long_text_is_truncated_with_the_count_in_a_header_or_refused(server):
    long_text = "word " * 2000
    ok = post(f"{server.url}/v1/embeddings", json={"input": [long_text, "short"], "model": NAME}, headers=AUTH)
    assert ok.status_code == 200 and ok.headers["x-truncated-inputs"] == "1"
    refused = post(f"{server.url}/embed", json={"inputs": ["short", long_text], "truncate": False}, headers=AUTH)
    assert refused.status_code == 422 and refused.json()["error_type"] == "Validation"  # TEI's status and type
    assert "input 1 is longer than the model's max_length (256 tokens" in refused.json()["error"]


# Two halves that mean different things: right truncation keeps the first, left the second. ASCII,
# so /tokenize's byte offsets are character offsets.
STOCK, PLANTS = "The stock market fell sharply on Tuesday. ", "Plants turn light into chemical energy. "


def test_tei_left_truncation_keeps_the_end_of_an_over_long_text(server, local):
    text = STOCK * 40 + PLANTS * 40
    assert local.tokenize([text])[0].truncated  # over the server's 256 tokens
    # What left truncation keeps, found here by search: the longest tail of the text, cut where one
    # of its tokens starts, that fits max_length in the prompt.
    tokens = post(f"{server.url}/tokenize", json={"inputs": text, "add_special_tokens": False}, headers=AUTH).json()[0]
    starts = [t["start"] for t in tokens]
    first = bisect.bisect_left(
        range(len(starts)), True, key=lambda i: not local.tokenize([text[starts[i] :]])[0].truncated
    )
    tail = text[starts[first] :]
    assert "stock" not in tail  # the second half only
    expected = local.embed([tail, DOCS[0]]).vectors
    for spelling in ("left", "Left"):  # TEI's serde takes both
        body = {"inputs": [text, DOCS[0]], "truncation_direction": spelling}
        left = post(f"{server.url}/embed", json=body, headers=AUTH)
        assert left.status_code == 200 and left.headers["x-truncated-inputs"] == "1", left.text
        assert cosines(left.json(), expected).min() > 0.999, spelling
    # Right truncation (the default, and spelled out) keeps the beginning: another vector.
    for body in ({"inputs": [text]}, {"inputs": [text], "truncation_direction": "Right"}):
        right = post(f"{server.url}/embed", json=body, headers=AUTH)
        assert right.status_code == 200 and right.headers["x-truncated-inputs"] == "1"
        assert cosine(right.json()[0], local.embed([text]).vectors[0]) > 0.9999
        assert cosine(right.json()[0], left.json()[0]) < 0.99
    # A text that fits is not cut either way; with truncate=false a long one is refused whatever the side.
    short = post(f"{server.url}/embed", json={"inputs": [DOCS[0]], "truncation_direction": "left"}, headers=AUTH)
    assert short.headers["x-truncated-inputs"] == "0" and cosine(short.json()[0], expected[1]) > 0.9999
    body = {"inputs": [text], "truncation_direction": "left", "truncate": False}
    assert post(f"{server.url}/embed", json=body, headers=AUTH).status_code == 422


def test_tei_left_truncation_on_embed_sparse(sparse_server):
    # TEI's /embed_sparse takes truncation_direction too. A sparse vector weighs only tokens of the
    # text the model was given: the kept half's. The halves share no letter, so that a token (the one
    # a cut re-tokenizes too) is of one half or the other.
    first, second = "a bad cafe faced a deaf cab. ", "sunny tours run on worn rusty rows. "
    text = first * 200 + second * 200  # each half over the tied model's 1024 tokens
    letters = [set(half) - {" ", "."} for half in (first, second)]
    for direction, kept, cut in (("left", letters[1], letters[0]), ("right", letters[0], letters[1])):
        body = {"inputs": text, "truncation_direction": direction}
        response = post(f"{sparse_server.url}/embed_sparse", json=body, headers=AUTH)
        assert response.status_code == 200 and response.headers["x-truncated-inputs"] == "1", response.text
        ids = [[item["index"]] for item in response.json()[0]]
        tokens = post(f"{sparse_server.url}/decode", json={"ids": ids}, headers=AUTH).json()
        assert any(set(t) & kept for t in tokens) and not any(set(t) & cut for t in tokens), (direction, tokens)


def test_tei_token_id_inputs_are_embedded_as_given(server, sparse_server, local):
    texts = [DOCS[0], QUERY]
    tokenize = {"inputs": texts, "add_special_tokens": False}  # the bare texts' ids, as a client holds them
    ids = [[t["id"] for t in row] for row in post(f"{server.url}/tokenize", json=tokenize, headers=AUTH).json()]
    # What the model must see: exactly these ids, between the prompt's own tokens.
    assert local.splices("document") and local.splices("query")
    given = [TokenIds(row, text) for row, text in zip(ids, texts, strict=True)]
    for encoded, row in zip(local.tokenize(given), ids, strict=True):
        assert encoded.input_ids[encoded.text_start : encoded.text_end] == row
    expected = local.embed(given).vectors
    # One input ([1, 2, 3]), a batch ([[1, 2], [3]]) and a batch of text and ids mixed, as TEI's Input.
    by_text = local.embed(texts).vectors
    for inputs, want in (
        (ids[0], expected[:1]),
        (ids, expected),
        ([texts[0], ids[1]], [by_text[0], expected[1]]),
        ([ids[0], texts[1]], [expected[0], by_text[1]]),
    ):
        response = post(f"{server.url}/embed", json={"inputs": inputs}, headers=AUTH)
        assert response.status_code == 200, response.text
        assert cosines(response.json(), want).min() > 0.9999
    # Ids TEI's decode path would lose (special tokens alone) are embedded too: TEI's {"inputs": [[1]]}.
    special = post(f"{server.url}/embed", json={"inputs": [[0, 1]]}, headers=AUTH)
    assert (
        special.status_code == 200
        and cosine(special.json()[0], local.embed([TokenIds([0, 1], "")]).vectors[0]) > 0.9999
    )
    # In the query prompt too.
    query = post(f"{server.url}/embed", json={"inputs": [ids[1]], "prompt_name": "query"}, headers=AUTH).json()
    assert cosine(query[0], local.embed([given[1]], prompt_type="query").vectors[0]) > 0.9999
    # /embed_sparse takes them too: the weights of the given ids.
    tokens = post(f"{sparse_server.url}/tokenize", json={"inputs": QUERY, "add_special_tokens": False}, headers=AUTH)
    sparse_ids = [t["id"] for t in tokens.json()[0]]
    sparse = post(f"{sparse_server.url}/embed_sparse", json={"inputs": sparse_ids}, headers=AUTH).json()
    assert {item["index"] for item in sparse[0]} <= set(sparse_ids) and sparse[0]
    # The OpenAI route still reads token ids as cl100k_base's: the same ids are another text there.
    openai_shape = post(f"{server.url}/v1/embeddings", json={"input": ids[0], "model": NAME}, headers=AUTH)
    assert openai_shape.status_code == 200, openai_shape.text
    assert cosine(openai_shape.json()["data"][0]["embedding"], expected[0]) < 0.999


def test_tei_embed_all_similarity_and_the_cloud_routes(server, local):
    texts = DOCS[:3]
    # /embed_all: every token's state at the pooled layer, in the re-routed pass (raw, prompt included).
    response = post(f"{server.url}/embed_all", json={"inputs": texts, "prompt_name": "query"}, headers=AUTH)
    assert response.status_code == 200, response.text
    states = local.embed_tokens(texts, prompt_type="query")
    assert [len(row) for row in response.json()] == list(states.token_counts)
    for got, want in zip(response.json(), states.states, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
    # /similarity: the source sentence's cosine with each sentence (TEI's SimilarityResponse).
    body = {"inputs": {"source_sentence": QUERY, "sentences": texts}, "parameters": {"prompt_name": "query"}}
    response = post(f"{server.url}/similarity", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    vectors = local.embed([QUERY, *texts], prompt_type="query").vectors
    np.testing.assert_allclose(response.json(), vectors[1:] @ vectors[0], atol=1e-5)
    # SageMaker's /invocations is /embed for an embedding model, as in TEI.
    embedded = post(f"{server.url}/embed", json={"inputs": texts}, headers=AUTH).json()
    invoked = post(f"{server.url}/invocations", json={"inputs": texts}, headers=AUTH)
    assert invoked.status_code == 200 and cosines(invoked.json(), embedded).min() > 0.9999
    # Vertex AI: each instance an /embed request, each answered in order.
    instances = [{"inputs": texts[:2]}, {"inputs": QUERY, "prompt_name": "query"}]
    vertex = post(f"{server.url}/vertex", json={"instances": instances}, headers=AUTH)
    assert vertex.status_code == 200, vertex.text
    predictions = vertex.json()["predictions"]
    assert cosines(predictions[0], embedded[:2]).min() > 0.9999
    assert cosine(predictions[1][0], local.embed([QUERY], prompt_type="query").vectors[0]) > 0.9999
    # Health where TEI, its Inference API and SageMaker probe it: no key needed.
    for path in ("/health", "/", "/ping"):
        assert get(f"{server.url}{path}").status_code == 200, path
    # A classifier's and a re-ranker's routes answer as TEI answers for an embedding model.
    for path, body in (("/predict", {"inputs": "a"}), ("/rerank", {"query": "q", "texts": ["a"]})):
        refused = post(f"{server.url}{path}", json=body, headers=AUTH)
        assert refused.status_code == 424 and refused.json()["error_type"] == "Backend", refused.text
