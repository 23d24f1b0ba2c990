"""The ``kv-embed`` program: the top-level parser, built from the registry of command modules, and
the dispatch to the chosen command's handler.

Each command is one module of this package exposing
[`Command`][kv_embeddings_integrations.cli.app.Command]: its ``NAME`` and ``HELP``, ``configure``
(its options) and ``run`` (its handler). Adding a command is adding its module to
[`COMMANDS`][kv_embeddings_integrations.cli.app.COMMANDS]; the handler a parse chose travels in the
namespace (``args.handler``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Protocol

from . import embed, embed_dataset, evaluate, select_layers, serve, similarity
from .errors import CLIError


class Command(Protocol):
    """What a command module provides (a module satisfies this protocol)."""

    NAME: str
    HELP: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's options and arguments to its subparser."""

    def run(self, args: argparse.Namespace) -> None:
        """Do the command; raise [`CLIError`][kv_embeddings_integrations.cli.errors.CLIError] for a user's mistake."""


# The commands, in the order ``kv-embed --help`` lists them.
COMMANDS: tuple[Command, ...] = (embed, embed_dataset, select_layers, evaluate, serve, similarity)


def add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], command: Command
) -> argparse.ArgumentParser:
    """The subparser of ``command``, its options added and its handler set as the default."""
    parser = subparsers.add_parser(command.NAME, help=command.HELP)
    command.configure(parser)
    parser.set_defaults(handler=command.run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``kv-embed`` parser: one subcommand per module of
    [`COMMANDS`][kv_embeddings_integrations.cli.app.COMMANDS]."""
    parser = argparse.ArgumentParser(prog="kv-embed", description="Text embeddings from a frozen LLM by KV re-routing.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        add_command(subparsers, command)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen command; 0 when it ends."""
    args = build_parser().parse_args(argv)
    args.handler(args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kv-embed`` entry point: [`run`][kv_embeddings_integrations.cli.app.run], with a user
    error printed as one line and status 2."""
    try:
        return run(argv)
    except CLIError as e:
        print(f"kv-embed: error: {e}", file=sys.stderr)
        return 2
