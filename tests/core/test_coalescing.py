"""Concurrent requests are coalesced into shared forward passes, with the vectors of lone calls;
failures, cancellation and the worker thread's lifecycle; 8 threads and 8 asyncio tasks x 50 calls."""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading
import weakref
from concurrent.futures import CancelledError, ThreadPoolExecutor

import numpy as np
import pytest
from helpers import EXIT_TIMEOUT, HANG, PAPER, TEXTS, PassGate, make_model

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.concurrency.coalescing import RequestCoalescer

pytestmark = pytest.mark.timing

QUERIES = [f"{text} ({i})" for i, text in enumerate(TEXTS * 13)][:64]


@pytest.fixture
def embedder(tokenizer):
    return KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], **PAPER)


def test_concurrent_async_requests_share_batches(embedder):
    sequential = np.stack([embedder.encode(q, prompt_type="query") for q in QUERIES])
    gate = PassGate()
    embedder.batch_start_listeners.append(gate)

    async def burst():
        tasks = [asyncio.ensure_future(embedder.aencode(q, prompt_type="query")) for q in QUERIES]
        await asyncio.sleep(0)  # every task has run to its first await: all 64 requests are queued
        await asyncio.to_thread(gate.wait_started, 1)  # the first pass holds some of them...
        gate.open()  # ...until this loop releases it, which it could not if aencode blocked it
        return await asyncio.gather(*tasks)

    concurrent = asyncio.run(burst())
    np.testing.assert_allclose(np.stack(concurrent), sequential, atol=1e-5)
    assert not gate.stuck
    # Whatever the first pass took, everything else was queued by then and went into one more.
    sizes = embedder.requests.batch_sizes
    assert sum(sizes) == len(QUERIES) and len(sizes) <= 2, sizes


def test_threads_submitting_share_batches(embedder):
    expected = embedder.encode(QUERIES)
    gate = PassGate()
    embedder.batch_start_listeners.append(gate)
    submitted = threading.Semaphore(0)

    def one(i: int) -> np.ndarray:
        future = embedder.submit(QUERIES[i])
        submitted.release()
        return future.result(HANG)

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(one, i) for i in range(len(QUERIES))]
        # 16 threads submitted while the first pass was held: the others wait for one shared pass.
        assert all(submitted.acquire(timeout=HANG) for _ in range(16))
        gate.open()
        got = np.stack([f.result(HANG) for f in futures])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    sizes = embedder.requests.batch_sizes
    assert sum(sizes) == len(QUERIES) and max(sizes) > 1 and len(sizes) < len(QUERIES), sizes


