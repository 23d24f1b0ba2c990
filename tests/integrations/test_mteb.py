"""The mteb encoder: ``mteb.evaluate`` on mteb's offline mock tasks, prompt routing, model metadata."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import PAPER, TEXTS, tiny_model_dir
from pydantic import ValidationError

from kv_embeddings_integrations import KVEmbedder

# conftest points $MTEB_CACHE at a temporary directory before mteb is imported.
mteb = pytest.importorskip("mteb")
from datasets import Dataset  # noqa: E402
from mteb.mocks.mock_tasks import MockClassificationTask, MockRetrievalTask, MockSTSTask  # noqa: E402
from mteb.models.model_meta import ScoringFunction  # noqa: E402
from mteb.types import PromptType  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from kv_embeddings_integrations.integrations.mteb import (  # noqa: E402
    DEFAULT_REVISION,
    KVMTEBEncoder,
    _default_name,
    load_mteb_encoder,
    mteb_encoder,
)

PARAMS = {"layers": [1, 2], **PAPER}
EVALUATE = {"co2_tracker": False, "show_progress_bar": False}


@pytest.fixture(scope="module")
def embedder() -> KVEmbedder:
    return KVEmbedder.from_pretrained(tiny_model_dir(), **PARAMS)


@pytest.fixture(scope="module")
def encoder(embedder) -> KVMTEBEncoder:
    return KVMTEBEncoder(embedder)


def _batches(texts: list[str], batch_size: int = 2) -> DataLoader:
    """What mteb hands an encoder for plain texts: batches of ``{"text": [...]}``."""
    return DataLoader(Dataset.from_dict({"text": texts}), batch_size=batch_size)


def _encode(encoder: KVMTEBEncoder, texts: list[str], **kwargs) -> np.ndarray:
    task = MockSTSTask().metadata
    return encoder.encode(_batches(texts), task_metadata=task, hf_split="test", hf_subset="default", **kwargs)


# mteb's mock classification task has two test texts; sklearn warns about its precision metric.
@pytest.mark.filterwarnings("ignore:Precision is ill-defined")
def test_evaluate_runs_offline_on_mock_tasks(encoder, embedder, tmp_path, monkeypatch):
    calls: list[tuple[list[str], str]] = []
    core_encode = embedder.encode

    def recording_encode(texts, **kwargs):
        calls.append((list(texts), kwargs["prompt_type"]))
        return core_encode(texts, **kwargs)

    monkeypatch.setattr(embedder, "encode", recording_encode)
    cache = mteb.ResultCache(tmp_path / "mteb")
    tasks = [MockSTSTask(), MockRetrievalTask(), MockClassificationTask()]
    results = mteb.evaluate(encoder, tasks, cache=cache, **EVALUATE)

    assert not results.exceptions
    assert [r.task_name for r in results.task_results] == [t.metadata.name for t in tasks]
    for result in results.task_results:
        scores = [score["main_score"] for split in result.scores.values() for score in split]
        assert scores and all(math.isfinite(s) for s in scores), result.task_name
        assert math.isfinite(result.get_score())

    # The results and the model's metadata are in the cache under tmp_path, in these options' folder.
    meta = encoder.mteb_model_meta
    for task in tasks:
        path = cache.get_task_result_path(task.metadata.name, meta)
        assert path.is_file() and tmp_path in path.parents
        assert meta.experiment_name in path.parts and meta.revision in path.parts
    saved = json.loads((path.parent / "model_meta.json").read_text())
    assert saved["name"] == meta.name and saved["experiment_kwargs"]["layers"] == [1, 2]

    # Retrieval: queries get the query prompt; the corpus (mteb joins each title to its text) the
    # document prompt; STS and classification texts the document prompt too.
    queries = sorted(["This is a test sentence", "This is another test sentence"])
    corpus = sorted(["Title of d1 This is a positive sentence", "Title of d2 This is another positive sentence"])
    assert any(sorted(texts) == queries and kind == "query" for texts, kind in calls)
    assert any(sorted(texts) == corpus and kind == "document" for texts, kind in calls)
    assert all(kind == "document" for texts, kind in calls if "dette er en test sætning" in texts)


def test_other_options_keep_their_own_results(encoder, embedder, tmp_path):
    cache = mteb.ResultCache(tmp_path / "mteb")
    other = KVMTEBEncoder(
        KVEmbedder(embedder.model, embedder.tokenizer, embedder.config, name=embedder.name, bias=3.0, **PAPER)
    )
    assert other.mteb_model_meta.name == encoder.mteb_model_meta.name
    for model in (encoder, other):
        mteb.evaluate(model, MockSTSTask(), cache=cache, **EVALUATE)
    paths = {cache.get_task_result_path("MockSTSTask", m.mteb_model_meta) for m in (encoder, other)}
    assert len(paths) == 2 and all(p.is_file() for p in paths)


def test_vectors_match_the_core_and_prompt_types_are_routed(encoder, embedder):
    documents = _encode(encoder, TEXTS, prompt_type=PromptType.document, batch_size=3)
    assert isinstance(documents, np.ndarray) and documents.dtype == np.float32
    assert documents.shape == (len(TEXTS), embedder.hidden_size)
    np.testing.assert_allclose(documents, embedder.encode(TEXTS), atol=1e-5)
    # No prompt type (symmetric tasks): the document prompt.
    np.testing.assert_allclose(_encode(encoder, TEXTS), documents, atol=1e-5)

    queries = _encode(encoder, TEXTS, prompt_type=PromptType.query)
    np.testing.assert_allclose(queries, embedder.encode(TEXTS, prompt_type="query"), atol=1e-5)
    assert not np.allclose(queries, documents, atol=1e-3)

    # mteb scores with the encoder's similarity: cosine.
    np.testing.assert_allclose(
        np.asarray(encoder.similarity(queries, documents)), embedder.similarity(queries, documents), atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(encoder.similarity_pairwise(queries, documents)), np.sum(queries * documents, axis=1), atol=1e-5
    )


def test_encode_edge_cases(encoder, embedder):
    assert _encode(encoder, []).shape == (0, embedder.hidden_size)
    np.testing.assert_allclose(_encode(encoder, TEXTS[:2], precision="float32"), embedder.encode(TEXTS[:2]), atol=1e-5)
    with pytest.raises(ValueError, match="float32"):
        _encode(encoder, TEXTS[:2], precision="int8")
    task = MockSTSTask().metadata
    with pytest.raises(ValueError, match="text only"):
        encoder.encode([{"image": [object()]}], task_metadata=task, hf_split="test", hf_subset="default")


def test_model_meta_validates(encoder, embedder):
    meta = encoder.mteb_model_meta
    assert isinstance(meta, mteb.models.ModelMeta) and isinstance(encoder, mteb.EncoderProtocol)
    assert mteb.models.ModelMeta.model_validate(meta.model_dump()) == meta
    json.dumps(meta.to_dict(), default=str)

    assert meta.name == f"kv-embeddings/{Path(tiny_model_dir()).name}-kv"
    assert meta.revision == DEFAULT_REVISION
    assert meta.embed_dim == embedder.hidden_size
    assert meta.max_tokens == embedder.max_length
    assert meta.n_parameters == embedder.model.num_parameters()
    assert 0 < meta.n_embedding_parameters < meta.n_parameters
    assert meta.memory_usage_mb > 0
    assert meta.similarity_fn_name is ScoringFunction.COSINE
    assert meta.framework == ["PyTorch", "Transformers"] and meta.modalities == ["text"]
    assert meta.model_type == ["dense"] and meta.open_weights and meta.use_instructions
    assert meta.training_datasets == set() and meta.is_zero_shot_on(["STSBenchmark"])
    assert meta.loader is load_mteb_encoder
    assert meta.loader_kwargs == {
        "model": tiny_model_dir(),
        "method": "kv",
        "dtype": "float32",
        "postprocess": "none",
        "lexical": "none",
    }
    assert meta.experiment_kwargs == {
        "layers": [1, 2],
        "bias": 1.0,
        "pooling": "mean_last",
        "mean_scope": "all",
        "max_length": embedder.max_length,
    }


def test_meta_loader_builds_the_same_encoder(encoder, embedder):
    loaded = encoder.mteb_model_meta.load_model()
    assert isinstance(loaded, KVMTEBEncoder) and loaded.embedder is not embedder
    assert loaded.mteb_model_meta.name == encoder.mteb_model_meta.name
    assert loaded.mteb_model_meta.experiment_name == encoder.mteb_model_meta.experiment_name
    assert loaded.embedder.layers == embedder.layers
    np.testing.assert_allclose(loaded.embedder.encode(TEXTS), embedder.encode(TEXTS), atol=1e-5)


def test_load_by_name_with_options():
    encoder = mteb_encoder(tiny_model_dir(), method="mean", revision=None, name="me/tiny-mean", batch_size=2)
    meta = encoder.mteb_model_meta
    assert encoder.embedder.config.method == "mean" and encoder.embedder.layers == []
    assert meta.name == "me/tiny-mean" and not meta.use_instructions
    assert "layers" not in meta.experiment_kwargs and "bias" not in meta.experiment_kwargs
    assert meta.loader_kwargs["layers"] is None and meta.loader_kwargs["batch_size"] == 2
    assert _default_name("Qwen/Qwen3-4B", "kv") == "kv-embeddings/Qwen__Qwen3-4B-kv"


def test_revision_of_a_given_embedder_is_a_label(embedder):
    meta = KVMTEBEncoder(embedder, revision="v1").mteb_model_meta
    assert meta.revision == "v1" and "model_revision" not in meta.loader_kwargs


def test_bad_arguments(embedder):
    with pytest.raises(TypeError, match="method"):
        KVMTEBEncoder(embedder, method="mean")
    with pytest.raises(TypeError, match="model must be"):
        KVMTEBEncoder(42)
    with pytest.raises(ValidationError, match="organization/model_name"):
        KVMTEBEncoder(embedder, name="no-organization")


def test_clear_error_without_mteb(monkeypatch):
    for name in [m for m in sys.modules if m == "mteb" or m.startswith("mteb.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if mteb were not installed
    monkeypatch.delitem(sys.modules, "kv_embeddings_integrations.integrations.mteb")
    with pytest.raises(ImportError, match=r"pip install 'kv-embeddings-integrations\[mteb\]'"):
        importlib.import_module("kv_embeddings_integrations.integrations.mteb")


def test_post_processing_and_family_reach_the_meta_and_its_loader():
    fit = [f"fitting text {i} about {w}" for i in range(10) for w in ("cats", "rain", "code")]
    encoder = mteb_encoder(
        tiny_model_dir(),
        method="kv_pcot",
        layers=[1],
        postprocess="pca",
        dimensions=8,
        postprocess_texts=fit,
        lexical="none",
    )
    meta = encoder.mteb_model_meta
    assert meta.embed_dim == 8
    assert meta.experiment_kwargs["postprocess"] == "pca" and meta.experiment_kwargs["dimensions"] == 8
    loaded = meta.load_model()
    np.testing.assert_allclose(loaded.embedder.encode(TEXTS), encoder.embedder.encode(TEXTS), atol=1e-5)
