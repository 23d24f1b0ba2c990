"""``kv-embed embed-dataset``: a corpus of files embedded with Ray Data, on a local Ray or a
cluster (the ray extra, imported only when the command runs)."""

from __future__ import annotations

import argparse
import sys

from ..parallel.ray_data import DEFAULT_BATCH_SIZE, FORMATS
from .errors import CLIError
from .options import add_model_options, add_run_options, embedder_config, load_options

NAME = "embed-dataset"
HELP = "embed a corpus of files with Ray Data (local Ray or a cluster); needs the ray extra"


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``kv-embed embed-dataset``."""
    add_model_options(parser)
    parser.add_argument(
        "--input", required=True, help="a .parquet/.jsonl/.json/.csv file, a directory of them, a glob, or a URI"
    )
    parser.add_argument("--input-format", choices=FORMATS, default=None, help="(default: from the file names)")
    parser.add_argument("--output", required=True, help="output directory (created; must be empty), or a URI")
    parser.add_argument("--output-format", choices=("parquet", "json"), default="parquet", help="(default: parquet)")
    parser.add_argument("--text-column", default="text", help="column holding the texts (default: text)")
    parser.add_argument("--output-column", default="embedding", help="column for the vectors (default: embedding)")
    add_run_options(parser)
    parser.add_argument("--address", default=None, help="Ray cluster to join (ray://host:10001, auto); default: local")
    parser.add_argument("--concurrency", type=int, default=1, help="model replicas (actors); one per GPU is usual")
    parser.add_argument("--num-gpus-per-worker", type=float, default=0, help="GPUs per replica (default: 0)")
    parser.add_argument("--num-cpus-per-worker", type=float, default=1, help="CPUs (torch threads) per replica")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="rows per actor call")


def run(args: argparse.Namespace) -> None:
    """Read ``--input`` as a Ray dataset, embed it on actors, write ``--output``."""
    import os
    import time

    from ..parallel import ray_data

    try:
        ray = ray_data.require_ray()
    except ModuleNotFoundError as e:
        raise CLIError(str(e)) from None
    config = embedder_config(args, "max_tokens_per_batch")
    model = load_options(args)
    local_output = "://" not in args.output
    if local_output and os.path.isdir(args.output) and os.listdir(args.output):
        raise CLIError(f"output directory is not empty: {args.output}")
    try:
        paths, fmt = ray_data.resolve_input(args.input, args.input_format)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    if args.address is None:
        # A local Ray with one CPU slot more than the machine's cores, for the readers and writers
        # (Ray tasks too), which would otherwise wait behind actors holding every core.
        ray.init(num_cpus=(os.cpu_count() or 1) + 1)
    else:
        ray.init(address=args.address)
    try:
        ray.data.DataContext.get_current().execution_options.preserve_order = True  # output rows in input order
        started = time.perf_counter()
        dataset = getattr(ray.data, f"read_{fmt}")(paths)
        try:
            embedded = ray_data.embed_dataset(
                dataset,
                model=model,
                text_column=args.text_column,
                output_column=args.output_column,
                prompt_type=args.prompt_type,
                precision=args.precision,
                concurrency=args.concurrency,
                num_gpus_per_worker=args.num_gpus_per_worker,
                num_cpus_per_worker=args.num_cpus_per_worker,
                batch_size=args.batch_size,
                normalize=not args.no_normalize,
                config=config,
            )
        except ValueError as e:
            raise CLIError(str(e)) from None
        getattr(embedded, f"write_{args.output_format}")(args.output)
        print(f"wrote embeddings to {args.output} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    finally:
        ray.shutdown()
