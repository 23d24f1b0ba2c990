"""``kv-embed embed``: a file of texts into a ``.npy`` array, in checkpointed chunks that a stopped
run resumes from (``--resume``), on one device or a pool of replicas (``--devices``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.config import EmbedderConfig
from ..core.outputs.quantization import DTYPES
from .errors import CLIError
from .inputs import read_texts
from .options import add_field_option, add_model_options, add_run_options, load_embedder

NAME = "embed"
HELP = "embed a file of texts into a .npy array"


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``kv-embed embed``."""
    add_model_options(parser)
    parser.add_argument("--input", required=True, type=Path, help=".txt (one text a line) or .jsonl")
    parser.add_argument("--output", required=True, type=Path, help="output .npy file (rows in input order)")
    parser.add_argument("--text-field", default="text", help="field holding the text in .jsonl input (default: text)")
    add_run_options(parser)
    add_field_option(parser, EmbedderConfig, "batch_size")
    parser.add_argument(
        "--devices",
        nargs="+",
        default=None,
        metavar="DEVICE",
        help="data parallel: one model replica per device, e.g. --devices cuda:0 cuda:1 (or cpu cpu)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=10000,
        help="texts per checkpoint: finished chunks are kept in OUTPUT.partial/ until the run ends (default 10000)",
    )
    parser.add_argument("--resume", action="store_true", help="continue a run that stopped, from its finished chunks")


def run(args: argparse.Namespace) -> None:
    """Embed ``--input`` into ``--output``, chunk by chunk."""
    import contextlib

    from ..core.identity import compared_fields
    from ..core.running.inputs import prepare_texts
    from ..parallel.checkpoint import CheckpointError, ChunkedRun

    if args.output.suffix != ".npy":
        raise CLIError(f"--output must end in .npy, got {args.output}")
    if not args.output.parent.is_dir():
        raise CLIError(f"output directory does not exist: {args.output.parent}")
    texts = read_texts(args.input, args.text_field)
    try:
        texts = prepare_texts(texts, args.empty_text)  # an empty text fails here, before any work
    except ValueError as e:
        raise CLIError(f"{args.input}: {e}") from None
    embedder = load_embedder(args)
    # What decides the vectors, from the one identity the stores use (the weights' fingerprint,
    # not the model's name; batching does not count): a resumed run must match it.
    identity = {
        **compared_fields(
            embedder.identity(normalize=not args.no_normalize, precision=args.precision),
            also=("dtype", "max_length", "long_text", "precision"),
        ),
        "prompt_type": args.prompt_type,
    }
    try:
        chunked = ChunkedRun(
            args.output, texts, args.chunk_size, identity, resume=args.resume, dtype=DTYPES[args.precision]
        )
        pending = chunked.pending()
        if len(pending) < chunked.chunks:
            print(f"resuming: {chunked.chunks - len(pending)} of {chunked.chunks} chunks already done", file=sys.stderr)
        tokens = truncated = embedded = 0
        # Data parallel: one pool for the whole run, not one per chunk.
        with embedder.start_pool(args.devices) if args.devices else contextlib.nullcontext(embedder) as workers:
            for index in pending:
                result = workers.embed(
                    chunked.texts_of(index), prompt_type=args.prompt_type, normalize=not args.no_normalize
                )
                # Quantized here, with this process's ranges (the pool's workers return float32).
                chunked.save(index, embedder.quantize(result.vectors, args.precision))
                tokens, truncated, embedded = (
                    tokens + result.total_tokens,
                    truncated + result.num_truncated,
                    embedded + len(result),
                )
        rows, dim = chunked.finish()
    except (CheckpointError, ValueError) as e:  # ValueError: e.g. a device this machine does not have
        raise CLIError(str(e)) from None
    if truncated:
        print(
            f"{truncated} of {embedded} texts were longer than max_length={embedder.max_length} tokens "
            "(prompt included) and were truncated",
            file=sys.stderr,
        )
    print(
        f"wrote {rows} x {dim} {args.precision} embeddings to {args.output} ({tokens} tokens embedded by this run)",
        file=sys.stderr,
    )
