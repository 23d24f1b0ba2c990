"""The LlamaIndex adapter: batching, async, pickling, pipelines and indexes."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import CORPUS, PAPER, TEXTS, tiny_model_dir, with_loop_free
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter

from kv_embeddings_integrations import KVEmbedder, KVEmbedding
from kv_embeddings_integrations.integrations.llama_index import KVEmbedding as KVEmbeddingFromModule

PARAMS = {"layers": [1, 2], **PAPER}


@pytest.fixture(scope="module")
def embed_model() -> KVEmbedding:
    return KVEmbedding(model=tiny_model_dir(), **PARAMS)


@pytest.fixture(scope="module")
def core() -> KVEmbedder:
    return KVEmbedder.from_pretrained(tiny_model_dir(), **PARAMS)


def test_identity_and_prompts(embed_model, core):
    assert KVEmbedding is KVEmbeddingFromModule and KVEmbedding.class_name() == "KVEmbedding"
    assert embed_model.model_name == tiny_model_dir() and embed_model.embed_batch_size == 32
    np.testing.assert_allclose(
        embed_model.get_query_embedding(TEXTS[0]), core.encode(TEXTS[0], prompt_type="query"), atol=1e-5
    )
    np.testing.assert_allclose(embed_model.get_text_embedding(TEXTS[0]), core.encode(TEXTS[0]), atol=1e-5)
    np.testing.assert_allclose(embed_model.get_text_embedding_batch(TEXTS), core.encode(TEXTS), atol=1e-5)


def test_text_embeddings_are_batched(embed_model, monkeypatch):
    calls = []
    encode = embed_model.client.encode

    def counting(texts, **kwargs):
        calls.append(len(texts))
        return encode(texts, **kwargs)

    monkeypatch.setattr(embed_model.client, "encode", counting)
    vectors = embed_model.get_text_embedding_batch([f"{t} {i}" for i, t in enumerate(TEXTS * 14)])
    assert len(vectors) == 70 and calls == [32, 32, 6]


@pytest.mark.timing
def test_async_does_not_block_the_event_loop(embed_model):
    texts = TEXTS * 40

    async def both():
        return await embed_model.aget_text_embedding_batch(texts), await embed_model.aget_query_embedding(TEXTS[0])

    vectors, query = asyncio.run(with_loop_free(embed_model.client, both()))
    np.testing.assert_allclose(vectors, embed_model.get_text_embedding_batch(texts), atol=1e-5)
    np.testing.assert_allclose(query, embed_model.get_query_embedding(TEXTS[0]), atol=1e-5)


def test_pickle_round_trip_reattaches_the_model(embed_model):
    clone = pickle.loads(pickle.dumps(embed_model))
    assert clone.client is embed_model.client  # same process: the shared model, not a copy
    assert clone.layers == [1, 2] and clone.model == embed_model.model
    np.testing.assert_allclose(clone.get_text_embedding(TEXTS[1]), embed_model.get_text_embedding(TEXTS[1]), atol=1e-6)


def test_pickle_keeps_an_explicit_embedder(tokenizer):
    from helpers import make_model

    explicit = KVEmbedder(make_model("qwen3"), tokenizer, layers=[1], **PAPER)
    adapter = KVEmbedding(embedder=explicit, **PAPER)
    assert adapter.layers == [1] and adapter.model_name == "Qwen3ForCausalLM"
    clone = pickle.loads(pickle.dumps(adapter))
    assert clone.client is not None and clone.client.layers == [1]
    np.testing.assert_allclose(clone.get_text_embedding(TEXTS[0]), adapter.get_text_embedding(TEXTS[0]), atol=1e-6)


@pytest.mark.processes
def test_ingestion_pipeline_with_two_workers(embed_model, monkeypatch):
    # Offline, the splitter unpickled in a spawned worker looks for tiktoken's encoding; point it
    # at the copy llama-index ships (llama-index sets this variable only inside its own calls).
    import llama_index.core

    static = Path(llama_index.core.__file__).parent / "_static" / "tiktoken_cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(static))
    documents = [Document(text=" ".join(CORPUS[i:] + CORPUS[:i]), id_=f"doc-{i}") for i in range(6)]
    splitter = SentenceSplitter(chunk_size=32, chunk_overlap=0)
    parallel = IngestionPipeline(transformations=[splitter, embed_model]).run(documents=documents, num_workers=2)
    single = IngestionPipeline(transformations=[splitter, embed_model]).run(documents=documents)
    assert len(parallel) == len(single) > len(documents)
    by_id = {(n.ref_doc_id, n.text): n.embedding for n in single}
    for node in parallel:
        np.testing.assert_allclose(node.embedding, by_id[(node.ref_doc_id, node.text)], atol=1e-5)


def test_vector_store_index_retriever_and_query_engine(embed_model, monkeypatch):
    documents = [Document(text=t, metadata={"i": i}, excluded_embed_metadata_keys=["i"]) for i, t in enumerate(TEXTS)]
    index = VectorStoreIndex.from_documents(documents, embed_model=embed_model)
    query = "guitar music in the park"
    hits = index.as_retriever(similarity_top_k=3).retrieve(query)
    docs = np.array(embed_model.get_text_embedding_batch(TEXTS))
    expected = np.argsort(-(docs @ np.array(embed_model.get_query_embedding(query))))[:3]
    assert [h.node.metadata["i"] for h in hits] == expected.tolist()
    np.testing.assert_allclose(
        [h.score for h in hits], np.sort(docs @ np.array(embed_model.get_query_embedding(query)))[::-1][:3], atol=1e-5
    )
    # Retrieval only: response_mode="no_text" calls no LLM; MockLLM fills the slot so that
    # llama-index does not try to import its OpenAI default.
    monkeypatch.setattr(Settings, "_llm", MockLLM())
    engine = index.as_query_engine(response_mode="no_text", similarity_top_k=2)
    response = engine.query(query)
    assert [n.node.metadata["i"] for n in response.source_nodes] == expected[:2].tolist()


def test_settings_embed_model(embed_model, monkeypatch):
    monkeypatch.setattr(Settings, "_embed_model", None)
    Settings.embed_model = embed_model
    index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS])
    assert index.as_retriever(similarity_top_k=1).retrieve(TEXTS[2])[0].node.text in TEXTS
