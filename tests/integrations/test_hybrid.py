"""Hybrid dense + sparse search in Qdrant's embedded local mode (on disk, no server), through
langchain-qdrant and LlamaIndex's Qdrant store: filled here, reloaded in a new process, and checked
against an exact in-memory computation of the same fusion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import helpers
import numpy as np
import pytest
from helpers import CORPUS, TEXTS

pytest.importorskip("qdrant_client")

from kv_embeddings_integrations import KVEmbedder  # noqa: E402
from kv_embeddings_integrations.core.outputs import fusion

DOCS = CORPUS + TEXTS
QUERIES = ["a cat on a mat", "stock markets", "the weather today", "fox"]
OPTIONS = {"method": "kv", "layers": [1], "postprocess": "none"}
K = 3


@pytest.fixture(scope="module")
def tied_model_dir():
    return helpers.tied_model_dir()


@pytest.fixture(scope="module")
def embedder(tied_model_dir):
    return KVEmbedder.from_pretrained(tied_model_dir, **OPTIONS)


def _in_new_process(code: str, args: dict) -> dict:
    script = "import json, sys\nARGS = json.loads(sys.argv[1])\n" + textwrap.dedent(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _exact_scores(embedder: KVEmbedder) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of the dense vectors, and dot product of the sparse ones with the query's weights
    times the documents' IDF (the stores are made with Qdrant's ``Modifier.IDF``), every query x
    document; a sparse search finds only documents sharing a token with the query (-inf: not found)."""
    docs = embedder.embed(DOCS, sparse=True)
    queries = embedder.embed(QUERIES, prompt_type="query", sparse=True)
    sparse = fusion.sparse_scores(queries.sparse, docs.sparse, fusion.idf(docs.sparse))
    shares = fusion.sparse_scores(queries.sparse, docs.sparse) > 0
    return fusion.dense_scores(queries.vectors, docs.vectors), np.where(shares, sparse, -np.inf)


def _check_hits(hits: list[tuple[str, float]], expected: np.ndarray) -> None:
    """The store's hits are exactly the fusion's best: each one's score as computed here, in
    order, and nothing left out scores higher (ties at the cut may go either way)."""
    scores = [score for _, score in hits]
    assert len(hits) == K and scores == sorted(scores, reverse=True)
    chosen = [int(doc) for doc, _ in hits]
    np.testing.assert_allclose(scores, expected[chosen], rtol=1e-4, atol=1e-6)
    others = np.delete(expected, chosen)
    assert others.max() <= min(scores) + 1e-6


LANGCHAIN_RELOAD = """
from langchain_qdrant import QdrantVectorStore, RetrievalMode
from qdrant_client import QdrantClient

from kv_embeddings_integrations import KVEmbeddings
from kv_embeddings_integrations.integrations.hybrid.langchain import KVSparseEmbeddings

dense = KVEmbeddings(model=ARGS["model"], **ARGS["options"])
store = QdrantVectorStore(
    client=QdrantClient(path=ARGS["path"]), collection_name="docs", embedding=dense,
    sparse_embedding=KVSparseEmbeddings(dense), retrieval_mode=RetrievalMode.HYBRID,
)
hits = [
    [(doc.metadata["row"], score) for doc, score in store.similarity_search_with_score(q, k=ARGS["k"])]
    for q in ARGS["queries"]
]
print(json.dumps({"hits": hits}))
"""