def test_requests_of_several_kinds_and_sizes(embedder):
    futures = {
        "doc": embedder.submit(TEXTS[:3]),
        "query": embedder.submit(TEXTS[:3], prompt_type="query"),
        "raw": embedder.submit(TEXTS[:3], normalize=False),
        "one": embedder.submit(TEXTS[0]),
        "none": embedder.submit([]),
        "named int8": embedder.submit(TEXTS[:3], prompt_name="search_query", precision="int8"),
        "empty binary": embedder.submit([], precision="binary"),
    }
    np.testing.assert_allclose(futures["doc"].result(), embedder.encode(TEXTS[:3]), atol=1e-5)
    np.testing.assert_allclose(futures["query"].result(), embedder.encode(TEXTS[:3], prompt_type="query"), atol=1e-5)
    np.testing.assert_allclose(futures["raw"].result(), embedder.encode(TEXTS[:3], normalize=False), atol=1e-5)
    assert futures["one"].result().shape == (embedder.hidden_size,)
    assert futures["none"].result().shape == (0, embedder.hidden_size)
    np.testing.assert_array_equal(futures["named int8"].result(), embedder.quantize(futures["query"].result(), "int8"))
    assert futures["empty binary"].result().shape == (0, -(-embedder.hidden_size // 8))
    one = asyncio.run(embedder.aencode(TEXTS[0], prompt_name="query", precision="ubinary"))
    np.testing.assert_array_equal(one, embedder.encode(TEXTS[0], prompt_type="query", precision="ubinary"))
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        embedder.submit(["ok", 3])
    with pytest.raises(ValueError, match="unknown prompt name 'summary'; known: 'document'"):
        embedder.submit("ok", prompt_type="summary")


def test_a_failing_request_does_not_fail_its_batch_mates():
    calls: list[list[str]] = []

    def encode(texts, kind):
        calls.append(texts)
        if "bad" in texts:
            raise RuntimeError("cannot embed 'bad'")
        return np.ones((len(texts), 2), dtype=np.float32)

    gate = PassGate()
    coalescer = RequestCoalescer(encode, max_wait=0, start_listeners=[gate])
    first = coalescer.submit(["first"], "document")
    assert gate.wait_started(1) == [1]  # the worker is held in `first`'s pass; the next three queue
    futures = [coalescer.submit([t], "document") for t in ("a", "bad", "b")]
    gate.open()
    assert first.result(HANG).shape == (1, 2)
    assert futures[0].result(HANG).shape == (1, 2) and futures[2].result(HANG).shape == (1, 2)
    with pytest.raises(RuntimeError, match="cannot embed 'bad'"):
        futures[1].result(HANG)
    assert calls[1] == ["a", "bad", "b"]  # they were tried together first, then each alone
    assert sorted(map(tuple, calls[2:])) == [("a",), ("b",), ("bad",)]


def test_idle_worker_thread_exits():
    coalescer = RequestCoalescer(lambda t, kind: np.zeros((len(t), 1), np.float32), idle_timeout=0.05)
    coalescer.submit(["x"], "document").result(HANG)
    worker = coalescer._worker
    worker.join(HANG)  # it exits by itself once idle for idle_timeout
    assert not worker.is_alive() and coalescer._worker is None
    assert coalescer.submit(["y"], "document").result(HANG).shape == (1, 1)  # and restarts on demand


def test_embedder_pickles_after_serving_requests(embedder):
    embedder.submit(TEXTS[0]).result()
    clone = pickle.loads(pickle.dumps(embedder))
    np.testing.assert_allclose(clone.submit(TEXTS[0]).result(), embedder.encode(TEXTS[0]), atol=1e-6)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_fails_its_requests_and_a_new_one_serves_the_next():
    killed: list[threading.Thread] = []

    def encode(texts, kind):
        if texts == ["fatal"]:
            killed.append(threading.current_thread())
            raise KeyboardInterrupt  # escapes the per-request handling (not an Exception)
        return np.ones((len(texts), 2), dtype=np.float32)

    coalescer = RequestCoalescer(encode, max_wait=0)
    with pytest.raises(RuntimeError, match="embedding worker failed: KeyboardInterrupt"):
        coalescer.submit(["fatal"], "document").result(HANG)
    # The worker re-raises what killed it: wait for it to end here, so its traceback is reported
    # (as the expected unhandled-thread warning) in this test and not in whichever runs next.
    [dead] = killed
    dead.join(HANG)
    assert not dead.is_alive()
    assert coalescer.submit(["fine"], "document").result(HANG).shape == (1, 2)


def test_a_cancelled_waiting_request_is_withdrawn_and_a_running_one_finishes(embedder):
    gate = PassGate()
    embedder.batch_start_listeners.append(gate)
    running = embedder.submit_embed(TEXTS[0])
    assert gate.wait_started(1) == [1]  # its pass has started and is held
    withdrawn = embedder.submit(TEXTS[1])  # waits behind it
    abandoned = embedder.submit(TEXTS[2])  # waits too
    assert withdrawn.cancel()
    # A request inside a running pass cannot be withdrawn: the pass finishes and it gets its result.
    assert not running.cancel()
    gate.release()
    assert running.result(HANG).vectors.shape == (1, embedder.hidden_size)
    # The next pass holds the third text, never the withdrawn second one.
    assert gate.wait_started(2) == [1, 1]
    # Its caller gives up while it runs: the caller's future is cancelled, the pass runs to its end.
    assert abandoned.cancel()
    gate.open()
    assert withdrawn.cancelled() and abandoned.cancelled()
    with pytest.raises(CancelledError):
        abandoned.result()
    assert embedder.submit(TEXTS[3]).result(HANG).shape == (embedder.hidden_size,)
    # Passes: the first text, the abandoned third (embedded, result dropped), the fourth.
    assert embedder.requests.batch_sizes == [1, 1, 1]


# -- many threads and tasks on one embedder ------------------------------------------------------

STRESS_QUERIES = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(50)]


@pytest.fixture
def roomy(tokenizer):
    """An embedder whose max_length holds every query whole."""
    return KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], max_length=160, **PAPER)


def test_eight_threads_times_fifty_calls_match_sequential_calls(roomy):
    embedder = roomy
    expected = {text: embedder.encode(text) for text in STRESS_QUERIES}
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(thread: int) -> None:
        try:
            start.wait()
            # Each thread walks the texts from its own offset, one call per text, by both paths.
            order = STRESS_QUERIES[thread * 6 :] + STRESS_QUERIES[: thread * 6]
            results[thread] = [
                embedder.encode(text) if i % 2 else embedder.submit(text).result(30) for i, text in enumerate(order)
            ]
        except BaseException as error:  # surfaced below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(EXIT_TIMEOUT)
    assert not errors, errors
    assert sum(len(r) for r in results.values()) == 400
    for thread, vectors in results.items():
        order = STRESS_QUERIES[thread * 6 :] + STRESS_QUERIES[: thread * 6]
        for text, vector in zip(order, vectors, strict=True):
            np.testing.assert_allclose(vector, expected[text], atol=1e-5)


def test_eight_tasks_times_fifty_async_calls_match_sequential_calls(roomy):
    embedder = roomy
    expected = embedder.encode(STRESS_QUERIES, prompt_type="query")

    async def task(offset: int) -> list[np.ndarray]:
        return [await embedder.aencode(STRESS_QUERIES[(offset + i) % 50], prompt_type="query") for i in range(50)]

    async def main():
        return await asyncio.gather(*(task(7 * t) for t in range(8)))

    for t, vectors in enumerate(asyncio.run(main())):
        np.testing.assert_allclose(np.stack(vectors), np.roll(expected, -7 * t, axis=0), atol=1e-5)


def test_a_dropped_embedder_frees_its_model_at_once_after_serving_requests(tokenizer):
    embedder = KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], **PAPER)
    embedder.submit(TEXTS[0]).result(HANG)  # the request queue and its worker exist
    embedder.encode(TEXTS[:2])
    held = weakref.ref(embedder), weakref.ref(embedder.model)
    gc.disable()  # freed by reference counting alone: no cycle may hold the embedder or its model
    try:
        del embedder
        assert held[0]() is None and held[1]() is None
    finally:
        gc.enable()
