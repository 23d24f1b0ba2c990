"""``python -m kv_embeddings_integrations.cli``: the same as ``kv-embed``."""

from __future__ import annotations

import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())
