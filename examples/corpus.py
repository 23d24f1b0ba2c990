"""A small real corpus for the RAG examples: sections of the Python Language Reference.

The text ships with every CPython (``pydoc_data.topics``) under the Python Software Foundation
License, so it can be used here offline.
"""

from __future__ import annotations

import argparse
from pydoc_data.topics import topics

from kv_embeddings_integrations import DEFAULT_MODEL, EmbedderConfig

SECTIONS = ["if", "while", "for", "try", "with", "function", "class", "import", "lambda", "assert", "return", "global"]

# Each query with the section that answers it.
QUERIES = [
    "How do I handle an exception that was raised?",
    "Run a block of code repeatedly while a condition is true",
    "How does Python find and load a module?",
    "What does the with statement do with a context manager?",
    "How do I write a small anonymous function?",
]
ANSWERS = dict(zip(QUERIES, ["try", "while", "import", "with", "lambda"], strict=True))


def load_sections() -> dict[str, str]:
    """Section name -> its text (a few hundred to a few thousand characters each)."""
    return {name: topics[name] for name in SECTIONS}


def parse_args(description: str) -> argparse.Namespace:
    """The RAG examples' shared options: ``--model``, ``--method``, ``--k``, ``--persist``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--method", default=None, help=f"(default: the retrieval task's, {EmbedderConfig().resolved_method})"
    )
    parser.add_argument("--k", type=int, default=2, help="hits per query")
    parser.add_argument(
        "--persist",
        metavar="DIR",
        default=None,
        help="keep the index in a Chroma store in DIR: the first run embeds and saves, later runs reload it "
        "(after checking it was made by the same embedder configuration) instead of embedding again",
    )
    return parser.parse_args()
