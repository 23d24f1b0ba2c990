"""The bundled model's vectors stay what they were: values saved before the core API refactor (issue 14).

``tests/data/smollm2_vectors.npz`` was written by the release before that refactor (commit 81f35ad)
on an AMD EPYC CPU, float32. On the machine that saved them the vectors are equal bit for bit; other
CPUs may round float32 sums differently, hence the tolerance.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from helpers import TESTS_DIR

from kv_embeddings_integrations import KVEmbedder

GOLDEN = TESTS_DIR / "data" / "smollm2_vectors.npz"
# label -> options; the max_length=64 variants name the layer automatic selection chose at full
# length ([29]), which is what they re-routed when saved, so no second selection runs here.
VARIANTS = {
    "kv": {},
    "prompt": {"method": "prompt"},
    "prompteol": {"method": "prompteol"},
    "echo": {"method": "echo"},
    "kv_chunk_mean": {"long_text": "chunk_mean", "max_length": 64, "layers": [29]},
    "kv_truncate": {"max_length": 64, "layers": [29]},
}


@pytest.fixture(scope="module")
def base() -> KVEmbedder:
    # The vectors were saved when method="kv" without post-processing (and without a lexical half)
    # was the default.
    return KVEmbedder.from_pretrained("smollm2-135m", method="kv", postprocess="none", lexical="none")


@pytest.mark.slow
@pytest.mark.parametrize("label", sorted(VARIANTS))
def test_bundled_vectors_unchanged(base, label):
    saved = np.load(GOLDEN, allow_pickle=False)
    texts = [str(t) for t in saved["texts"]]
    embedder = KVEmbedder(base.model, base.tokenizer, base.config, name=base.name, **VARIANTS[label])
    assert embedder.layers == ([] if label in ("prompt", "prompteol", "echo") else [29])
    with pytest.warns(UserWarning) if "truncate" in label else contextlib.nullcontext():
        for prompt_type in ("document", "query"):
            got = embedder.encode(texts, prompt_type=prompt_type)
            np.testing.assert_allclose(got, saved[f"{label}_{prompt_type}"], rtol=0, atol=2e-5)
