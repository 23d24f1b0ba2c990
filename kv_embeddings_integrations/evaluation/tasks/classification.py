"""Classification: MTEB's logistic regression on draws of the train texts, accuracy on the test texts."""

from __future__ import annotations

import numpy as np

from ..data import ClassificationTask
from ..embeddings import Embeddings
from ..metrics import classification_accuracy, undersample
from ..results import Scores


def evaluate_classification(embed: Embeddings, task: ClassificationTask) -> Scores:
    """Embed the train texts the draws use and the test texts, and score the classifiers.

    The post-processing of a fit other than the built-in one is fitted on both.
    """
    draws = undersample(task.train_labels)
    # Only the train texts some draw picks are embedded; the others stay zero rows nobody reads.
    used = sorted(set().union(*draws))
    used_texts = [task.train_texts[i] for i in used]
    used_vectors = embed(used_texts, "document")
    test = embed(task.test_texts, "document")
    fit_on = np.concatenate([used_vectors, test])
    used_vectors = embed.lexical(embed.finish(used_vectors, fit_on), used_texts)
    test = embed.lexical(embed.finish(test, fit_on), task.test_texts)
    train = np.zeros((len(task.train_texts), used_vectors.shape[1]), dtype=np.float32)
    train[used] = used_vectors
    return Scores(classification_accuracy(train, task.train_labels, test, task.test_labels, draws), [])