@pytest.mark.processes
def test_langchain_qdrant_hybrid_reloads_and_fuses_exactly(tied_model_dir, embedder, tmp_path):
    from langchain_qdrant import QdrantVectorStore, RetrievalMode
    from qdrant_client import models
    from qdrant_client.hybrid.fusion import DEFAULT_RANKING_CONSTANT_K

    from kv_embeddings_integrations import KVEmbeddings
    from kv_embeddings_integrations.integrations.hybrid.langchain import KVSparseEmbeddings

    dense = KVEmbeddings(model=tied_model_dir, **OPTIONS)
    sparse = KVSparseEmbeddings(dense)
    assert (
        sparse.embed_query("a cat").indices
        == embedder.encode_sparse(["a cat"], prompt_type="query").indices[0].tolist()
    )
    store = QdrantVectorStore.from_texts(
        DOCS,
        embedding=dense,
        sparse_embedding=sparse,
        retrieval_mode=RetrievalMode.HYBRID,
        path=str(tmp_path / "qdrant"),
        collection_name="docs",
        metadatas=[{"row": str(i)} for i in range(len(DOCS))],
        sparse_vector_params={"modifier": models.Modifier.IDF},
    )
    store.client.close()  # the local store is one process's at a time
    args = {"model": tied_model_dir, "options": OPTIONS, "path": str(tmp_path / "qdrant"), "queries": QUERIES, "k": K}
    reloaded = _in_new_process(LANGCHAIN_RELOAD, args)["hits"]
    dense_scores, sparse_scores = _exact_scores(embedder)
    # langchain-qdrant fetches k from each search and fuses them by Qdrant's RRF: 1 / (rank + k - 1).
    expected = fusion.reciprocal_rank_fusion(dense_scores, sparse_scores, k=DEFAULT_RANKING_CONSTANT_K - 1, depth=K)
    for row, hits in enumerate(reloaded):
        _check_hits([tuple(hit) for hit in hits], expected[row])


LLAMA_INDEX_RELOAD = """
from llama_index.core import VectorStoreIndex
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient

from kv_embeddings_integrations import KVEmbedding
from kv_embeddings_integrations.integrations.hybrid.llama_index import sparse_functions

embed_model = KVEmbedding(model=ARGS["model"], **ARGS["options"])
doc_fn, query_fn = sparse_functions(embed_model)
store = QdrantVectorStore(
    "docs", client=QdrantClient(path=ARGS["path"]), enable_hybrid=True, sparse_doc_fn=doc_fn, sparse_query_fn=query_fn
)
index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
retriever = index.as_retriever(
    vector_store_query_mode="hybrid", similarity_top_k=ARGS["k"], sparse_top_k=ARGS["k"], alpha=ARGS["alpha"]
)
hits = [[(n.node.metadata["row"], n.score) for n in retriever.retrieve(q)] for q in ARGS["queries"]]
print(json.dumps({"hits": hits}))
"""


def _relative_score_fusion(dense: np.ndarray, sparse: np.ndarray, alpha: float, depth: int) -> np.ndarray:
    """LlamaIndex's relative score fusion, by hand: each search's top ``depth`` scaled to [0, 1]
    (min to max), ``alpha`` of the dense plus the rest of the sparse, 0 where a search missed."""

    def scaled(scores: np.ndarray) -> np.ndarray:
        top = np.argsort(-scores, kind="stable")[:depth]
        top = top[np.isfinite(scores[top])]
        low, high = scores[top].min(), scores[top].max()
        out = np.zeros_like(dense[0])
        out[top] = (scores[top] - low) / (high - low) if high > low else high
        return out

    return np.stack([alpha * scaled(d) + (1 - alpha) * scaled(s) for d, s in zip(dense, sparse, strict=True)])


@pytest.mark.processes
def test_llama_index_qdrant_hybrid_reloads_and_fuses_exactly(tied_model_dir, embedder, tmp_path):
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient, models

    from kv_embeddings_integrations import KVEmbedding
    from kv_embeddings_integrations.integrations.hybrid.llama_index import sparse_functions

    embed_model = KVEmbedding(model=tied_model_dir, **OPTIONS)
    doc_fn, query_fn = sparse_functions(embed_model)
    ids, values = doc_fn(DOCS[:2])
    assert ids == [i.tolist() for i in embedder.encode_sparse(DOCS[:2]).indices] and len(values) == 2
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    store = QdrantVectorStore(
        "docs",
        client=client,
        enable_hybrid=True,
        sparse_doc_fn=doc_fn,
        sparse_query_fn=query_fn,
        sparse_config=models.SparseVectorParams(modifier=models.Modifier.IDF),
    )
    # The row number is kept out of what is embedded (LlamaIndex embeds metadata with the text).
    nodes = [
        TextNode(text=text, metadata={"row": str(i)}, excluded_embed_metadata_keys=["row"])
        for i, text in enumerate(DOCS)
    ]
    VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model)
    client.close()
    alpha = 0.6
    args = {
        "model": tied_model_dir, "options": OPTIONS, "path": str(tmp_path / "qdrant"),
        "queries": QUERIES, "k": K, "alpha": alpha,
    }  # fmt: skip
    reloaded = _in_new_process(LLAMA_INDEX_RELOAD, args)["hits"]
    dense_scores, sparse_scores = _exact_scores(embedder)
    expected = _relative_score_fusion(dense_scores, sparse_scores, alpha, K)
    for row, hits in enumerate(reloaded):
        _check_hits([tuple(hit) for hit in hits], expected[row])


