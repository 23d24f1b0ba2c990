"""Haystack components in real pipelines: InMemoryDocumentStore, DocumentWriter, the in-memory
embedding retriever, YAML round trips and AsyncPipeline, against the in-process embedder."""

from __future__ import annotations

import asyncio
import os
from inspect import signature

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no phoning home from tests

import numpy as np
import pytest
from helpers import TEXTS

pytest.importorskip("haystack")
import haystack
from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
from haystack.components.writers import DocumentWriter
from haystack.document_stores.in_memory import InMemoryDocumentStore

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.integrations.haystack import KVDocumentEmbedder, KVTextEmbedder

QUERY = "Which city is the capital of France?"
OPTIONS = {"layers": [1, 2], "postprocess": "none"}  # no centering fit: the logic is the core's


@pytest.fixture
def local(model_dir):
    return KVEmbedder.from_pretrained(str(model_dir), **OPTIONS)


def _documents() -> list[Document]:
    return [Document(content=t, meta={"n": i, "title": f"Part {i}"}) for i, t in enumerate(TEXTS)]


def _pipelines(model_dir, store):
    indexing = Pipeline()
    indexing.add_component("embedder", KVDocumentEmbedder(model=str(model_dir), **OPTIONS))
    indexing.add_component("writer", DocumentWriter(document_store=store))
    indexing.connect("embedder.documents", "writer.documents")
    query = Pipeline()
    query.add_component("embedder", KVTextEmbedder(model=str(model_dir), **OPTIONS))
    query.add_component("retriever", InMemoryEmbeddingRetriever(document_store=store, top_k=len(TEXTS)))
    query.connect("embedder.embedding", "retriever.query_embedding")
    return indexing, query


def test_a_pipeline_retrieves_as_the_embedder_ranks(model_dir, local):
    store = InMemoryDocumentStore()
    indexing, query = _pipelines(model_dir, store)
    assert indexing.run({"embedder": {"documents": _documents()}})["writer"]["documents_written"] == len(TEXTS)
    hits = query.run({"embedder": {"text": QUERY}})["retriever"]["documents"]
    # The same ranking and scores (dot products of unit vectors) as the core's own vectors.
    docs, q = local.encode(TEXTS), local.encode([QUERY], prompt_type="query")[0]
    expected = np.argsort(-(docs @ q), kind="stable")
    assert [h.meta["n"] for h in hits] == expected.tolist()
    np.testing.assert_allclose([h.score for h in hits], (docs @ q)[expected], atol=1e-5)
    stored = {d.meta["n"]: d.embedding for d in store.filter_documents()}
    np.testing.assert_allclose([stored[i] for i in range(len(TEXTS))], docs, atol=1e-5)


def test_meta_fields_prefix_and_prompt_name(model_dir, local):
    embedder = KVDocumentEmbedder(model=str(model_dir), meta_fields_to_embed=["title"], **OPTIONS)
    out = embedder.run(_documents()[:2])["documents"]
    expected = local.encode([f"Part {i}\n{TEXTS[i]}" for i in range(2)])
    np.testing.assert_allclose([d.embedding for d in out], expected, atol=1e-5)
    assert [d.content for d in out] == TEXTS[:2] and [d.meta["n"] for d in out] == [0, 1]  # copies, in order
    as_document = KVTextEmbedder(model=str(model_dir), prompt_name="passage", **OPTIONS).run(QUERY)["embedding"]
    np.testing.assert_allclose(as_document, local.encode([QUERY])[0], atol=1e-5)
    prefixed = KVTextEmbedder(model=str(model_dir), prefix="Q: ", **OPTIONS).run(QUERY)["embedding"]
    np.testing.assert_allclose(prefixed, local.encode(["Q: " + QUERY], prompt_type="query")[0], atol=1e-5)
    assert embedder.run([])["documents"] == []


def test_pipelines_round_trip_through_yaml(model_dir):
    store = InMemoryDocumentStore()
    indexing, query = _pipelines(model_dir, store)
    indexing.run({"embedder": {"documents": _documents()}})
    before = query.run({"embedder": {"text": QUERY}})["retriever"]["documents"]
    data = query.to_dict()
    assert data["components"]["embedder"]["init_parameters"]["layers"] == [1, 2]
    # Haystack 3 loads only allowlisted modules' classes: the user says this one is trusted.
    trust = {"allowed_modules": ["kv_embeddings_integrations.integrations.haystack"]}
    reloaded = Pipeline.loads(
        query.dumps(), **(trust if "allowed_modules" in signature(Pipeline.loads).parameters else {})
    )
    reloaded.get_component("retriever").document_store = store  # the in-memory store is not serialised
    after = reloaded.run({"embedder": {"text": QUERY}})["retriever"]["documents"]
    assert [d.id for d in after] == [d.id for d in before]
    copy = KVDocumentEmbedder.from_dict(KVDocumentEmbedder(model=str(model_dir), meta_fields_to_embed=["t"]).to_dict())
    assert copy.meta_fields_to_embed == ["t"] and copy.model == str(model_dir)


def test_async_pipeline_gives_the_same_vectors(model_dir, local):
    # Haystack 3 runs any Pipeline asynchronously; Haystack 2 has a separate AsyncPipeline.
    pipeline = getattr(haystack, "AsyncPipeline", Pipeline)()
    pipeline.add_component("embedder", KVTextEmbedder(model=str(model_dir), **OPTIONS))
    result = asyncio.run(pipeline.run_async({"embedder": {"text": QUERY}}))
    np.testing.assert_allclose(
        result["embedder"]["embedding"], local.encode([QUERY], prompt_type="query")[0], atol=1e-5
    )
    documents = asyncio.run(KVDocumentEmbedder(model=str(model_dir), **OPTIONS).run_async(_documents()[:3]))
    np.testing.assert_allclose([d.embedding for d in documents["documents"]], local.encode(TEXTS[:3]), atol=1e-5)


def test_bad_input_and_options_are_clear_errors(model_dir):
    with pytest.raises(ValueError, match="unknown query_prompt_name 'summary'; known: 'document', 'query'"):
        KVTextEmbedder(model=str(model_dir), prompt_name="summary")
    with pytest.raises(ValueError, match="unknown document_prompt_name 'summary'"):
        KVDocumentEmbedder(model=str(model_dir), prompt_name="summary")
    with pytest.raises(ValueError, match="postprocess"):
        KVTextEmbedder(model=str(model_dir), postprocess="zca")  # checked before any load
    with pytest.raises(TypeError, match="expects a string"):
        KVTextEmbedder(model=str(model_dir), **OPTIONS).run(["a list"])
    with pytest.raises(TypeError, match="expects a list of Documents"):
        KVDocumentEmbedder(model=str(model_dir), **OPTIONS).run(["not a Document"])
