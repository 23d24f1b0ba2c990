"""STS: Spearman of the pairs' cosines against the gold scores, and the ``--precision`` rows."""

from __future__ import annotations

from collections.abc import Sequence

from .. import precision as precision_rows
from ..data import STSTask
from ..embeddings import Embeddings
from ..metrics import sts_spearman
from ..results import Scores


def evaluate_sts(embed: Embeddings, task: STSTask, precisions: Sequence[str] = ()) -> Scores:
    """Embed both sides of ``task``'s pairs as documents and score them.

    The post-processing of a fit other than the built-in one is fitted on all of the task's texts.
    """
    texts = task.sentences1 + task.sentences2
    vectors = embed(texts, "document")
    vectors = embed.lexical(embed.finish(vectors, vectors), texts)
    metrics = {"spearman": sts_spearman(vectors[: len(task)], vectors[len(task) :], task.scores)}
    quantizer = embed.quantizer if precisions else None
    extra = precision_rows.sts_rows(precisions, quantizer.quantize, vectors, task) if quantizer is not None else []
    return Scores(metrics, extra)
