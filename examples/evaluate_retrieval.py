"""Retrieval quality through an adapter's own vector store and retriever, on a BEIR folder.

Reads ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv``; embeds the corpus (title + text) through the adapter, retrieves the top 10
for every query with qrels, and prints nDCG@10 (graded gains, log2 discount, as pytrec_eval/MTEB).

    python examples/evaluate_retrieval.py ../shared/evaldata/scifact-train --split train \
        --adapter langchain --max-length 512     # or --adapter llamaindex
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from pathlib import Path

import torch

from kv_embeddings_integrations import DEFAULT_MODEL

K = 10


def read_beir(folder: Path, split: str):
    corpus = {}
    with (folder / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            corpus[doc["_id"]] = f"{doc.get('title', '')} {doc['text']}".strip()
    queries = {}
    with (folder / "queries.jsonl").open(encoding="utf-8") as f:
        for line in f:
            query = json.loads(line)
            queries[query["_id"]] = query["text"]
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / f"{split}.tsv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return corpus, {q: queries[q] for q in qrels}, qrels


def ndcg_at_k(ranking: list[str], relevant: dict[str, int], k: int = K) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]))
    ideal = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(sorted(relevant.values(), reverse=True)[:k]))
    return dcg / ideal if ideal else 0.0


def langchain_rankings(corpus, queries, model: str, options: dict) -> dict[str, list[str]]:
    from langchain_core.vectorstores import InMemoryVectorStore

    from kv_embeddings_integrations import KVEmbeddings

    store = InMemoryVectorStore.from_texts(
        list(corpus.values()), KVEmbeddings(model=model, show_progress=True, **options), ids=list(corpus)
    )
    return {qid: [doc.id for doc in store.similarity_search(text, k=K)] for qid, text in queries.items()}


def llamaindex_rankings(corpus, queries, model: str, options: dict, embed_batch_size: int) -> dict[str, list[str]]:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from kv_embeddings_integrations import KVEmbedding

    nodes = [TextNode(text=text, id_=doc_id) for doc_id, text in corpus.items()]
    index = VectorStoreIndex(
        nodes, embed_model=KVEmbedding(model=model, embed_batch_size=embed_batch_size, **options), show_progress=True
    )
    retriever = index.as_retriever(similarity_top_k=K)
    return {qid: [hit.node.node_id for hit in retriever.retrieve(text)] for qid, text in queries.items()}


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

    corpus, queries, qrels = read_beir(args.folder, args.split)
    print(
        f"{args.folder} ({args.split}): {len(corpus)} documents, {len(queries)} queries; adapter {args.adapter}; "
        f"model {args.model}, method {args.method}, max_length {args.max_length}; "
        f"{platform.machine()}, {torch.get_num_threads()} threads"
    )
    start = time.perf_counter()
    options = {"method": args.method, "max_length": args.max_length}
    if args.adapter == "langchain":
        rankings = langchain_rankings(corpus, queries, args.model, options)
    else:
        rankings = llamaindex_rankings(corpus, queries, args.model, options, args.embed_batch_size)
    seconds = time.perf_counter() - start
    score = sum(ndcg_at_k(rankings[q], qrels[q]) for q in queries) / len(queries)
    print(f"nDCG@10 = {100 * score:.2f}  ({seconds:.0f} s for indexing and all queries)")


if __name__ == "__main__":
    main()
