"""What the examples print while the model loads, so a first run never looks stuck."""

from __future__ import annotations

import logging
import sys


def show_loading_steps() -> None:
    """Print the package's steps as they happen: converting a bundled model once, reading (or
    computing, then caching) the layer choice and the centering."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    package = logging.getLogger("kv_embeddings_integrations")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
