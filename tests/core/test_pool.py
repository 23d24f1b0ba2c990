"""EmbeddingPool: worker processes give the single-process vectors in input order; errors and lifecycle."""

from __future__ import annotations

import copy
import multiprocessing
import threading

import numpy as np
import pytest
import torch
from helpers import (
    CORPUS,
    EXIT_TIMEOUT,
    HANG,
    HANGS,
    PAPER,
    REJECTED,
    TEXTS,
    make_model,
    make_rejecting_tokenizer,
    wait_until,
)

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.concurrency.process_pool import EmbeddingPool

pytestmark = pytest.mark.timing

# 48 texts of mixed lengths (1 character to a paragraph, 20 to 140 tokens with the prompt), an empty
# text and repeats, so chunks differ in length and the length sort really reorders them.
MIXED = [" ".join(CORPUS[: i % len(CORPUS) + 1])[: 7 * i + 1] for i in range(44)] + ["", *TEXTS[:3]]
MAX_LENGTH = 160


@pytest.fixture(scope="module")
def embedder():
    # Its tokenizer fails on one marker, so a test can make a worker fail.
    embedder = KVEmbedder(
        make_model("qwen3"), make_rejecting_tokenizer(), layers=[1, 2], max_length=MAX_LENGTH, **PAPER
    )
    # The pool rebuilds the embedder in each worker from what it needs, so whatever else an embedder
    # holds (here something that does not pickle) never has to travel.
    embedder.unpicklable = threading.Lock()
    return embedder


@pytest.fixture(scope="module")
def pool(embedder):
    """One pool of two CPU workers for the module: starting workers is the slow part."""
    pool = EmbeddingPool(embedder, ["cpu", "cpu"])
    yield pool
    pool.close(timeout=EXIT_TIMEOUT)
    # Stopped by their sentinel, not terminated (the deadline only catches a hang).
    assert pool.closed and [p.exitcode for p in pool._processes] == [0, 0]
    with pytest.raises(RuntimeError, match="closed"):
        pool.encode(TEXTS)
    pool.close()  # idempotent


def test_matches_single_process_in_input_order(pool, embedder):
    expected = embedder.encode(MIXED)
    vectors = pool.encode(MIXED)
    assert vectors.shape == (len(MIXED), embedder.hidden_size) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    for chunk_size, batch_size in ((1, None), (5, 2), (1000, None)):
        got = pool.encode(MIXED, chunk_size=chunk_size, batch_size=batch_size, show_progress_bar=False)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    permutation = np.random.default_rng(0).permutation(len(MIXED))
    shuffled = pool.encode([MIXED[i] for i in permutation], chunk_size=3)
    np.testing.assert_allclose(shuffled, expected[permutation], atol=1e-5)


def test_single_text_empty_list_and_iterators(pool, embedder):
    one = pool.encode(TEXTS[1])
    assert one.shape == (embedder.hidden_size,)
    np.testing.assert_allclose(one, embedder.encode(TEXTS[1]), atol=1e-5)
    empty = pool.encode([])
    assert empty.shape == (0, embedder.hidden_size) and empty.dtype == np.float32
    np.testing.assert_allclose(pool.encode(iter(TEXTS)), embedder.encode(TEXTS), atol=1e-5)


