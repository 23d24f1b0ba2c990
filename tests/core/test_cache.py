"""The cache (``core/cache.py``): its root from the environment, a layer cache of JSON that loading
never unpickles, and files that concurrent writers never corrupt."""

from __future__ import annotations

import json
import multiprocessing
import pickle

import pytest
import torch
from helpers import EXIT_TIMEOUT, PAPER

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core import cache
from kv_embeddings_integrations.core.fitting.layer_selection import LayerSelection, _write_cache


@pytest.mark.timing
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


@pytest.mark.timing
def test_concurrent_processes_never_corrupt_a_cache_file(tmp_path):
    path = tmp_path / "selection.json"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_hammer, args=(str(path), [i], 50)) for i in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(EXIT_TIMEOUT)
    assert [w.exitcode for w in writers] == [0, 0, 0, 0]
    data = json.loads(path.read_text())  # whole: one writer's entry, never a mix
    assert data["key"] == {"writer": data["layers"]}
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    assert cache.cache_dir() == tmp_path


def test_the_cache_root_reads_the_new_variable_then_the_earlier_one(monkeypatch, tmp_path):
    from kv_embeddings_integrations.core import cache

    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setenv(cache.LEGACY_CACHE_ENV, str(tmp_path / "earlier"))
    assert cache.cache_dir() == tmp_path / "earlier"  # KV_EMBEDDINGS_CACHE still works
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "new"))
    assert cache.cache_dir() == tmp_path / "new"  # KV_EMBED_CACHE wins where both are set
