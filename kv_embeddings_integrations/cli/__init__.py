"""The ``kv-embed`` command line: one module per command (its options beside its handler),
the shared options in [`options`][kv_embeddings_integrations.cli.options], the program in
[`app`][kv_embeddings_integrations.cli.app]."""

from __future__ import annotations

from .app import build_parser, main, run
from .errors import CLIError

__all__ = ["CLIError", "build_parser", "main", "run"]
