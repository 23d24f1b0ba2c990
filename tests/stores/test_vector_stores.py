"""Real vector stores, running embedded: fill one, reload it in a new Python process, query.

LangChain (Chroma with a persistent client, FAISS ``save_local`` / ``load_local``) and LlamaIndex
(Chroma, LanceDB) must return what an exact in-memory search over the same embedder's vectors
returns, with each store's score a known function of the cosine, and metadata filters must work
on the stored vectors. The embedder's identity is recorded with each store, and reloading with
changed options is refused with an error naming the change (what the identity compares:
core/test_identity.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pydoc_data.topics import topics

import numpy as np
import pytest
from helpers import REPO_ROOT

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.identity import EmbedderMismatchError
from kv_embeddings_integrations.stores import (
    IDENTITY_FILE,
    MissingIdentityError,
    read_identity,
    save_identity,
    verify_identity,
)

K = 5
QUERIES = [
    "How does the with statement call __enter__ and __exit__?",
    "What does a lambda expression create?",
    "Which exceptions can a try statement handle?",
    "How are import statements resolved?",
]
# A tiny random model: explicit layers keep the test independent of layer selection's choice.
OPTIONS = {"layers": [1, 2]}


def _documents(count: int = 120) -> list[dict]:
    """Paragraphs of the Python Language Reference (shipped with CPython), ids and a topic each."""
    paragraphs = [p.strip()[:600] for text in topics.values() for p in text.split("\n\n") if len(p.strip()) > 40]
    paragraphs = list(dict.fromkeys(paragraphs))  # no duplicate texts: their tied scores have no order
    return [
        {"id": f"doc-{i:04d}", "text": p, "topic": "even" if i % 2 == 0 else "odd"}
        for i, p in enumerate(paragraphs[:count])
    ]


def _exact(doc_vectors: np.ndarray, query_vector: np.ndarray, ids: list[str], k: int = K) -> list[tuple[str, float]]:
    """Exact cosine search (the vectors are L2-normalised): the reference every store must match."""
    cosines = doc_vectors @ query_vector
    order = np.argsort(-cosines, kind="stable")[:k]
    return [(ids[i], float(cosines[i])) for i in order]


# What every reload script starts with: its arguments, and the message of a refused check.
PRELUDE = """import json, sys
from kv_embeddings_integrations.stores import EmbedderMismatchError
ARGS = json.loads(sys.argv[1])

def mismatch(check):
    try:
        check()
    except EmbedderMismatchError as e:
        return str(e)
    return None
"""


def _in_new_process(code: str, args: dict) -> dict:
    """Run ``code`` in a fresh interpreter with ``ARGS`` bound; it prints one JSON object last."""
    script = PRELUDE + textwrap.dedent(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _same_hits(got: list, expected: list[tuple[str, float]], score_of_cosine, atol: float = 2e-4) -> None:
    assert [hit[0] for hit in got] == [hit[0] for hit in expected], (got, expected)
    np.testing.assert_allclose([hit[1] for hit in got], [score_of_cosine(c) for _, c in expected], atol=atol)


# --- LangChain ---------------------------------------------------------------------------------

LANGCHAIN_RELOAD = """
from langchain_chroma import Chroma
from langchain_community.vectorstores import FAISS

from kv_embeddings_integrations import KVEmbeddings
from kv_embeddings_integrations.stores import collection_metadata, verify_collection, verify_identity

embeddings = KVEmbeddings(model=ARGS["model"], **ARGS["options"])
chroma = Chroma(collection_name="docs", embedding_function=embeddings, persist_directory=ARGS["chroma"])
verify_collection(chroma, embeddings)
verify_identity(ARGS["faiss"], embeddings)
faiss = FAISS.load_local(ARGS["faiss"], embeddings, allow_dangerous_deserialization=True)
out = {"chroma": {}, "faiss": {}, "chroma_odd": {}, "count": chroma._collection.count()}
for q in ARGS["queries"]:
    out["chroma"][q] = [(d.id, s) for d, s in chroma.similarity_search_with_score(q, k=ARGS["k"])]
    out["faiss"][q] = [(d.id, float(s)) for d, s in faiss.similarity_search_with_score(q, k=ARGS["k"])]
    hits = chroma.similarity_search_with_score(q, k=ARGS["k"], filter={"topic": "odd"})
    out["chroma_odd"][q] = [(d.id, s) for d, s in hits]
