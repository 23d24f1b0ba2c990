"""The LangChain adapter: LangChain's own standard suites, async, vector store and cache."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from helpers import PAPER, TEXTS, tiny_model_dir, with_loop_free
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests
from pydantic import ValidationError

from kv_embeddings_integrations import KVEmbedder, KVEmbeddings
from kv_embeddings_integrations.integrations.langchain import KVEmbeddings as KVEmbeddingsFromModule

PARAMS = {"layers": [1, 2], **PAPER}


class _TinyModel:
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return KVEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": tiny_model_dir(), **PARAMS}


class TestKVEmbeddingsUnit(_TinyModel, EmbeddingsUnitTests):
    """LangChain's standard unit suite, unmodified."""


class TestKVEmbeddingsIntegration(_TinyModel, EmbeddingsIntegrationTests):
    """LangChain's standard integration suite, unmodified."""


@pytest.fixture(scope="module")
def embeddings() -> KVEmbeddings:
    return KVEmbeddings(model=tiny_model_dir(), **PARAMS)


def test_same_class_from_both_import_paths():
    assert KVEmbeddings is KVEmbeddingsFromModule


def test_documents_and_queries_use_their_prompts(embeddings):
    core = KVEmbedder.from_pretrained(tiny_model_dir(), **PARAMS)
    docs = embeddings.embed_documents(TEXTS)
    assert isinstance(docs, list) and all(type(x) is float for x in docs[0])
    np.testing.assert_allclose(docs, core.encode(TEXTS), atol=1e-5)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[0]), core.encode(TEXTS[0], prompt_type="query"), atol=1e-5)
    assert not np.allclose(embeddings.embed_query(TEXTS[0]), docs[0], atol=1e-3)


def test_fields_and_errors(embeddings):
    assert embeddings.method == "kv" and embeddings.layers == [1, 2] and embeddings.bias == 1.0
    with pytest.raises(ValidationError, match="bogus"):
        KVEmbeddings(model=tiny_model_dir(), bogus=1, **PAPER)
    with pytest.raises(ValidationError, match="method"):
        KVEmbeddings(model=tiny_model_dir(), method="nope")
    with pytest.raises(TypeError, match="one str"):
        embeddings.embed_documents("abc")
    assert embeddings.embed_documents([]) == []


def test_existing_embedder_is_used_as_is(tokenizer):
    core = KVEmbedder.from_pretrained(tiny_model_dir(), method="mean")
    adapter = KVEmbeddings(embedder=core)
    assert adapter.client is core and adapter.method == "mean" and adapter.model == tiny_model_dir()
    np.testing.assert_allclose(adapter.embed_documents(TEXTS), core.encode(TEXTS), atol=1e-6)


@pytest.mark.timing
def test_async_does_not_block_the_event_loop(embeddings):
    texts = TEXTS * 40
    vectors = asyncio.run(with_loop_free(embeddings.client, embeddings.aembed_documents(texts)))
    np.testing.assert_allclose(vectors, embeddings.embed_documents(texts), atol=1e-5)


def test_concurrent_async_calls_on_one_model(embeddings):
    queries = [f"{t} {i}" for i, t in enumerate(TEXTS * 4)]

    async def main():
        return await asyncio.gather(*(embeddings.aembed_query(q) for q in queries))

    concurrent = asyncio.run(main())
    sequential = [embeddings.embed_query(q) for q in queries]
    np.testing.assert_allclose(concurrent, sequential, atol=1e-5)


def test_in_memory_vector_store_ranks_by_cosine(embeddings):
    store = InMemoryVectorStore(embedding=embeddings)
    ids = store.add_texts(TEXTS, metadatas=[{"i": i} for i in range(len(TEXTS))])
    assert len(ids) == len(TEXTS)
    query = "guitar music in the park"
    hits = store.similarity_search_with_score(query, k=len(TEXTS))
    docs = np.array(embeddings.embed_documents(TEXTS))
    expected = np.argsort(-(docs @ np.array(embeddings.embed_query(query))))
    assert [doc.metadata["i"] for doc, _ in hits] == expected.tolist()


def test_cache_backed_embeddings(embeddings, monkeypatch):
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_core.stores import InMemoryByteStore

    store, query_store = InMemoryByteStore(), InMemoryByteStore()
    # Queries get their own store: query and document vectors of one text differ (two prompts),
    # and query_embedding_cache=True would share the document store's keys.
    cached = CacheBackedEmbeddings.from_bytes_store(
        embeddings, store, namespace="kv-tiny", query_embedding_cache=query_store, key_encoder="sha256"
    )
    first = cached.embed_documents(TEXTS)
    query = cached.embed_query(TEXTS[0])
    assert len(list(store.yield_keys())) == len(TEXTS) and len(list(query_store.yield_keys())) == 1
    np.testing.assert_allclose(first, embeddings.embed_documents(TEXTS), atol=1e-6)
    np.testing.assert_allclose(query, embeddings.embed_query(TEXTS[0]), atol=1e-6)
    # Second time round everything comes from the store: the model is not called.
    monkeypatch.setattr(embeddings.client, "encode", lambda *a, **k: pytest.fail("model called"))
    assert cached.embed_documents(TEXTS) == first
    assert cached.embed_query(TEXTS[0]) == query
