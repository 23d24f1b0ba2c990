"""Properties over arbitrary input (hypothesis), thread and asyncio stress, and loading safety."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import pickle
import threading
import warnings

import numpy as np
import pytest
import torch
import transformers
from helpers import PAPER, TEXTS, make_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.method.layer_selection import LayerSelection, _write_cache

pytestmark = pytest.mark.timing

# Any Unicode, unpaired surrogates and control characters included.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=80)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# Function scope: an embedder keeps a request queue and worker thread that a test could leave busy.
@pytest.fixture
def embedder(tokenizer):
    return KVEmbedder(make_model("qwen3"), tokenizer, layers=[1, 2], max_length=48, **PAPER)


def _quiet(embedder, texts, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation and surrogate warnings are tested elsewhere
        return embedder.encode(texts, **kwargs)


@PROPERTY
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=6))
def test_any_unicode_gives_finite_unit_vectors(embedder, texts):
    vectors = _quiet(embedder, texts)
    assert vectors.shape == (len(texts), embedder.hidden_size) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    raw = _quiet(embedder, texts, normalize=False)
    assert np.isfinite(raw).all()


@PROPERTY
@given(texts=st.lists(ANY_TEXT, min_size=2, max_size=6), seed=st.integers(0, 2**16))
def test_vectors_do_not_depend_on_batch_company_order_or_repetition(embedder, texts, seed):
    together = _quiet(embedder, texts)
    order = np.random.default_rng(seed).permutation(len(texts))
    shuffled = _quiet(embedder, [texts[i] for i in order], batch_size=2)
    np.testing.assert_allclose(shuffled, together[order], atol=1e-4)
    alone = np.stack([_quiet(embedder, [text])[0] for text in texts])
    np.testing.assert_allclose(alone, together, atol=1e-4)
    np.testing.assert_array_equal(_quiet(embedder, texts), together)  # deterministic, bit for bit


QUERIES = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(50)]


@pytest.fixture
def roomy(tokenizer):
    """An embedder whose max_length holds every query whole."""
    return KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], max_length=160, **PAPER)


def test_eight_threads_times_fifty_calls_match_sequential_calls(roomy):
    embedder = roomy
    expected = {text: embedder.encode(text) for text in QUERIES}
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(thread: int) -> None:
        try:
            start.wait()
            # Each thread walks the texts from its own offset, one call per text, by both paths.
            order = QUERIES[thread * 6 :] + QUERIES[: thread * 6]
            results[thread] = [
                embedder.encode(text) if i % 2 else embedder.submit(text).result(30) for i, text in enumerate(order)
            ]
        except BaseException as error:  # surfaced below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sum(len(r) for r in results.values()) == 400
    for thread, vectors in results.items():
        order = QUERIES[thread * 6 :] + QUERIES[: thread * 6]
        for text, vector in zip(order, vectors, strict=True):
            np.testing.assert_allclose(vector, expected[text], atol=1e-5)


def test_eight_tasks_times_fifty_async_calls_match_sequential_calls(roomy):
    embedder = roomy
    expected = embedder.encode(QUERIES, prompt_type="query")

    async def task(offset: int) -> list[np.ndarray]:
        return [await embedder.aencode(QUERIES[(offset + i) % 50], prompt_type="query") for i in range(50)]

    async def main():
        return await asyncio.gather(*(task(7 * t) for t in range(8)))

    for t, vectors in enumerate(asyncio.run(main())):
        np.testing.assert_allclose(np.stack(vectors), np.roll(expected, -7 * t, axis=0), atol=1e-5)


def test_remote_code_runs_only_when_asked(model_dir, monkeypatch):
    seen: list[tuple[str, object]] = []
    for name in ("AutoTokenizer", "AutoModel"):
        auto = getattr(transformers, name)  # patched on the class, so whoever loads is seen
        original = auto.from_pretrained.__func__

        def spy(cls, *args, _name=name, _original=original, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _original(cls, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    KVEmbedder.from_pretrained(str(model_dir), layers=[1], **PAPER)
    assert seen == [("AutoTokenizer", False), ("AutoModel", False)]
    seen.clear()
    KVEmbedder.from_pretrained(str(model_dir), layers=[1], trust_remote_code=True, **PAPER)
    assert seen == [("AutoTokenizer", True), ("AutoModel", True)]


def test_loading_and_the_layer_cache_never_unpickle(model_dir, tmp_path, monkeypatch):
    assert (model_dir / "model.safetensors").exists()
    monkeypatch.setenv("KV_EMBED_CACHE", str(tmp_path))
    KVEmbedder.from_pretrained(str(model_dir), **PAPER)  # computes and caches the layer selection

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    cached = KVEmbedder.from_pretrained(str(model_dir), **PAPER)  # weights from safetensors, selection from JSON
    assert cached.layer_selection.from_cache
    stored = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert stored and all(p.suffix == ".json" for p in stored), stored  # the selection cache is JSON only


def _hammer(path: str, layers: list[int], rounds: int) -> None:
    selection = LayerSelection(layers, [1.0] * 4, "test", 20, 0.1, key={"writer": layers})
    for _ in range(rounds):
        _write_cache(path, selection)


def test_concurrent_processes_never_corrupt_a_cache_file(tmp_path):
    path = tmp_path / "selection.json"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_hammer, args=(str(path), [i], 50)) for i in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [w.exitcode for w in writers] == [0, 0, 0, 0]
    data = json.loads(path.read_text())  # whole: one writer's entry, never a mix
    assert data["key"] == {"writer": data["layers"]}
    assert not list(tmp_path.glob("*.tmp"))
