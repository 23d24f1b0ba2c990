"""``kv-embed serve`` with every coalesced forward pass held until the test lets it run.

A test that starts the server through this script (``python tests/gated_serve.py serve ...``,
the arguments of ``kv-embed``) decides where each request is when something happens to it:
waiting in the queue, or inside a running pass. No sleep stands in for "it has started by now".

Protocol: before each coalesced pass, the server writes the pass's number of texts as one line
to the file descriptor named by ``$KV_TEST_PASS_FD``, then reads one line from its stdin:
``step`` runs that pass; ``open`` (or the end of stdin) runs it and every later pass unheld.
The model is loaded (and its layers chosen) before the gate is installed, so loading never waits.
"""

from __future__ import annotations

import os
import sys

from kv_embeddings_integrations import KVEmbedder, cli

_events = os.fdopen(int(os.environ["KV_TEST_PASS_FD"]), "w", buffering=1)
_open = False


def _hold(size: int) -> None:
    # Called on the embedder's one coalescing thread, so passes report and wait one at a time.
    global _open
    if _open:
        return
    _events.write(f"{size}\n")
    if sys.stdin.readline().strip() != "step":
        _open = True


_load = KVEmbedder.from_pretrained.__func__


def _gated(cls, *args, **kwargs):
    embedder = _load(cls, *args, **kwargs)
    embedder.batch_start_listeners.append(_hold)
    return embedder


KVEmbedder.from_pretrained = classmethod(_gated)

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
