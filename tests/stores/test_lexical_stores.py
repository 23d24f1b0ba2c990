"""The one vector (dense ++ sketched lexical half) in real stores that hold nothing else: Chroma
(persisted, then opened again), FAISS, LangChain's InMemoryVectorStore and LlamaIndex's
VectorStoreIndex, filled and queried through the adapters.

Each store's ranking must be the exact fusion ``(1 - w) * cos_dense + w * cos_lexical`` of the
dense vectors and the unsketched BM25 vectors, computed here apart, up to the sketch's error: two
documents whose exact fused scores differ by more than ``TOLERANCE`` keep their order. And a store
made with another lexical configuration or other statistics is refused by the identity guard.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import tiny_model_dir
from test_vector_stores import QUERIES, _documents

from kv_embeddings_integrations.core.identity import EmbedderMismatchError
from kv_embeddings_integrations.core.outputs import lexical

K = 5
DIM = 2048
WEIGHT = 0.5
OPTIONS = {"layers": [1, 2], "postprocess": "none", "lexical": "bm25", "lexical_dim": DIM, "lexical_weight": WEIGHT}
# The sketch's error on one lexical cosine has a standard deviation of about 1 / sqrt(DIM) and
# stays within 6 / sqrt(DIM) but for heavy collisions (tests/core/test_lexical.py); scaled by the
# lexical share of the score, and doubled for the difference of two documents' errors.
TOLERANCE = 2 * WEIGHT * 6 / math.sqrt(DIM)


@pytest.fixture(scope="module")
def corpus():
    """The documents, and the exact fusion every store is held to (dense and BM25 rows computed apart)."""
    from kv_embeddings_integrations import KVEmbeddings

    docs = _documents(60)
    texts = [d["text"] for d in docs]
    embeddings = KVEmbeddings(model=tiny_model_dir(), **OPTIONS)
    plain = KVEmbeddings(model=tiny_model_dir(), **{**OPTIONS, "lexical": "none"})
    core = embeddings.client
    channel = core.lexical

    def bm25_unit(rows):
        out = np.zeros((len(rows), core.vocab_size))
        for r, (ids, values) in enumerate(rows):
            out[r, ids] = values
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    tokenizer = core.tokenizer
    doc_ids = [tokenizer(t.lower(), add_special_tokens=False)["input_ids"] for t in texts]
    query_ids = [tokenizer(q.lower(), add_special_tokens=False)["input_ids"] for q in QUERIES]
    lexical_cosines = (
        bm25_unit([lexical.bm25_query(i, channel.statistics.idf) for i in query_ids])
        @ bm25_unit([lexical.bm25_document(i, channel.statistics) for i in doc_ids]).T
    )
    query_dense = np.asarray([plain.embed_query(q) for q in QUERIES])
    doc_dense = np.asarray(plain.embed_documents(texts))
    exact = (1 - WEIGHT) * (query_dense @ doc_dense.T) + WEIGHT * lexical_cosines
    return docs, embeddings, exact


def _check_ranking(hits: list[str], exact_row: np.ndarray, ids: list[str], where: str) -> None:
    """The store's top K are the exact fusion's top K, but for documents within TOLERANCE of the cut,
    and in the exact order but for neighbours within TOLERANCE of each other."""
    position = {doc: i for i, doc in enumerate(ids)}
    scores = [exact_row[position[h]] for h in hits]
    kth = np.sort(exact_row)[::-1][K - 1]
    assert len(hits) == K, where
    for doc, score in zip(hits, scores, strict=True):
        assert score >= kth - TOLERANCE, f"{where}: {doc} ({score:.4f}) is not among the exact top {K} ({kth:.4f})"
    for earlier, later in zip(scores, scores[1:], strict=False):
        assert earlier >= later - TOLERANCE, f"{where}: out of order ({earlier:.4f} before {later:.4f})"


def test_the_exact_fusion_differs_from_the_dense_ranking(corpus):
    # Otherwise the stores below would pass with the dense vectors alone.
    docs, embeddings, exact = corpus
    one = np.asarray(embeddings.embed_documents([d["text"] for d in docs]))
    assert one.shape[1] == embeddings.client.dimension > DIM
    dense_top = np.argsort(-(np.asarray([embeddings.embed_query(q) for q in QUERIES])[:, :-DIM] @ one[:, :-DIM].T))
    assert any(set(dense_top[q, :K]) != set(np.argsort(-exact[q])[:K]) for q in range(len(QUERIES)))


def test_langchain_stores_rank_by_the_fusion(corpus, tmp_path):
    import chromadb
    from langchain_chroma import Chroma
    from langchain_community.vectorstores import FAISS
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from kv_embeddings_integrations import KVEmbeddings
    from kv_embeddings_integrations.stores import collection_metadata, verify_collection

    docs, embeddings, exact = corpus
    ids = [d["id"] for d in docs]
    documents = [Document(page_content=d["text"], id=d["id"]) for d in docs]
    Chroma.from_documents(
        documents,
        embeddings,
        ids=ids,
        collection_name="docs",
        persist_directory=str(tmp_path / "chroma"),
        collection_metadata=collection_metadata(embeddings, {"hnsw:space": "cosine"}),
    )
    # Opened again from disk, as a later process would.
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    verify_collection(client.get_collection("docs"), embeddings)
    stores = {
        "chroma": Chroma(client=client, collection_name="docs", embedding_function=embeddings),
        "faiss": FAISS.from_documents(documents, embeddings, ids=ids),
        "in-memory": InMemoryVectorStore.from_documents(documents, embeddings),
    }
    for name, store in stores.items():
        for q, query in enumerate(QUERIES):
            hits = [doc.id for doc in store.similarity_search(query, k=K)]
            _check_ranking(hits, exact[q], ids, f"{name}, {query!r}")

    # Another lexical configuration, or other statistics, is refused.
    collection = client.get_collection("docs")
    for changed in ({"lexical_dim": 1024}, {"lexical": "none"}, {"lexical_texts": [d["text"] for d in docs]}):
        other = KVEmbeddings(model=tiny_model_dir(), **{**OPTIONS, **changed})
        with pytest.raises(EmbedderMismatchError, match="lexical"):
            verify_collection(collection, other)
    # The query weight is not the store's: another weight queries the same store.
    verify_collection(collection, KVEmbeddings(model=tiny_model_dir(), **{**OPTIONS, "lexical_weight": 0.3}))


def test_llama_index_vector_store_index_ranks_by_the_fusion(corpus, tmp_path):
    from llama_index.core import StorageContext, VectorStoreIndex, load_index_from_storage
    from llama_index.core.schema import TextNode

    from kv_embeddings_integrations import KVEmbedding
    from kv_embeddings_integrations.stores import save_identity, verify_identity

    docs, _, exact = corpus
    ids = [d["id"] for d in docs]
    embed_model = KVEmbedding(model=tiny_model_dir(), **OPTIONS)
    nodes = [TextNode(text=d["text"], id_=d["id"]) for d in docs]
    index = VectorStoreIndex(nodes, embed_model=embed_model)
    index.storage_context.persist(str(tmp_path / "index"))
    save_identity(tmp_path / "index", embed_model)
    verify_identity(tmp_path / "index", embed_model)
    storage = StorageContext.from_defaults(persist_dir=str(tmp_path / "index"))
    reloaded = load_index_from_storage(storage, embed_model=embed_model)
    for q, query in enumerate(QUERIES):
        hits = [n.node.node_id for n in reloaded.as_retriever(similarity_top_k=K).retrieve(query)]
        _check_ranking(hits, exact[q], ids, f"VectorStoreIndex, {query!r}")
    with pytest.raises(EmbedderMismatchError, match="statistics_sha256"):
        other = KVEmbedding(model=tiny_model_dir(), **{**OPTIONS, "lexical_texts": [d["text"] for d in docs[:20]]})
        verify_identity(tmp_path / "index", other)
