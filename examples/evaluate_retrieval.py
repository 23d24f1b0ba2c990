"""Retrieval quality through an adapter's own vector store and retriever, on a BEIR folder.

Reads ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv``; embeds the corpus (title + text) through the adapter, retrieves the top 10
for every query with qrels, and prints nDCG@10 and MRR@10 (MTEB's metrics, from
``kv_embeddings_integrations.evaluation``; needs the ``eval`` extra).

    python examples/evaluate_retrieval.py ../shared/evaldata/scifact-train --split train \
        --adapter langchain --max-length 512     # or --adapter llamaindex
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from kv_embeddings_integrations import DEFAULT_MODEL
from kv_embeddings_integrations.evaluation import load_retrieval, retrieval_scores

K = 10
Run = dict[str, dict[str, float]]  # query id -> {document id: score}


def langchain_rankings(corpus, queries, model: str, options: dict) -> Run:
    from langchain_core.vectorstores import InMemoryVectorStore

    from kv_embeddings_integrations import KVEmbeddings

    store = InMemoryVectorStore.from_texts(
        list(corpus.values()), KVEmbeddings(model=model, show_progress=True, **options), ids=list(corpus)
    )
    hits = {qid: store.similarity_search_with_score(text, k=K) for qid, text in queries.items()}
    return {qid: {doc.id: score for doc, score in found} for qid, found in hits.items()}


def llamaindex_rankings(corpus, queries, model: str, options: dict, embed_batch_size: int) -> Run:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from kv_embeddings_integrations import KVEmbedding

    nodes = [TextNode(text=text, id_=doc_id) for doc_id, text in corpus.items()]
    index = VectorStoreIndex(
        nodes, embed_model=KVEmbedding(model=model, embed_batch_size=embed_batch_size, **options), show_progress=True
    )
    retriever = index.as_retriever(similarity_top_k=K)
    return {qid: {hit.node.node_id: hit.score for hit in retriever.retrieve(text)} for qid, text in queries.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--adapter", choices=["langchain", "llamaindex"], required=True)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--method", default="kv")
    parser.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    parser.add_argument(
        "--embed-batch-size",
        type=int,
        default=1024,
        help="llamaindex: texts per call into the core; large, so the core's length sorting sees many texts",
    )
    args = parser.parse_args()

    task = load_retrieval(args.folder, split=args.split)
    corpus, queries = task.corpus, task.queries
    print(
        f"{args.folder} ({args.split}): {len(corpus)} documents, {len(queries)} queries; adapter {args.adapter}; "
        f"model {args.model}, method {args.method}, max_length {args.max_length}; "
        f"{platform.machine()}, {torch.get_num_threads()} threads"
    )
    start = time.perf_counter()
    options = {"method": args.method, "max_length": args.max_length}
    if args.adapter == "langchain":
        run = langchain_rankings(corpus, queries, args.model, options)
    else:
        run = llamaindex_rankings(corpus, queries, args.model, options, args.embed_batch_size)
    seconds = time.perf_counter() - start
    scores = retrieval_scores(task.qrels, run)  # the top 10 only: recall@100 does not apply here
    print(
        f"nDCG@10 = {scores['ndcg_at_10']:.2f}, MRR@10 = {scores['mrr_at_10']:.2f}  "
        f"({seconds:.0f} s for indexing and all queries)"
    )


if __name__ == "__main__":
    main()
