"""Concurrent requests are coalesced into shared forward passes, with the vectors of lone calls."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import PAPER, TEXTS, make_model, ticks_during

from kv_embeddings_integrations import KVEmbedder, KVEmbedding, KVEmbeddings
from kv_embeddings_integrations.coalescing import RequestCoalescer

QUERIES = [f"{text} ({i})" for i, text in enumerate(TEXTS * 13)][:64]


@pytest.fixture
def embedder(tokenizer):
    return KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], **PAPER)


def test_concurrent_async_requests_share_batches(embedder):
    sequential = np.stack([embedder.encode(q, prompt_type="query") for q in QUERIES])

    async def burst():
        return await asyncio.gather(*(embedder.aencode(q, prompt_type="query") for q in QUERIES))

    concurrent, ticks = asyncio.run(ticks_during(burst()))
    np.testing.assert_allclose(np.stack(concurrent), sequential, atol=1e-5)
    sizes = embedder._coalescer.batch_sizes
    assert sum(sizes) == len(QUERIES) and len(sizes) < len(QUERIES) / 4, sizes
    assert ticks > 1  # the event loop kept running while the batches ran


def test_threads_submitting_share_batches(embedder):
    expected = embedder.encode(QUERIES)
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(lambda i=i: embedder.submit(QUERIES[i]).result()) for i in range(len(QUERIES))]
        got = np.stack([f.result() for f in futures])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len(embedder._coalescer.batch_sizes) < len(QUERIES)


def test_requests_of_several_kinds_and_sizes(embedder):
    futures = {
        "doc": embedder.submit(TEXTS[:3]),
        "query": embedder.submit(TEXTS[:3], prompt_type="query"),
        "raw": embedder.submit(TEXTS[:3], normalize=False),
        "one": embedder.submit(TEXTS[0]),
        "none": embedder.submit([]),
    }
    np.testing.assert_allclose(futures["doc"].result(), embedder.encode(TEXTS[:3]), atol=1e-5)
    np.testing.assert_allclose(futures["query"].result(), embedder.encode(TEXTS[:3], prompt_type="query"), atol=1e-5)
    np.testing.assert_allclose(futures["raw"].result(), embedder.encode(TEXTS[:3], normalize=False), atol=1e-5)
    assert futures["one"].result().shape == (embedder.hidden_size,)
    assert futures["none"].result().shape == (0, embedder.hidden_size)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        embedder.submit(["ok", 3])
    with pytest.raises(ValueError, match="prompt_type"):
        embedder.submit("ok", prompt_type="passage")


def test_a_failing_request_does_not_fail_its_batch_mates():
    calls: list[list[str]] = []
    release = threading.Event()

    def encode(texts, prompt_type, normalize):
        calls.append(texts)
        release.wait(5)
        if "bad" in texts:
            raise RuntimeError("cannot embed 'bad'")
        return np.ones((len(texts), 2), dtype=np.float32)

    coalescer = RequestCoalescer(encode, max_wait=0)
    first = coalescer.submit(["first"], "document")
    time.sleep(0.05)  # the worker is now busy with `first`; the next three queue behind it
    futures = [coalescer.submit([t], "document") for t in ("a", "bad", "b")]
    release.set()
    assert first.result(5).shape == (1, 2)
    assert futures[0].result(5).shape == (1, 2) and futures[2].result(5).shape == (1, 2)
    with pytest.raises(RuntimeError, match="cannot embed 'bad'"):
        futures[1].result(5)
    assert ["a", "bad", "b"] in calls  # they were tried together first


def test_idle_worker_thread_exits():
    coalescer = RequestCoalescer(lambda t, p, n: np.zeros((len(t), 1), np.float32), idle_timeout=0.05)
    coalescer.submit(["x"], "document").result(5)
    deadline = time.monotonic() + 5
    while coalescer._worker is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert coalescer._worker is None
    assert coalescer.submit(["y"], "document").result(5).shape == (1, 1)  # and restarts on demand


def test_embedder_pickles_after_serving_requests(embedder):
    embedder.submit(TEXTS[0]).result()
    clone = pickle.loads(pickle.dumps(embedder))
    np.testing.assert_allclose(clone.submit(TEXTS[0]).result(), embedder.encode(TEXTS[0]), atol=1e-6)


def test_adapters_coalesce_async_calls(embedder):
    langchain = KVEmbeddings(embedder=embedder, **PAPER)
    llama = KVEmbedding(embedder=embedder, **PAPER)
    expected = [langchain.embed_query(q) for q in QUERIES[:16]]

    async def burst():
        lc = asyncio.gather(*(langchain.aembed_query(q) for q in QUERIES[:16]))
        li = asyncio.gather(*(llama.aget_query_embedding(q) for q in QUERIES[:16]))
        return await lc, await li, await langchain.aembed_documents(TEXTS)

    lc, li, docs = asyncio.run(burst())
    np.testing.assert_allclose(np.array(lc), np.array(expected), atol=1e-5)
    np.testing.assert_allclose(np.array(li), np.array(expected), atol=1e-5)
    np.testing.assert_allclose(np.array(docs), np.array(langchain.embed_documents(TEXTS)), atol=1e-5)
    assert isinstance(lc[0], list) and isinstance(lc[0][0], float)
    with pytest.raises(TypeError, match="list of strings"):
        asyncio.run(langchain.aembed_documents("abc"))


def test_a_dead_worker_fails_its_requests_and_a_new_one_serves_the_next():
    def encode(texts, prompt_type, normalize):
        if texts == ["fatal"]:
            raise KeyboardInterrupt  # escapes the per-request handling (not an Exception)
        return np.ones((len(texts), 2), dtype=np.float32)

    coalescer = RequestCoalescer(encode, max_wait=0)
    with pytest.raises(RuntimeError, match="embedding worker failed: KeyboardInterrupt"):
        coalescer.submit(["fatal"], "document").result(5)
    assert coalescer.submit(["fine"], "document").result(5).shape == (1, 2)


def test_a_cancelled_single_text_request_is_withdrawn(embedder):
    release = threading.Event()
    original = embedder._embed_coalesced

    def slow(texts, prompt_type, normalize):
        release.wait(5)
        return original(texts, prompt_type, normalize)

    embedder._embed_coalesced = slow
    busy = embedder.submit(TEXTS[0])  # holds the worker until released
    time.sleep(0.05)
    withdrawn = embedder.submit(TEXTS[1])
    assert withdrawn.cancel()
    release.set()
    assert busy.result(5).shape == (embedder.hidden_size,)
    assert withdrawn.cancelled()
    assert sum(embedder._coalescer.batch_sizes) == 1  # the cancelled text was never embedded