def test_sparse_adapters_reject_what_they_cannot_embed(embedder):
    from kv_embeddings_integrations.integrations.hybrid.langchain import KVSparseEmbeddings
    from kv_embeddings_integrations.integrations.hybrid.llama_index import sparse_functions

    with pytest.raises(TypeError, match="KVEmbeddings or a KVEmbedder"):
        KVSparseEmbeddings("smollm2-135m")
    with pytest.raises(TypeError, match="one str"):
        KVSparseEmbeddings(embedder).embed_documents("a cat")
    with pytest.raises(TypeError, match="one str"):
        sparse_functions(embedder)[0]("a cat")


def test_the_lexical_partner_is_the_unsketched_lexical_half(embedder):
    """weights='lexical': BM25 over the model's tokens (the retrieval default's lexical channel),
    unsketched: documents unit length, queries IDF-weighted, so Qdrant's sparse search ranks by the
    exact lexical cosine, which the one vector's sketch only estimates."""
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    from kv_embeddings_integrations.core.outputs import lexical
    from kv_embeddings_integrations.integrations.hybrid.langchain import KVSparseEmbeddings
    from kv_embeddings_integrations.integrations.hybrid.llama_index import sparse_functions

    channel = embedder.lexical
    assert channel is not None and channel.kind == "bm25"  # the retrieval default's

    def ids(text: str) -> list[int]:
        return embedder.tokenizer(text.lower(), add_special_tokens=False)["input_ids"]

    doc_rows = [lexical.bm25_document(ids(t), channel.statistics) for t in DOCS]
    query_rows = [lexical.bm25_query(ids(q), channel.statistics.idf) for q in QUERIES]
    sparse = KVSparseEmbeddings(embedder, weights="lexical")
    for got, (ids, values) in zip(sparse.embed_documents(DOCS), doc_rows, strict=True):
        assert got.indices == ids.tolist()
        np.testing.assert_allclose(got.values, values / np.linalg.norm(values), rtol=1e-5)
    got = sparse.embed_query(QUERIES[0])
    assert got.indices == query_rows[0][0].tolist()
    np.testing.assert_allclose(got.values, query_rows[0][1], rtol=1e-5)
    doc_fn, query_fn = sparse_functions(embedder, weights="lexical")
    assert doc_fn(DOCS[:2])[0] == [s.indices for s in sparse.embed_documents(DOCS[:2])]
    assert query_fn(QUERIES[:1])[1][0] == pytest.approx(got.values)

    # In Qdrant (in memory, no IDF modifier: the query carries it), sparse search alone ranks by the
    # exact lexical cosine computed here.
    store = QdrantVectorStore.from_texts(
        DOCS, embedding=None, sparse_embedding=sparse, retrieval_mode=RetrievalMode.SPARSE,
        location=":memory:", collection_name="lexical",
    )  # fmt: skip
    exact = fusion.sparse_scores(embedder.encode_lexical(QUERIES, prompt_type="query"), embedder.encode_lexical(DOCS))
    for q, query in enumerate(QUERIES):
        hits = store.similarity_search_with_score(query, k=K)
        expected = [s for s in np.sort(exact[q])[::-1] if s > 0][:K]
        np.testing.assert_allclose([score for _, score in hits], expected, rtol=1e-4)
        assert [DOCS.index(doc.page_content) for doc, _ in hits] == list(fusion.top_k(exact[q : q + 1], len(hits))[0])

    with pytest.raises(ValueError, match="weights must be"):
        KVSparseEmbeddings(embedder, weights="bm25s")
    dense_only = KVEmbedder(embedder.model, embedder.tokenizer, **OPTIONS, lexical="none")
    with pytest.raises(ValueError, match="lexical channel"):
        KVSparseEmbeddings(dense_only, weights="lexical")
    with pytest.raises(ValueError, match="lexical channel"):
        sparse_functions(dense_only, weights="lexical")
