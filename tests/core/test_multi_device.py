"""Model parallel through accelerate: layers on different devices give the single-device vectors.

On a CPU-only machine the split is between the CPU and accelerate's disk offload (weights of the
offloaded layers are brought in by accelerate's hooks for each forward); with CUDA, between
``cuda:0`` and the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import PAPER, TEXTS

from kv_embeddings_integrations import KVEmbedder

NUM_LAYERS = 4  # the tiny Llama of helpers.py


def _split_map(first: str, second: str) -> dict[str, str]:
    """Embeddings and the first half of the layers on ``first``, the rest (and the norm) on ``second``."""
    device_map = {"embed_tokens": first, "rotary_emb": first, "norm": second}
    for layer in range(NUM_LAYERS):
        device_map[f"layers.{layer}"] = first if layer < NUM_LAYERS // 2 else second
    return device_map


@pytest.fixture(scope="module")
def single(model_dir):
    return KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], device="cpu", **PAPER)


def test_layers_split_between_cpu_and_disk_offload(model_dir, single, tmp_path):
    # Re-routed layers 1 and 2 sit on either side of the split.
    split = KVEmbedder.from_pretrained(
        str(model_dir),
        layers=[1, 2],
        device_map=_split_map("cpu", "disk"),
        extra={"offload_folder": str(tmp_path)},
        **PAPER,
    )
    assert split.model.hf_device_map["layers.3"] == "disk"
    # The offloaded layer holds no weights in memory; accelerate's hook brings them in per forward.
    assert split.model.layers[3].mlp.up_proj.weight.device.type == "meta"
    assert split.model.layers[0].mlp.up_proj.weight.device.type == "cpu"
    np.testing.assert_allclose(split.encode(TEXTS), single.encode(TEXTS), atol=1e-4)
    np.testing.assert_allclose(
        split.encode(TEXTS, prompt_type="query"), single.encode(TEXTS, prompt_type="query"), atol=1e-4
    )


def test_max_memory_dispatches_automatically(model_dir, single):
    capped = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], max_memory={"cpu": "1GiB"}, **PAPER)
    assert capped.device.type == "cpu"
    np.testing.assert_allclose(capped.encode(TEXTS), single.encode(TEXTS), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_layers_split_between_cuda_and_cpu(model_dir, single):
    split = KVEmbedder.from_pretrained(
        str(model_dir), layers=[1, 2], dtype="float32", device_map=_split_map("cuda:0", "cpu"), **PAPER
    )
    assert split.device.type == "cuda" and split.model.hf_device_map["layers.3"] == "cpu"
    np.testing.assert_allclose(split.encode(TEXTS), single.encode(TEXTS), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(model_dir, single):
    gpu = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], dtype="float32", device="cuda", **PAPER)
    np.testing.assert_allclose(gpu.encode(TEXTS), single.encode(TEXTS), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_data_parallel_on_every_gpu(model_dir, single):
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    texts = TEXTS * 8
    with single.start_pool(devices) as pool:
        np.testing.assert_allclose(pool.encode(texts), single.encode(texts), atol=1e-4)
