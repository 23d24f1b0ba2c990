"""Concurrency and shutdown: clients that hang up, SIGTERM, the bundled model end to end, and the
engine's own token and dimension handling."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from helpers import EXIT_TIMEOUT, wait_until
from server_harness import AUTH, DOCS, KEY, LAYERS, NAME, Server, cosines, post

from kv_embeddings_integrations import KVEmbedder

pytestmark = pytest.mark.timing


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
        assert cosines([d.embedding for d in response.data], local.encode(DOCS)).min() >= 0.9999
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
