"""The one error a command raises for a user's mistake: ``kv-embed`` prints it and exits with 2."""

from __future__ import annotations


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""