changed = KVEmbeddings(model=ARGS["model"], **{**ARGS["options"], **ARGS["changed"]})
# Reopened the way a fill path opens it: an existing collection keeps its own record.
reopened = Chroma(collection_name="docs", embedding_function=changed, persist_directory=ARGS["chroma"],
                  collection_metadata=collection_metadata(changed, {"hnsw:space": "cosine"}))
out["mismatch_chroma"] = mismatch(lambda: verify_collection(chroma, changed))
out["mismatch_reopened"] = mismatch(lambda: verify_collection(reopened, changed))
out["mismatch_faiss"] = mismatch(lambda: verify_identity(ARGS["faiss"], changed))
print(json.dumps(out))
"""


@pytest.mark.processes
def test_langchain_chroma_and_faiss_reload_in_a_new_process(model_dir, tmp_path):
    from langchain_chroma import Chroma
    from langchain_community.vectorstores import FAISS
    from langchain_core.documents import Document

    from kv_embeddings_integrations import KVEmbeddings
    from kv_embeddings_integrations.stores import collection_metadata

    embeddings = KVEmbeddings(model=str(model_dir), **OPTIONS)
    docs = _documents()
    documents = [Document(page_content=d["text"], metadata={"topic": d["topic"]}, id=d["id"]) for d in docs]
    ids = [d["id"] for d in docs]
    chroma_dir, faiss_dir = tmp_path / "chroma", tmp_path / "faiss"
    Chroma.from_documents(
        documents,
        embeddings,
        ids=ids,
        collection_name="docs",
        persist_directory=str(chroma_dir),
        collection_metadata=collection_metadata(embeddings, {"hnsw:space": "cosine"}),
    )
    FAISS.from_documents(documents, embeddings, ids=ids).save_local(str(faiss_dir))
    save_identity(faiss_dir, embeddings)

    got = _in_new_process(
        LANGCHAIN_RELOAD,
        {
            "model": str(model_dir),
            "options": OPTIONS,
            "changed": {"layers": [0, 1]},
            "chroma": str(chroma_dir),
            "faiss": str(faiss_dir),
            "queries": QUERIES,
            "k": K,
        },
    )

    doc_vectors = np.asarray(embeddings.embed_documents([d["text"] for d in docs]))
    odd = [i for i, d in enumerate(docs) if d["topic"] == "odd"]
    assert got["count"] == len(docs)
    for query in QUERIES:
        query_vector = np.asarray(embeddings.embed_query(query))
        expected = _exact(doc_vectors, query_vector, ids)
        _same_hits(got["chroma"][query], expected, lambda c: 1 - c)  # Chroma, cosine space: the distance
        _same_hits(got["faiss"][query], expected, lambda c: 2 - 2 * c)  # FAISS, L2: squared distance
        expected_odd = _exact(doc_vectors[odd], query_vector, [ids[i] for i in odd])
        _same_hits(got["chroma_odd"][query], expected_odd, lambda c: 1 - c)
    for name in ("chroma", "reopened", "faiss"):
        message = got["mismatch_" + name]
        assert message is not None and "layers: stored [1, 2], now [0, 1]" in message, message


# --- LlamaIndex --------------------------------------------------------------------------------

LLAMA_INDEX_RELOAD = """
import chromadb
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters
from llama_index.vector_stores.chroma import ChromaVectorStore
from llama_index.vector_stores.lancedb import LanceDBVectorStore

from kv_embeddings_integrations import KVEmbedding
from kv_embeddings_integrations.stores import verify_collection, verify_identity