def test_prompt_type_and_normalize_are_honoured(pool, embedder):
    query = pool.encode(TEXTS, prompt_type="query")
    np.testing.assert_allclose(query, embedder.encode(TEXTS, prompt_type="query"), atol=1e-5)
    assert not np.allclose(query, embedder.encode(TEXTS), atol=1e-3)
    raw = pool.encode(TEXTS, normalize=False)
    np.testing.assert_allclose(raw, embedder.encode(TEXTS, normalize=False), rtol=1e-5, atol=1e-4)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    # Prompt names and precision: quantized in the parent, with its ranges.
    int8 = pool.encode(TEXTS, prompt_name="search_query", precision="int8")
    np.testing.assert_array_equal(int8, embedder.quantize(query, "int8"))
    assert pool.embed(TEXTS, precision="ubinary").vectors.shape == (len(TEXTS), -(-embedder.dimension // 8))


def test_worker_warnings_reach_the_caller(pool):
    with pytest.warns(UserWarning, match=f"longer than max_length={MAX_LENGTH}"):
        pool.encode([" ".join(TEXTS * 6), "short"])


def test_progress_bar(pool, capsys):
    pool.encode(TEXTS, chunk_size=1, show_progress_bar=True)
    assert "Embedding" in capsys.readouterr().err
    pool.encode(TEXTS, chunk_size=1)  # 5 chunks: no bar unless asked
    assert "Embedding" not in capsys.readouterr().err


def test_bad_inputs_fail_in_the_parent(pool):
    with pytest.raises(TypeError, match=r"texts\[1\] is None, not str"):
        pool.encode(["ok", None])
    with pytest.raises(TypeError, match="iterable of strings"):
        pool.encode(b"bytes")
    with pytest.raises(ValueError, match="unknown prompt name 'summary'; known: 'document'"):
        pool.encode("x", prompt_type="summary")
    with pytest.raises(ValueError, match="batch_size"):
        pool.encode("x", batch_size=0)
    for chunk_size in (0, True, 2.5):
        with pytest.raises(ValueError, match="chunk_size"):
            pool.encode("x", chunk_size=chunk_size)


def test_worker_error_is_raised_with_its_traceback_and_the_pool_recovers(pool, embedder):
    # The tokenizer rejects it, in one process too (the parent does not tokenize). It is the
    # longest text, so its chunk goes first and the job fails with most chunks still pending.
    bad = REJECTED + "x" * 500
    with pytest.raises(TypeError):
        embedder.encode([bad])
    with pytest.raises(RuntimeError, match=r"(?s)worker \d on cpu: TypeError.*Worker traceback.*Traceback"):
        pool.encode([*MIXED, bad], chunk_size=2)
    # The failed job's leftovers are skipped or discarded: the next job gets its own vectors.
    np.testing.assert_allclose(pool.encode(MIXED), embedder.encode(MIXED), atol=1e-5)


def test_bad_devices_raise_before_any_process_starts(embedder):
    before = set(multiprocessing.active_children())
    missing = f"cuda:{torch.cuda.device_count() + 7}"
    for devices, match in (
        (["cpu", missing], rf"devices\[1\] = '{missing}'"),
        (["nonsense"], "'nonsense' is not a torch device"),
        ([], "at least one device"),
    ):
        with pytest.raises(ValueError, match=match):
            EmbeddingPool(embedder, devices)
    with pytest.raises(TypeError, match="sequence of devices"):
        EmbeddingPool(embedder, "cpu")
    with pytest.raises(TypeError, match="KVEmbedder"):
        EmbeddingPool(embedder.model, ["cpu"])
    assert set(multiprocessing.active_children()) == before


def test_a_dead_worker_raises_instead_of_hanging(embedder, tmp_path):
    # The worker gets stuck for good on one text, so the job cannot finish unless the parent notices
    # the worker died; it is killed once it is stuck (whenever that is), while the parent waits.
    stuck = tmp_path / "stuck"
    embedder.tokenizer.hang_signal = str(stuck)
    try:
        dying = EmbeddingPool(embedder, ["cpu"])
    finally:
        del embedder.tokenizer.hang_signal  # the module's other pools never hang
    with dying:
        assert dying.devices == (torch.device("cpu"),) and not dying.closed

        def kill_once_stuck():
            try:
                wait_until(stuck.exists, "the worker to reach the text it hangs on")
            finally:
                dying._processes[0].kill()

        killer = threading.Thread(target=kill_once_stuck)
        killer.start()
        with pytest.raises(
            RuntimeError, match=r"worker 0 on cpu \(pid \d+\) died with exit code -9 \(killed by SIGKILL\)"
        ):
            dying.encode([*MIXED, HANGS], chunk_size=1, show_progress_bar=False)
        killer.join(HANG)
        assert stuck.exists() and dying.closed
    with pytest.raises(RuntimeError, match="EmbeddingPool is closed"):
        dying.encode(TEXTS)
    dying.close()


def test_a_worker_that_cannot_start_is_reported_with_its_traceback(embedder):
    broken = copy.copy(embedder)
    broken.layers = [99]  # out of range for the 4-layer model: rebuilding the embedder in the worker fails
    failing = EmbeddingPool(broken, ["cpu"])
    with pytest.raises(
        RuntimeError, match=r"(?s)worker 0 on cpu could not start.*ValueError: layers \[99\] out of range"
    ):
        failing.encode(TEXTS)
    assert failing.closed


def test_pool_embed_reports_tokens_and_truncation_like_one_process(pool, embedder):
    texts = [*TEXTS, " ".join(TEXTS * 20)]
    result = pool.embed(texts, chunk_size=2)
    single = embedder.embed(texts)
    assert result.token_counts == single.token_counts and result.truncated == single.truncated
    assert result.num_truncated == 1
    np.testing.assert_allclose(result.vectors, single.vectors, atol=1e-5)
    with pytest.warns(UserWarning, match="1 of 6 texts were longer"):
        pool.encode(texts, chunk_size=2)
