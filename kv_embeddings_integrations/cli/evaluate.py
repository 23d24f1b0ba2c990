"""``kv-embed eval``: methods (and reference models) scored on STS, retrieval and classification
data, written as Markdown, JSON and a chart (the eval extra, imported only when the command
runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.config import EmbedderConfig
from ..core.extras import MissingExtraError, require
from ..core.model.loading import LoadOptions
from ..core.outputs.quantization import SCALAR, check_precision
from .errors import CLIError
from .options import add_field_option, add_load_options, literal_choices, load_options

if TYPE_CHECKING:
    from ..evaluation.data import Task
    from ..evaluation.encoders import Encoder

NAME = "eval"
HELP = "score methods on STS / retrieval / classification data (Markdown, JSON, PNG)"
# Every method, for `kv-embed eval` by default.
EVAL_METHODS = literal_choices(EmbedderConfig.model_fields["method"].annotation) or ()


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``kv-embed eval``."""
    add_load_options(parser)
    parser.add_argument(
        "--methods",
        default=",".join(EVAL_METHODS),
        help="comma-separated methods, each optionally with options: 'kv,prompt,kv(bias=0;pooling=last),"
        "kv(layers=10-13)'; 'none' for reference rows only (default: %(default)s)",
    )
    parser.add_argument("--sts", type=Path, action="append", default=[], help="STS-B file, SICK / SemEval folder")
    parser.add_argument("--retrieval", type=Path, action="append", default=[], help="BEIR folder")
    parser.add_argument("--split", default="test", help="qrels split of the retrieval folders (default: test)")
    parser.add_argument(
        "--classification", type=Path, action="append", default=[], help="folder with train/test .csv or .tsv"
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="a fixed random part of each task, for quick sweeps: N pairs of each STS task, N test texts of "
        "each classification task, a corpus of N documents keeping every judged one (default: everything)",
    )
    parser.add_argument("--text-column", default=None, help="classification text column (default: text)")
    parser.add_argument("--label-column", default=None, help="classification label column (default: label)")
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        help="add a sentence-transformers model as a reference row (path, hub id, or all-MiniLM-L6-v2)",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("eval-results"), help="(default: %(default)s)")
    parser.add_argument("--title", default=None, help="heading of the Markdown table and chart")
    add_field_option(parser, EmbedderConfig, "max_length")
    add_field_option(parser, EmbedderConfig, "batch_size")
    add_field_option(parser, LoadOptions, "device")
    add_field_option(parser, LoadOptions, "dtype")
    parser.add_argument("--no-cache", action="store_true", help="embed everything afresh, store nothing")
    parser.add_argument(
        "--hybrid",
        action="store_true",
        help="retrieval: also score each method's sparse lexical vectors (same forward pass) and dense+sparse, "
        "dense+BM25 fusions",
    )
    parser.add_argument(
        "--precision",
        default="",
        metavar="P,P",
        help="STS and retrieval: also score each method's final vectors in these output precisions "
        "(comma-separated: float16, int8, uint8, binary, ubinary; binary ones also reranked by float32 "
        "on retrieval), as a store holding them would",
    )
    parser.add_argument(
        "--no-bm25", action="store_true", help="leave out the BM25 reference row of retrieval tasks (bm25s)"
    )


def run(args: argparse.Namespace) -> None:
    """Load the tasks and the encoders, score them all, print the table and write the report."""
    needed = ("scipy", "sklearn", "pytrec_eval", "matplotlib") + (("sentence_transformers",) if args.reference else ())
    try:
        require("eval", "kv-embed eval", needed)
    except MissingExtraError as e:
        raise CLIError(str(e)) from None

    from .. import evaluation

    if not (args.sts or args.retrieval or args.classification):
        raise CLIError("give at least one task: --sts, --retrieval or --classification")
    try:
        variants = [] if args.methods == "none" else evaluation.parse_variants(args.methods)
    except ValueError as e:
        raise CLIError(f"--methods: {e}") from None
    precisions = [p for p in args.precision.split(",") if p]
    try:
        for precision in precisions:
            check_precision(precision)
    except ValueError as e:
        raise CLIError(f"--precision: {e}") from None
    if "float32" in precisions:
        raise CLIError("--precision: float32 is each method's own row; list the others (float16, int8, ...)")
    refitted = [label for label, options in variants if options.get("fit", "builtin") != "builtin"]
    if refitted and set(precisions) & SCALAR:
        raise CLIError(f"--precision int8 / uint8 need the built-in fit (its ranges); not with {', '.join(refitted)}")
    if not variants and not args.reference:
        raise CLIError("nothing to evaluate: --methods none and no --reference")
    try:
        tasks: list[Task] = [evaluation.load_sts(p) for p in args.sts]
        tasks += [evaluation.load_retrieval(p, split=args.split) for p in args.retrieval]
        tasks += [evaluation.load_classification(p, args.text_column, args.label_column) for p in args.classification]
        if args.sample is not None:
            tasks = [evaluation.subsample(task, args.sample) for task in tasks]
    except (evaluation.DataFormatError, ValueError) as e:
        raise CLIError(str(e)) from None
    try:
        encoders: list[Encoder | evaluation.BM25Reference] = []
        if variants:
            encoders += evaluation.kv_variants(
                load_options(args),
                variants,
                max_length=args.max_length,
                batch_size=args.batch_size,
            )
        encoders += [evaluation.SentenceTransformerReference(name, device=args.device) for name in args.reference]
    except (OSError, ModuleNotFoundError, ValueError) as e:
        raise CLIError(f"cannot load a model: {e}") from None
    if args.retrieval and not args.no_bm25:
        try:
            require("eval", "the BM25 reference row (--no-bm25 leaves it out)", ("bm25s", "Stemmer"))
        except MissingExtraError as e:
            raise CLIError(str(e)) from None
        encoders.append(evaluation.BM25Reference())
    report = evaluation.run_evaluation(
        encoders,
        tasks,
        cache_directory=None if args.no_cache else "default",
        hybrid=args.hybrid,
        precisions=precisions,
    )
    report.environment.update(
        model=args.model, dtype=args.dtype or "default", max_length=args.max_length, command=" ".join(sys.argv)
    )
    title = args.title or f"{args.model}"
    paths = evaluation.write_report(report, args.output_dir, title)
    print(evaluation.to_markdown(report, title))
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