Settings.embed_model = KVEmbedding(model=ARGS["model"], **ARGS["options"])
collection = chromadb.PersistentClient(path=ARGS["chroma"]).get_collection("docs")
verify_collection(collection, Settings.embed_model)
verify_identity(ARGS["lancedb"], Settings.embed_model)
indexes = {
    "chroma": VectorStoreIndex.from_vector_store(ChromaVectorStore(chroma_collection=collection)),
    "lancedb": VectorStoreIndex.from_vector_store(LanceDBVectorStore(uri=ARGS["lancedb"], table_name="docs")),
}
odd = MetadataFilters(filters=[ExactMatchFilter(key="topic", value="odd")])
out = {}
for name, index in indexes.items():
    for label, filters in (("", None), ("_odd", odd)):
        retriever = index.as_retriever(similarity_top_k=ARGS["k"], filters=filters)
        out[name + label] = {
            q: [(n.node.ref_doc_id, n.score) for n in retriever.retrieve(q)] for q in ARGS["queries"]
        }
changed = KVEmbedding(model=ARGS["model"], **{**ARGS["options"], **ARGS["changed"]})
out["mismatch_chroma"] = mismatch(lambda: verify_collection(collection, changed))
out["mismatch_lancedb"] = mismatch(lambda: verify_identity(ARGS["lancedb"], changed))
print(json.dumps(out))
"""


@pytest.mark.processes
def test_llama_index_chroma_and_lancedb_reload_in_a_new_process(model_dir, tmp_path):
    import chromadb
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters
    from llama_index.vector_stores.chroma import ChromaVectorStore
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    from kv_embeddings_integrations import KVEmbedding
    from kv_embeddings_integrations.stores import collection_metadata

    embed_model = KVEmbedding(model=str(model_dir), **OPTIONS)
    docs = _documents()
    documents = [Document(text=d["text"], metadata={"topic": d["topic"]}, id_=d["id"]) for d in docs]
    chroma_dir, lance_dir = tmp_path / "chroma", tmp_path / "lancedb"
    collection = chromadb.PersistentClient(path=str(chroma_dir)).create_collection(
        "docs", metadata=collection_metadata(embed_model, {"hnsw:space": "cosine"})
    )
    lance = LanceDBVectorStore(uri=str(lance_dir), table_name="docs")
    stores = [ChromaVectorStore(chroma_collection=collection), lance]
    for store in stores:
        context = StorageContext.from_defaults(vector_store=store)
        VectorStoreIndex.from_documents(documents, storage_context=context, embed_model=embed_model)
    save_identity(lance_dir, embed_model)
    # The reference: LlamaIndex's own in-memory index (exact cosine) over the same nodes.
    memory = VectorStoreIndex.from_documents(documents, embed_model=embed_model)

    got = _in_new_process(
        LLAMA_INDEX_RELOAD,
        {
            "model": str(model_dir),
            "options": OPTIONS,
            "changed": {"method": "kv_pcot"},
            "chroma": str(chroma_dir),
            "lancedb": str(lance_dir),
            "queries": QUERIES,
            "k": K,
        },
    )

    odd = MetadataFilters(filters=[ExactMatchFilter(key="topic", value="odd")])
    for label, filters in (("", None), ("_odd", odd)):
        retriever = memory.as_retriever(similarity_top_k=K, filters=filters)
        for query in QUERIES:
            expected = [(n.node.ref_doc_id, n.score) for n in retriever.retrieve(query)]
            assert len(expected) == K
            if filters is not None:
                assert all(docs[int(i.split("-")[1])]["topic"] == "odd" for i, _ in expected)
            # Both stores report exp(-distance): cosine distance (Chroma), squared L2 (LanceDB).
            _same_hits(got["chroma" + label][query], expected, lambda c: np.exp(-(1 - c)))
            _same_hits(got["lancedb" + label][query], expected, lambda c: np.exp(-(2 - 2 * c)))
    for name in ("chroma", "lancedb"):
        message = got["mismatch_" + name]
        # kv -> kv_pcot: another prompt and pooling (the preset's name itself is not compared).
        assert message is not None and "templates['document']: stored" in message and "pooling: stored" in message


# --- the identity record beside a store (a sidecar file) --------------------------------------


def test_binary_vectors_in_a_faiss_binary_index_refuse_float_queries(model_dir, tmp_path):
    # Packed sign bits in FAISS's own binary index (Hamming distance), saved, read back, queried.
    import faiss

    from kv_embeddings_integrations.core.outputs.quantization import hamming_scores

    embedder = KVEmbedder.from_pretrained(str(model_dir), **OPTIONS)
    texts = [d["text"] for d in _documents(60)]
    index = faiss.IndexBinaryFlat(embedder.dimension)
    index.add(embedder.encode(texts, precision="ubinary"))
    faiss.write_index_binary(index, str(tmp_path / "docs.faissbin"))
    save_identity(tmp_path, embedder.identity(precision="ubinary"))

    verify_identity(tmp_path, embedder.identity(precision="ubinary"))
    with pytest.raises(EmbedderMismatchError, match=r"quantization: stored \{.*ubinary.*\}, now null"):
        verify_identity(tmp_path, embedder)  # float32 queries against packed bits: refused
    reloaded = faiss.read_index_binary(str(tmp_path / "docs.faissbin"))
    queries = embedder.encode(QUERIES, prompt_type="query", precision="ubinary")
    distances, ids = reloaded.search(queries, K)
    expected = -hamming_scores(queries, embedder.encode(texts, precision="ubinary"))
    np.testing.assert_array_equal(distances, np.sort(expected, axis=1)[:, :K])
    np.testing.assert_array_equal(np.take_along_axis(expected, ids, axis=1), distances)


def test_sidecar_record_errors(model_dir, tmp_path):
    embedder = KVEmbedder.from_pretrained(str(model_dir), **OPTIONS)
    with pytest.raises(MissingIdentityError, match="no embedder record"):
        verify_identity(tmp_path, embedder)
    path = save_identity(tmp_path, embedder)
    assert path.name == IDENTITY_FILE and read_identity(tmp_path) == embedder.identity()
    assert verify_identity(tmp_path, embedder)["layers"] == [1, 2]
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(EmbedderMismatchError, match="unreadable embedder record"):
        verify_identity(tmp_path, embedder)
    path.write_text(json.dumps({**embedder.identity(), "format": 99}), encoding="utf-8")
    with pytest.raises(EmbedderMismatchError, match="format 99"):
        verify_identity(tmp_path, embedder)
    # Adding vectors of another configuration must not relabel the store.
    path.write_text(json.dumps(embedder.identity()), encoding="utf-8")
    other = KVEmbedder.from_pretrained(str(model_dir), layers=[0, 1])
    with pytest.raises(EmbedderMismatchError, match="layers: stored"):
        save_identity(tmp_path, other)
    assert save_identity(tmp_path, other, overwrite=True) == path and read_identity(tmp_path)["layers"] == [0, 1]
    with pytest.raises(TypeError, match="KVEmbedder, KVEmbeddings or KVEmbedding"):
        save_identity(tmp_path, object())


# --- the examples' --persist mode, on the bundled model -------------------------------------------

EXAMPLES = str(REPO_ROOT / "examples")


def _example(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# The LangChain example on the bundled model, as `make demo` runs it; the LlamaIndex one, whose
# persistence differs only in the framework's glue, on the tiny model (no second real-model run).
@pytest.mark.slow
@pytest.mark.parametrize("example,bundled", [("langchain_rag.py", True), ("llamaindex_rag.py", False)])
def test_example_persists_then_reloads_instead_of_embedding(example, bundled, model_dir, tmp_path):
    model = [] if bundled else ["--model", str(model_dir)]
    env = None if bundled else {"KV_EMBED_CACHE": str(tmp_path / "cache")}
    first = _example(example, *model, "--persist", str(tmp_path / "store"), env=env)
    second = _example(example, *model, "--persist", str(tmp_path / "store"), env=env)
    assert "saved to" in first and "reloaded" not in first
    assert "reloaded" in second and "no embedding" in second and "indexed" not in second
    # The same answers, from the same vectors.
    ranked = [line for line in first.splitlines() if line.startswith(("Q:", "  ["))]
    assert ranked and ranked == [line for line in second.splitlines() if line.startswith(("Q:", "  ["))]
