"""Reloading a persisted vector store in a new process vs embedding the corpus again.

Fills each store once (from one embedding pass, with the embedder's identity recorded), then, in
a fresh Python process per store, times what a RAG service does at start-up: load the model,
open the store and check its identity, answer 5 queries. The last row does the same with the
corpus embedded again instead of reloaded. Needs the ``stores`` extra.

    python benchmarks/bench_stores.py [--model smollm2-135m] [--docs 500] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_SCIFACT, machine, markdown_table, scifact_documents

QUERIES = [
    "Vitamin D deficiency and bone fractures",
    "Which genes are linked to breast cancer risk?",
    "Antibiotic resistance in hospital infections",
    "Effect of exercise on blood pressure",
    "How do T cells recognise antigens?",
]
STORES = ["langchain-chroma", "langchain-faiss", "llamaindex-chroma", "llamaindex-lancedb", "lancedb", "duckdb"]


def _langchain(args):
    from kv_embeddings_integrations import KVEmbeddings

    return KVEmbeddings(model=args.model, model_kwargs={"dtype": args.dtype}, max_length=args.max_length)


def _llama_index(args):
    from kv_embeddings_integrations import KVEmbedding

    return KVEmbedding(model=args.model, model_kwargs={"dtype": args.dtype}, max_length=args.max_length)


def fill(args, folder: Path, docs: list[str]) -> float:
    """Embed ``docs`` once and write every store from those vectors; return the embedding seconds."""
    import chromadb
    import lancedb
    import pyarrow as pa
    import pyarrow.parquet as pq
    from langchain_community.vectorstores import FAISS
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.chroma import ChromaVectorStore
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    from kv_embeddings_integrations.stores import arrow_field_metadata, collection_metadata, save_identity

    lc, li = _langchain(args), _llama_index(args)
    start = time.perf_counter()
    vectors = np.asarray(lc.embed_documents(docs), dtype=np.float32)
    seconds = time.perf_counter() - start
    ids = [f"doc-{i:05d}" for i in range(len(docs))]

    client = chromadb.PersistentClient(path=str(folder / "langchain-chroma"))
    # LangChain's Chroma reads plain Chroma records: ids, documents, embeddings.
    client.create_collection("docs", metadata=collection_metadata(lc, {"hnsw:space": "cosine"})).add(
        ids=ids, documents=docs, embeddings=vectors
    )
    FAISS.from_embeddings(list(zip(docs, vectors.tolist(), strict=True)), lc, ids=ids).save_local(
        str(folder / "langchain-faiss")
    )
    save_identity(folder / "langchain-faiss", lc)

    nodes = [TextNode(text=t, id_=i, embedding=v) for t, i, v in zip(docs, ids, vectors.tolist(), strict=True)]
    collection = chromadb.PersistentClient(path=str(folder / "llamaindex-chroma")).create_collection(
        "docs", metadata=collection_metadata(li, {"hnsw:space": "cosine"})
    )
    for store in (
        ChromaVectorStore(chroma_collection=collection),
        LanceDBVectorStore(uri=str(folder / "llamaindex-lancedb"), table_name="docs"),
    ):
        VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=li)
    save_identity(folder / "llamaindex-lancedb", li)

    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    table = pa.table({"id": ids, "text": docs}).append_column(
        pa.field("embedding", column.type, metadata=arrow_field_metadata(lc)), column
    )
    (folder / "parquet").mkdir()
    pq.write_table(table, folder / "parquet" / "part-0.parquet")
    lancedb.connect(str(folder / "lancedb")).create_table("docs", data=table)
    return seconds


def reload(args, store: str, folder: Path) -> dict[str, float]:
    """In this (fresh) process: load the model, open ``store`` and check it, answer the queries."""
    start = time.perf_counter()
    embeddings = _llama_index(args) if store.startswith("llamaindex") else _langchain(args)
    loaded = time.perf_counter()
    from kv_embeddings_integrations import stores

    path = folder / store
    if store == "langchain-chroma":
        from langchain_chroma import Chroma

        db = Chroma(collection_name="docs", embedding_function=embeddings, persist_directory=str(path))
        stores.verify_collection(db, embeddings)
        search = lambda q: db.similarity_search_with_score(q, k=10)  # noqa: E731
    elif store == "langchain-faiss":
        from langchain_community.vectorstores import FAISS

        stores.verify_identity(path, embeddings)
        db = FAISS.load_local(str(path), embeddings, allow_dangerous_deserialization=True)
        search = lambda q: db.similarity_search_with_score(q, k=10)  # noqa: E731
    elif store.startswith("llamaindex"):
        from llama_index.core import VectorStoreIndex

        if store == "llamaindex-chroma":
            import chromadb
            from llama_index.vector_stores.chroma import ChromaVectorStore

            collection = chromadb.PersistentClient(path=str(path)).get_collection("docs")
            stores.verify_collection(collection, embeddings)
            vector_store = ChromaVectorStore(chroma_collection=collection)
        else:
            from llama_index.vector_stores.lancedb import LanceDBVectorStore

            stores.verify_identity(path, embeddings)
            vector_store = LanceDBVectorStore(uri=str(path), table_name="docs")
        retriever = VectorStoreIndex.from_vector_store(vector_store, embed_model=embeddings).as_retriever(
            similarity_top_k=10
        )
        search = retriever.retrieve
    elif store == "lancedb":
        import lancedb

        table = lancedb.connect(str(path)).open_table("docs")
        stores.verify_arrow_schema(table.schema, embeddings)
        search = lambda q: table.search(embeddings.embed_query(q)).distance_type("cosine").limit(10).to_list()  # noqa: E731
    elif store == "duckdb":
        import duckdb
        import pyarrow.parquet as pq

        files = sorted(str(p) for p in (folder / "parquet").glob("*.parquet"))
        dim = stores.verify_arrow_schema(pq.read_schema(files[0]), embeddings)["dimension"]
        sql = (
            f"SELECT id, array_cosine_similarity(embedding::FLOAT[{dim}], $q::FLOAT[{dim}]) AS score "
            f"FROM read_parquet('{folder / 'parquet'}/*.parquet') ORDER BY score DESC LIMIT 10"
        )
        search = lambda q: duckdb.sql(sql, params={"q": embeddings.embed_query(q)}).fetchall()  # noqa: E731
    else:
        raise SystemExit(f"unknown store {store!r}")
    opened = time.perf_counter()
    for query in QUERIES:
        assert len(search(query)) == 10
    done = time.perf_counter()
    return {"load": loaded - start, "open": opened - loaded, "queries": done - opened, "total": done - start}


def reembed(args, docs: list[str]) -> dict[str, float]:
    """In this (fresh) process: load the model, embed the corpus again, answer the queries exactly."""
    start = time.perf_counter()
    embeddings = _langchain(args)
    loaded = time.perf_counter()
    vectors = np.asarray(embeddings.embed_documents(docs))
    embedded = time.perf_counter()
    for query in QUERIES:
        np.argsort(-(vectors @ np.asarray(embeddings.embed_query(query))))[:10]
    done = time.perf_counter()
    return {"load": loaded - start, "open": embedded - loaded, "queries": done - embedded, "total": done - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--docs", type=int, default=500, help="SciFact documents in the corpus")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--data", default=str(DEFAULT_SCIFACT))
    parser.add_argument("--child", nargs=2, metavar=("STORE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    docs = scifact_documents(args.data, limit=args.docs)
    if args.child:
        store, folder = args.child
        result = reembed(args, docs) if store == "re-embed" else reload(args, store, Path(folder))
        print(json.dumps(result))
        return

    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-stores-") as tmp:
        folder = Path(tmp)
        seconds = fill(args, folder, docs)  # also warms the layer and post-processing caches
        print(f"{args.model} ({args.dtype}): {len(docs)} SciFact documents embedded in {seconds:.1f} s\n")
        rows = []
        for store in [*STORES, "re-embed"]:
            command = [sys.executable, __file__, *sys.argv[1:], "--child", store, str(folder)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{store} failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append([store, f"{r['load']:.1f}", f"{r['open']:.2f}", f"{r['queries']:.2f}", f"{r['total']:.1f}"])
        header = ["new process", "load model (s)", "import, open, check store / re-embed (s)", "5 queries (s)"]
        header.append("total (s)")
        print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
