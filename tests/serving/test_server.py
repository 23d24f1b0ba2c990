"""``kv-embed serve`` as a real server process on 127.0.0.1, called over real sockets by the
official ``openai`` client, LangChain, LlamaIndex and plain HTTP; errors (OpenAI's shape, and TEI's
on TEI's routes), TEI's truncation direction and token-id inputs, fuzzing and faults."""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import functools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from helpers import EXIT_TIMEOUT, HANG, PAPER, TESTS_DIR, tied_model_dir, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.serving.token_ids import seed_tiktoken_cache

pytestmark = pytest.mark.timing

KEY = "test-key-123"
NAME = "tiny-kv"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
DOCS = [
    "The mitochondria is the powerhouse of the cell.",
    "Paris is the capital and largest city of France.",
    "Python lists are mutable sequences of objects.",
    "The stock market fell sharply on Tuesday.",
    "Photosynthesis turns light into chemical energy in plants.",
    "A binary search halves the interval at every step.",
]
QUERY = "Which organelle makes energy for the cell?"
# The tiny model's options on both sides (server and in-process): re-routed layers fixed, the
# default prompts and centering otherwise.
LAYERS = "1,2"
# A named prompt of the main server's (``--prompt``), picked by input_type / prompt_name.
PROMPTS = {"topic": "The topic of: {text}"}
GATED_SERVE = str(TESTS_DIR / "gated_serve.py")
# Every call waits for its answer (a loaded machine is slow); only a hang reaches the limit.
post = functools.partial(httpx.post, timeout=HANG)
get = functools.partial(httpx.get, timeout=HANG)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``kv-embed serve`` in a child process, ready when ``/ready`` answers 200.

    ``gated=True`` starts it through ``gated_serve.py``: every coalesced forward pass then waits
    for the test (:meth:`next_pass` says one has started and how many texts it holds, :meth:`step`
    runs it, :meth:`open` runs every pass from then on).
    """

    def __init__(
        self, model: str, *extra: str, env: dict[str, str], api_key: str | None = KEY, gated: bool = False
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        entry = [GATED_SERVE] if gated else ["-m", "kv_embeddings_integrations.cli"]
        command = [sys.executable, *entry, "serve", "--model", model]
        command += ["--port", str(self.port), "--served-model-name", NAME, *extra]
        full_env = {**os.environ, **env}
        if api_key is not None:
            full_env["KV_EMBED_API_KEY"] = api_key  # from the environment, as the README says
        self.gated = gated
        self.passes: queue.Queue[int] = queue.Queue()
        pass_fds: tuple[int, ...] = ()
        if gated:
            read_end, write_end = os.pipe()
            full_env["KV_TEST_PASS_FD"] = str(write_end)
            pass_fds = (write_end,)
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed by stop())
        self.process = subprocess.Popen(
            command,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if gated else None,
            pass_fds=pass_fds,
            text=True,
        )
        if gated:
            os.close(write_end)
            threading.Thread(target=self._read_passes, args=(read_end,), daemon=True).start()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in time:\n{self.output()}")

    def _read_passes(self, fd: int) -> None:
        with os.fdopen(fd) as lines:
            for line in lines:
                self.passes.put(int(line))

    def next_pass(self) -> int:
        """Wait until the next coalesced pass has started (and is held); its number of texts."""
        try:
            return self.passes.get(timeout=HANG)
        except queue.Empty:
            raise AssertionError(f"no forward pass started within {HANG} s:\n{self.output()}") from None

    def _tell(self, word: str) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):  # the server has already gone
            self.process.stdin.write(word + "\n")
            self.process.stdin.flush()

    def step(self) -> None:
        """Run the held pass."""
        self._tell("step")

    def open(self) -> None:
        """Run the held pass, if any, and every later one without holding it."""
        self._tell("open")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def metric(self, name: str) -> float:
        text = get(f"{self.url}/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> int:
        if self.gated:
            self.open()  # a held pass would keep the graceful shutdown waiting
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def stopped_gracefully(self) -> bool:
        """Exited after uvicorn's graceful shutdown: status 0, or SIGTERM re-raised once it finished
        (what uvicorn does, so a supervisor sees the signal)."""
        return self.stop() in (0, -signal.SIGTERM) and "Finished server process" in self.output()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    # The autouse fixture's isolated cache (shared with in-process embedders, so centering is fitted
    # once) and a private tiktoken cache.
    base = tmp_path_factory.getbasetemp()
    return {"KV_EMBED_CACHE": str(base / "cache"), "TIKTOKEN_CACHE_DIR": str(base / "tiktoken")}


@pytest.fixture(scope="module")
def server(model_dir, env):
    prompt = "topic=" + PROMPTS["topic"]
    server = Server(str(model_dir), "--layers", LAYERS, "--max-length", "256", "--prompt", prompt, env=env)
    yield server
    assert server.stopped_gracefully(), server.output()


@pytest.fixture(scope="module")
def strict(model_dir, env):
    """Small limits, to reach every refusal cheaply."""
    limits = ["--max-client-batch-size", "4", "--max-request-bytes", "20000", "--max-concurrent-requests", "2"]
    server = Server(str(model_dir), "--layers", LAYERS, "--postprocess", "none", "--lexical", "none", *limits, env=env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gated(model_dir, env):
    """Every forward pass held until the test runs it; at most 2 requests admitted at once."""
    server = Server(
        str(model_dir), "--layers", LAYERS, "--postprocess", "none", "--max-concurrent-requests", "2",
        env=env, gated=True,
    )  # fmt: skip
    yield server
    assert server.stopped_gracefully(), server.output()


@pytest.fixture
def local(model_dir, env, monkeypatch):
    monkeypatch.setenv("KV_EMBED_CACHE", env["KV_EMBED_CACHE"])
    return KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], max_length=256, prompts=PROMPTS)


@pytest.fixture
def tiktoken_cache(env, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", env["TIKTOKEN_CACHE_DIR"])
    assert seed_tiktoken_cache()


def _cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _ranking(query_vector, doc_vectors) -> list[int]:
    return list(np.argsort(-(np.asarray(doc_vectors) @ np.asarray(query_vector)), kind="stable"))


# -- clients ---------------------------------------------------------------------------------------


def test_openai_client_float_base64_and_query_type(server, local):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    expected = local.embed(DOCS)
    floats = client.embeddings.create(model=NAME, input=DOCS, encoding_format="float")
    assert [d.index for d in floats.data] == list(range(len(DOCS)))
    assert _cosines([d.embedding for d in floats.data], expected.vectors).min() >= 0.9999
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == expected.total_tokens
    assert floats.model == NAME
    # The client's own default: base64 on the wire, decoded by the client.
    default = client.embeddings.create(model=NAME, input=DOCS)
    assert _cosines([d.embedding for d in default.data], expected.vectors).min() >= 0.9999
    raw = client.embeddings.create(model=NAME, input=DOCS[:2], encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data]
    assert _cosines(decoded, expected.vectors[:2]).min() >= 0.9999
    # The query prompt through the extension field.
    query = client.embeddings.create(model=NAME, input=[QUERY], extra_body={"input_type": "query"})
    assert _cosines([query.data[0].embedding], local.embed([QUERY], prompt_type="query").vectors)[0] >= 0.9999


async def test_async_openai_client_concurrent_requests_keep_order(server, local):
    import openai

    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    batches = [DOCS[i:] + DOCS[:i] for i in range(len(DOCS))]
    responses = await asyncio.gather(*(client.embeddings.create(model=NAME, input=b) for b in batches))
    for batch, response in zip(batches, responses, strict=True):
        got = [d.embedding for d in sorted(response.data, key=lambda d: d.index)]
        assert _cosines(got, local.embed(batch).vectors).min() >= 0.9999
    await client.close()


@pytest.mark.parametrize("token_ids", [True, False], ids=["token-ids", "text"])
def test_langchain_openai_embeddings_feed_a_vector_store(server, local, tiktoken_cache, token_ids):
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_openai import OpenAIEmbeddings

    # Defaults: LangChain tokenizes with tiktoken's cl100k_base and sends token ids.
    embeddings = OpenAIEmbeddings(
        model=NAME, base_url=f"{server.url}/v1", api_key=KEY, check_embedding_ctx_length=token_ids
    )
    store = InMemoryVectorStore.from_texts(DOCS, embeddings)
    found = [doc.page_content for doc in store.similarity_search(QUERY, k=len(DOCS))]
    # OpenAI's shape has no query flag: LangChain's queries get the document prompt, so the
    # in-process ranking to match is the document prompt's.
    vectors = local.encode(DOCS)
    expected = [DOCS[i] for i in _ranking(local.encode(QUERY), vectors)]
    assert found == expected
    assert _cosines(embeddings.embed_documents(DOCS), vectors).min() >= 0.9999


def test_llamaindex_openai_like_and_tei_clients_build_an_index(server, local):
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    expected = [DOCS[i] for i in _ranking(local.encode(QUERY), local.encode(DOCS))]
    clients = [
        OpenAILikeEmbedding(model_name=NAME, api_base=f"{server.url}/v1", api_key=KEY, embed_batch_size=4),
        TextEmbeddingsInference(model_name=NAME, base_url=server.url, auth_token=KEY, embed_batch_size=4),
    ]
    for embed_model in clients:
        index = VectorStoreIndex.from_documents([Document(text=d) for d in DOCS], embed_model=embed_model)
        nodes = index.as_retriever(similarity_top_k=len(DOCS)).retrieve(QUERY)
        assert [n.node.get_content() for n in nodes] == expected, type(embed_model).__name__


def test_tei_embed_route_normalize_prompt_name_and_root(server, local, strict, model_dir):
    strict_local = KVEmbedder.from_pretrained(str(model_dir), layers=[int(n) for n in LAYERS.split(",")], **PAPER)
    body = {"inputs": DOCS[:3], "prompt_name": "query"}
    response = post(f"{server.url}/embed", json=body, headers=AUTH)
    assert response.status_code == 200 and response.headers["x-truncated-inputs"] == "0"
    assert _cosines(response.json(), local.embed(DOCS[:3], prompt_type="query").vectors).min() >= 0.9999
    # The default's vectors carry a lexical half, which only means something at unit length:
    # unnormalised vectors are refused, naming the field (TEI's 422 on its routes).
    refused = post(f"{server.url}/", json={"inputs": DOCS[0], "normalize": False}, headers=AUTH)
    assert refused.status_code == 422 and "normalize" in refused.json()["error"], refused.text
    # The strict server's dense vectors (--lexical none) come unnormalised when asked.
    raw = post(f"{strict.url}/", json={"inputs": DOCS[0], "normalize": False}, headers=AUTH).json()
    assert abs(np.linalg.norm(raw[0]) - 1) > 1e-3  # not normalised
    assert _cosines(raw, strict_local.embed(DOCS[:1]).vectors)[0] >= 0.9999


# Cohere's, NVIDIA's and Jina's names for the two prompts, as their clients send them.
PROVIDER_INPUT_TYPES = {
    "search_query": "query",
    "search_document": "document",
    "classification": "document",
    "clustering": "document",
    "passage": "document",
    "retrieval.query": "query",
    "retrieval.passage": "document",
    "text-matching": "document",
}


def test_other_providers_input_types_pick_the_prompt_they_name(server, local):
    expected = {kind: local.embed([QUERY], prompt_type=kind).vectors for kind in ("query", "document")}
    assert _cosines(expected["query"], expected["document"])[0] < 0.9999  # the two prompts differ here
    for name, kind in PROVIDER_INPUT_TYPES.items():
        body = {"input": [QUERY], "model": NAME, "input_type": name}
        openai_shape = post(f"{server.url}/v1/embeddings", json=body, headers=AUTH)
        assert openai_shape.status_code == 200, (name, openai_shape.text)
        got = [openai_shape.json()["data"][0]["embedding"]]
        assert _cosines(got, expected[kind])[0] >= 0.9999, name
        tei_shape = post(f"{server.url}/embed", json={"inputs": [QUERY], "prompt_name": name}, headers=AUTH)
        assert tei_shape.status_code == 200, (name, tei_shape.text)
        assert _cosines(tei_shape.json(), expected[kind])[0] >= 0.9999, name


def test_a_named_prompt_on_every_route_and_unknown_names_listed(server, local):
    expected = local.embed([QUERY], prompt_name="topic").vectors
    assert _cosines(expected, local.embed([QUERY]).vectors)[0] < 0.9999  # not the document prompt
    body = {"input": [QUERY], "model": NAME, "input_type": "topic"}
    openai_shape = post(f"{server.url}/v1/embeddings", json=body, headers=AUTH)
    assert _cosines([openai_shape.json()["data"][0]["embedding"]], expected)[0] >= 0.9999
    tei_shape = post(f"{server.url}/embed", json={"inputs": [QUERY], "prompt_name": "topic"}, headers=AUTH)
    assert _cosines(tei_shape.json(), expected)[0] >= 0.9999
    tokens = post(f"{server.url}/tokenize", json={"inputs": "x", "prompt_name": "topic"}, headers=AUTH).json()[0]
    assert "".join(t["text"] for t in tokens if not t["special"]).startswith("The topic of:")
    unknown = post(f"{server.url}/v1/embeddings", json={**body, "input_type": "topics"}, headers=AUTH)
    assert unknown.status_code == 400
    error = unknown.json()["error"]
    assert error["param"] == "input_type"
    assert error["message"].startswith(
        "unknown input_type 'topics'; known: 'topic', 'document', 'query', 'search_document'"
    )
    tei_unknown = post(f"{server.url}/embed", json={"inputs": [QUERY], "prompt_name": "topics"}, headers=AUTH)
    assert tei_unknown.status_code == 422 and tei_unknown.json()["error_type"] == "Validation"
    assert "unknown prompt_name 'topics'; known: 'topic'" in tei_unknown.json()["error"]


def test_embedding_types_in_json_and_base64(server, local):
    import openai

    kinds = ["float", "float16", "int8", "uint8", "binary", "ubinary"]
    body = {"input": DOCS, "model": NAME, "embedding_types": kinds}
    as_json = post(f"{server.url}/v1/embeddings", json=body, headers=AUTH)
    assert as_json.status_code == 200, as_json.text
    items = [d["embedding"] for d in as_json.json()["data"]]
    as_base64 = [
        d["embedding"]
        for d in post(f"{server.url}/v1/embeddings", json={**body, "encoding_format": "base64"}, headers=AUTH).json()[
            "data"
        ]
    ]
    # The server fitted the int8 ranges into the cache this embedder shares: the same ranges here.
    floats = local.encode(DOCS)
    dtypes = {"float": "<f4", "float16": "<f2", "int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}
    for kind in kinds:
        got = np.array([item[kind] for item in items])
        decoded = np.stack([np.frombuffer(base64.b64decode(item[kind]), dtype=dtypes[kind]) for item in as_base64])
        np.testing.assert_array_equal(decoded, got.astype(decoded.dtype))  # one set of numbers, two encodings
        expected = local.quantize(floats, "float32" if kind == "float" else kind)
        assert got.shape == expected.shape, kind
        if kind in ("float", "float16"):
            np.testing.assert_allclose(got, expected, atol=2e-3)
        elif kind in ("int8", "uint8"):  # another batch may round a value at a level's edge the other way
            assert np.abs(got - expected.astype(np.int16)).max() <= 1, kind
        else:
            as_bits = [np.unpackbits(np.asarray(a, dtype=np.int16).astype(np.uint8), axis=1) for a in (got, expected)]
            assert (as_bits[0] == as_bits[1]).mean() > 0.99, kind
    # What the openai client hands back for an explicit encoding_format: each item's object as sent.
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    response = client.embeddings.create(
        model=NAME, input=DOCS[:2], encoding_format="float", extra_body={"embedding_types": ["int8", "binary"]}
    )
    first = response.data[0].embedding
    assert isinstance(first, dict) and set(first) == {"int8", "binary"}
    assert len(first["int8"]) == local.dimension and len(first["binary"]) == -(-local.dimension // 8)
    refused = post(f"{server.url}/v1/embeddings", json={**body, "embedding_types": ["int4"]}, headers=AUTH)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "embedding_types"


def test_tei_info_route_reports_the_model_limits_and_method(server, local):
    info = get(f"{server.url}/info", headers=AUTH)
    assert info.status_code == 200
    body = info.json()
    # TEI's fields (router/src/http/types.rs Info), then this server's own under kv_embed.
    assert body["model_id"] == local.name and body["model_dtype"] == "float32"
    assert body["model_sha"] is None  # a local folder, not a hub download
    assert body["max_input_length"] == 256 == local.max_length
    assert body["max_client_batch_size"] == 2048 and body["max_concurrent_requests"] == 512
    assert body["max_batch_tokens"] is None and body["auto_truncate"] is True
    assert body["model_type"] == {"embedding": {"pooling": local.pooling}}
    assert isinstance(body["version"], str) and body["version"]
    assert body["kv_embed"]["layers"] == [1, 2] and body["kv_embed"]["method"] == local.config.resolved_method
    assert body["kv_embed"]["identity"] == local.identity()["fingerprint"]
    assert get(f"{server.url}/info").status_code == 401  # behind the key, as the embedding routes


def test_a_server_configured_by_environment_variables(model_dir, env):
    # As a container would start it: options from KV_EMBED_*, a flag still above them.
    variables = {"KV_EMBED_LAYERS": "1", "KV_EMBED_MAX_CLIENT_BATCH_SIZE": "3", "KV_EMBED_MAX_CONCURRENT_REQUESTS": "9"}
    server = Server(str(model_dir), "--max-concurrent-requests", "7", env={**env, **variables})
    try:
        info = get(f"{server.url}/info", headers=AUTH).json()
        assert info["kv_embed"]["layers"] == [1]
        assert (info["max_client_batch_size"], info["max_concurrent_requests"]) == (3, 7)
        refused = post(f"{server.url}/embed", json={"inputs": ["a"] * 4}, headers=AUTH)
        assert refused.status_code == 422 and "at most 3" in refused.json()["error"]
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


@pytest.fixture(scope="module")
def sparse_server(env):
    """A model whose LM head survives a base-model load (tied word embeddings)."""
    server = Server(tied_model_dir(), "--method", "kv", "--layers", "1", "--postprocess", "none", env=env)
    yield server
    server.stop()


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


def _cosine(a, b) -> float:
    return float(_cosines([a], [b])[0])


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
        assert _cosines(left.json(), expected).min() > 0.999, spelling
    # Right truncation (the default, and spelled out) keeps the beginning: another vector.
    for body in ({"inputs": [text]}, {"inputs": [text], "truncation_direction": "Right"}):
        right = post(f"{server.url}/embed", json=body, headers=AUTH)
        assert right.status_code == 200 and right.headers["x-truncated-inputs"] == "1"
        assert _cosine(right.json()[0], local.embed([text]).vectors[0]) > 0.9999
        assert _cosine(right.json()[0], left.json()[0]) < 0.99
    # A text that fits is not cut either way; with truncate=false a long one is refused whatever the side.
    short = post(f"{server.url}/embed", json={"inputs": [DOCS[0]], "truncation_direction": "left"}, headers=AUTH)
    assert short.headers["x-truncated-inputs"] == "0" and _cosine(short.json()[0], expected[1]) > 0.9999
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


def test_tei_token_id_inputs_are_the_models_own(server, sparse_server, local):
    texts = [DOCS[0], QUERY]
    tokenize = {"inputs": texts, "add_special_tokens": False}  # the bare texts' ids, as a client holds them
    ids = [[t["id"] for t in row] for row in post(f"{server.url}/tokenize", json=tokenize, headers=AUTH).json()]
    by_text = post(f"{server.url}/embed", json={"inputs": texts}, headers=AUTH).json()
    # One input ([1, 2, 3]), a batch ([[1, 2], [3]]) and a batch of text and ids mixed, as TEI's Input.
    for inputs, expected in (
        (ids[0], by_text[:1]),
        (ids, by_text),
        ([texts[0], ids[1]], by_text),
        ([ids[0], texts[1]], by_text),
    ):
        response = post(f"{server.url}/embed", json={"inputs": inputs}, headers=AUTH)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json(), expected, atol=1e-6)
    # Decoded ids get the prompt as any text.
    query = post(f"{server.url}/embed", json={"inputs": [ids[1]], "prompt_name": "query"}, headers=AUTH).json()
    assert _cosine(query[0], local.embed([QUERY], prompt_type="query").vectors[0]) > 0.9999
    # /embed_sparse takes them too.
    tokens = post(f"{sparse_server.url}/tokenize", json={"inputs": QUERY, "add_special_tokens": False}, headers=AUTH)
    sparse_ids = [t["id"] for t in tokens.json()[0]]
    sparse = [
        post(f"{sparse_server.url}/embed_sparse", json={"inputs": x}, headers=AUTH).json() for x in (QUERY, sparse_ids)
    ]
    assert sparse[0] == sparse[1]
    # The OpenAI route still reads token ids as cl100k_base's: the same ids are another text there.
    openai_shape = post(f"{server.url}/v1/embeddings", json={"input": ids[0], "model": NAME}, headers=AUTH)
    assert openai_shape.status_code == 200, openai_shape.text
    assert _cosine(openai_shape.json()["data"][0]["embedding"], by_text[0]) < 0.999


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
    ("missing model", "/v1/embeddings", AUTH, {"input": "a"}, 400, "'model' is required", "model"),
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
]  # fmt: skip


@pytest.mark.parametrize("case", ERRORS, ids=[case[0] for case in ERRORS])
def test_openai_routes_errors_are_openai_shaped_with_the_right_status(strict, case):
    _, path, headers, body, status, words, param = case
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = post(f"{strict.url}{path}", content=content, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == status, response.text
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
    ("only special ids", "POST", "/embed", AUTH, {"inputs": [[0, 1]]}, 400, "Empty", "inputs[0] decodes to an empty"),
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
    from kv_embeddings_integrations.serving import APIError, EmbeddingEngine, ServeSettings

    embedder = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], postprocess="none", empty_text="error")
    engine = EmbeddingEngine(embedder, ServeSettings(served_model_name=NAME))
    with pytest.raises(APIError, match=r"input\[1\] is whitespace only") as caught:
        engine.texts_of(["fine", "   "], "input")
    assert caught.value.status == 400
    assert engine.texts_of(["fine", "  x "], "input") == ["fine", "  x "]


def test_token_ids_without_tiktoken_name_the_client_setting(strict, model_dir, monkeypatch):
    # Where cl100k_base cannot be had offline, token ids get a 400 naming the client setting.
    from kv_embeddings_integrations.serving import APIError, EmbeddingEngine, ServeSettings, engine

    monkeypatch.setattr(engine, "cl100k", lambda: None)
    embedder = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], postprocess="none")
    with pytest.raises(APIError, match="check_embedding_ctx_length=False") as caught:
        EmbeddingEngine(embedder, ServeSettings(served_model_name=NAME)).texts_of([[15339, 1917]], "input")
    assert caught.value.status == 400


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


# -- faults ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _raw_request(server: Server, texts: list[str]):
    """A client that sends an embeddings request over a plain socket, then hangs up on leaving."""
    payload = json.dumps({"input": texts, "model": NAME}).encode()
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + payload)
        yield


GONE = 'kv_embed_requests_total{route="/v1/embeddings",status="499"}'


def _embeds_alone(server: Server, texts: list[str]) -> None:
    """A request after the others: its pass holds its own texts only, and it is answered."""
    with ThreadPoolExecutor(1) as clients:
        answer = clients.submit(post, f"{server.url}/v1/embeddings", json={"input": texts, "model": NAME}, headers=AUTH)
        assert server.next_pass() == len(texts)
        server.step()
        assert answer.result().status_code == 200 and len(answer.result().json()["data"]) == len(texts)


def test_a_waiting_request_whose_client_hangs_up_is_withdrawn_and_never_embedded(gated):
    embedded, gone = gated.metric("kv_embed_batch_texts_sum"), gated.metric(GONE)
    with ThreadPoolExecutor(1) as clients:
        first = clients.submit(post, f"{gated.url}/v1/embeddings", json={"input": DOCS, "model": NAME}, headers=AUTH)
        assert gated.next_pass() == len(DOCS)  # held inside its pass
        # A second client queues behind that pass, then hangs up while it waits.
        with _raw_request(gated, ["word " * 40] * 5):
            wait_until(lambda: gated.metric("kv_embed_queue_depth") == 2, "the second request to be queued")
        wait_until(lambda: gated.metric(GONE) == gone + 1, "the hung-up request to be logged as 499")
        gated.step()
        assert first.result().status_code == 200 and len(first.result().json()["data"]) == len(DOCS)
    # The next pass holds the next request's 3 texts, not the 5 withdrawn ones (they would have
    # gone first, into the same pass): they were taken off the queue, never embedded.
    _embeds_alone(gated, DOCS[:3])
    assert gated.metric("kv_embed_batch_texts_sum") == embedded + len(DOCS) + 3


def test_a_request_whose_client_hangs_up_inside_its_pass_is_finished_and_dropped(gated):
    # Too late to withdraw: once its pass has started, the pass runs to its end, the texts are
    # embedded (and counted), the answer has no one to go to, and the server carries on.
    embedded, passes, gone = (gated.metric(m) for m in ("kv_embed_batch_texts_sum", "kv_embed_batch_texts_count", GONE))
    with _raw_request(gated, ["word " * 40] * 5):
        assert gated.next_pass() == 5
    wait_until(lambda: gated.metric(GONE) == gone + 1, "the hung-up request to be logged as 499")
    gated.step()
    wait_until(lambda: gated.metric("kv_embed_batch_texts_count") == passes + 1, "the held pass to finish")
    assert gated.metric("kv_embed_batch_texts_sum") == embedded + 5
    _embeds_alone(gated, DOCS)
    assert "Traceback" not in gated.output() and "internal error" not in gated.output()


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(model_dir, env):
    server = Server(str(model_dir), "--layers", LAYERS, "--postprocess", "none", env=env, gated=True)
    body = {"input": ["word " * 100] * 12, "model": NAME}
    with ThreadPoolExecutor(6) as clients:
        calls = [clients.submit(post, f"{server.url}/v1/embeddings", json=body, headers=AUTH) for _ in range(6)]
        server.next_pass()  # one pass is held...
        # ...and all six requests are in: one or more in that pass, the others waiting.
        wait_until(lambda: server.metric("kv_embed_queue_depth") == 6, "all six requests to be admitted")
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "Waiting for connections to close" in server.output(), "the graceful shutdown to begin")
        with pytest.raises(httpx.ConnectError):  # the listening socket is closed: new clients are refused
            httpx.get(f"{server.url}/health", timeout=2)
        server.open()  # now let every pass run: all six must still be answered in full
        answers = [call.result() for call in calls]
    assert [(a.status_code, len(a.json()["data"])) for a in answers] == [(200, 12)] * 6
    server.process.wait(EXIT_TIMEOUT)
    assert server.stopped_gracefully(), server.output()


# -- the bundled model, end to end -----------------------------------------------------------------


@pytest.mark.slow
def test_bundled_model_end_to_end(tmp_path):
    import openai

    # The user's cache, like the other slow tests (the layers and centering chosen once).
    server = Server("smollm2-135m", "--dtype", "float32", env={"TIKTOKEN_CACHE_DIR": str(tmp_path)})
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
        response = client.embeddings.create(model=NAME, input=DOCS)
        local = KVEmbedder.from_pretrained("smollm2-135m", dtype="float32")
        assert _cosines([d.embedding for d in response.data], local.encode(DOCS)).min() >= 0.9999
        assert response.usage.prompt_tokens == local.embed(DOCS).total_tokens
    finally:
        assert server.stopped_gracefully(), server.output()


def test_tokenize_marks_the_tokens_the_tokenizer_adds_as_special():
    # A tokenizer that adds BOS (Gemma's, Llama's): TEI gives such a token no offsets.
    from helpers import make_model, make_tokenizer
    from tokenizers import processors

    from kv_embeddings_integrations.serving.engine import EmbeddingEngine
    from kv_embeddings_integrations.serving.settings import ServeSettings

    tokenizer = make_tokenizer()
    bos = tokenizer.convert_tokens_to_ids("<bos>")
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos)]
    )
    embedder = KVEmbedder(make_model("llama"), tokenizer, layers=[1], postprocess="none")
    engine = EmbeddingEngine(embedder, ServeSettings(served_model_name="x"))
    with_bos = engine.tokens(["Paris is big"], add_special_tokens=True, prompt_type=None)[0]
    assert with_bos[0] == {"id": bos, "text": "<bos>", "special": True, "start": None, "stop": None}
    assert [t["special"] for t in with_bos[1:]] == [False] * (len(with_bos) - 1)
    without = engine.tokens(["Paris is big"], add_special_tokens=False, prompt_type=None)[0]
    assert without == with_bos[1:]


def test_dimensions_cut_pca_vectors_and_renormalise_only_normalised_ones():
    from helpers import make_model, make_tokenizer

    from kv_embeddings_integrations.serving.engine import EmbeddingEngine
    from kv_embeddings_integrations.serving.settings import ServeSettings

    fit_on = [f"{d} ({i})" for i in range(8) for d in DOCS]
    embedder = KVEmbedder(
        make_model("llama"), make_tokenizer(), layers=[1], postprocess="pca", postprocess_texts=fit_on, lexical="none"
    )
    engine = EmbeddingEngine(embedder, ServeSettings(served_model_name="x"))
    full = embedder.encode(DOCS, normalize=False)
    cut = engine.with_dimensions(full, 4, normalize=False)
    np.testing.assert_array_equal(cut, full[:, :4])  # the leading (largest-variance) components
    unit = engine.with_dimensions(embedder.encode(DOCS), 4)
    np.testing.assert_allclose(unit, full[:, :4] / np.linalg.norm(full[:, :4], axis=1, keepdims=True), atol=1e-5)
    assert engine.with_dimensions(full, None, normalize=False) is full
