"""``kv-embed similarity``: the cosine similarity of two texts, printed to four places."""

from __future__ import annotations

import argparse

from .options import add_model_options, load_embedder

NAME = "similarity"
HELP = "cosine similarity of two texts"


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``kv-embed similarity``: the model's, then the two texts."""
    add_model_options(parser)
    parser.add_argument("text_a")
    parser.add_argument("text_b")


def run(args: argparse.Namespace) -> None:
    """Print the cosine similarity of ``text_a`` and ``text_b``."""
    embedder = load_embedder(args)
    a, b = embedder.encode([args.text_a, args.text_b])
    print(f"{float(a @ b):.4f}")
