"""The ``kv-embed`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..core.bundled import DEFAULT_MODEL
from ..core.config import EmbedderConfig
from ..core.extras import MissingExtraError, require
from ..core.jsonl import iter_jsonl
from ..core.loading import LoadOptions
from ..core.prompts import PROMPT_TYPES
from ..parallel.ray_data import DEFAULT_BATCH_SIZE as DEFAULT_DATASET_BATCH
from ..parallel.ray_data import FORMATS
from ..serving.settings import ServeSettings


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _layers(value: str):
    if value in ("auto", "none"):
        return None if value == "none" else "auto"
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or comma-separated ints, got {value!r}") from None


def read_texts(path: Path, text_field: str) -> list[str]:
    """Texts from a ``.txt`` file (one per line) or a ``.jsonl`` file (``text_field`` of each object)."""
    if not path.is_file():
        raise CLIError(f"input file not found: {path}")
    if path.suffix == ".jsonl":
        texts = []
        for number, record in iter_jsonl(path, CLIError):
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise CLIError(f"{path}:{number}: no string field {text_field!r}")
            texts.append(record[text_field])
    elif path.suffix == ".txt":
        texts = path.read_text(encoding="utf-8").splitlines()
    else:
        raise CLIError(f"input must be a .txt (one text a line) or .jsonl file, got {path.name}")
    if not texts:
        raise CLIError(f"input file has no texts: {path}")
    return texts


def _literal_choices(annotation: Any) -> tuple[str, ...] | None:
    """The string values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation."""
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(v for v in typing.get_args(annotation) if isinstance(v, str))
    choices = [c for arg in typing.get_args(annotation) for c in (_literal_choices(arg) or ())]
    return tuple(choices) or None


def _scalar_type(annotation: Any) -> type | None:
    """``int`` or ``float`` for an ``int``, ``float``, ``int | None`` or ``float | None`` annotation, else None."""
    if annotation in (int, float):
        return annotation
    others = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return others[0] if len(others) == 1 and others[0] in (int, float) else None


def add_field_option(
    parser: argparse.ArgumentParser, model: type[BaseModel], name: str, *aliases: str, **overrides: Any
) -> argparse.Action:
    """``--<name>`` for a field of a pydantic model: choices, type, default and help from the field.

    The config is the one place an option's values and default are written down; the command
    line reads them from there (``overrides`` only adds what a field cannot say, such as a parser
    for ``--layers``).
    """
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    options: dict[str, Any] = {"default": default}
    choices = _literal_choices(field.annotation)
    if choices and "type" not in overrides:
        options["choices"] = choices
    elif (kind := _scalar_type(field.annotation)) is not None:
        options["type"] = kind
    # A field whose default is None says in its description what None means.
    suffix = "" if default is None else f" (default: {default})"
    options["help"] = f"{field.description}{suffix}".replace("%", "%%")
    options.update(overrides)
    return parser.add_argument("--" + name.replace("_", "-"), *aliases, **options)


# Every method, for `kv-embed eval` by default.
EVAL_METHODS = _literal_choices(EmbedderConfig.model_fields["method"].annotation)
# The embedder options every embedding command takes, in this order.
MODEL_OPTIONS = (
    "task", "method", "prompt_family", "layers", "bias", "pooling", "output_layer", "postprocess", "dimensions",
    "max_length", "long_text", "empty_text",
)  # fmt: skip


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    """What every command that loads a model takes: which model, which revision, remote code."""
    add_field_option(parser, LoadOptions, "model", "--model-id", default=DEFAULT_MODEL)  # --model-id: TEI's
    add_field_option(parser, LoadOptions, "revision")
    add_field_option(
        parser,
        LoadOptions,
        "trust_remote_code",
        action="store_true",
        help="run the model repository's own Python code (some hub models need it; off by default)",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    _add_load_options(parser)
    for name in MODEL_OPTIONS:
        overrides = {"type": _layers, "metavar": "auto|none|10,11,12"} if name == "layers" else {}
        add_field_option(parser, EmbedderConfig, name, **overrides)
    parser.add_argument(
        "--postprocess-texts",
        type=Path,
        default=None,
        metavar="FILE",
        help="texts (.txt or .jsonl 'text') to fit --postprocess on, e.g. a sample of your corpus "
        "(default: the built-in calibration texts)",
    )
    add_field_option(parser, LoadOptions, "device", metavar="cpu|cuda|cuda:1|...")
    add_field_option(parser, LoadOptions, "dtype", metavar="float32|bfloat16|float16|auto")
    add_field_option(
        parser,
        LoadOptions,
        "device_map",
        choices=("auto", "balanced", "balanced_low_0", "sequential"),
        help="spread one model over all GPUs (and CPU) with accelerate, for models larger than one GPU",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that embed a corpus."""
    parser.add_argument("--prompt-type", choices=PROMPT_TYPES, default="document")
    add_field_option(parser, EmbedderConfig, "max_tokens_per_batch")
    parser.add_argument("--no-normalize", action="store_true", help="keep raw (unnormalised) vectors")


ENV_PREFIX = "KV_EMBED_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def environment_defaults(parser: argparse.ArgumentParser, prefix: str) -> None:
    """Each ``--some-option`` of ``parser`` takes its default from ``$<prefix>SOME_OPTION`` when that
    is set: a flag still wins, then the variable, then the built-in default. A value the flag would
    refuse is refused here too, naming the variable."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        variable = prefix + action.dest.upper()
        raw = os.environ.get(variable)
        if raw is None:
            continue
        if action.nargs == 0:  # a switch such as --trust-remote-code
            if raw.strip().lower() not in _TRUE + _FALSE:
                raise CLIError(f"${variable}={raw!r}: expected one of {', '.join(_TRUE + _FALSE[:-1])}")
            action.default = raw.strip().lower() in _TRUE
            continue
        try:
            value = action.type(raw) if action.type else raw
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise CLIError(f"${variable}={raw!r} is not a valid {action.option_strings[0]}: {e}") from None
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise CLIError(f"${variable}={raw!r}: {action.option_strings[0]} takes one of {choices}")
        action.default = value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kv-embed", description="Text embeddings from a frozen LLM by KV re-routing.")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed a file of texts into a .npy array")
    _add_model_options(embed)
    embed.add_argument("--input", required=True, type=Path, help=".txt (one text a line) or .jsonl")
    embed.add_argument("--output", required=True, type=Path, help="output .npy file (rows in input order)")
    embed.add_argument("--text-field", default="text", help="field holding the text in .jsonl input (default: text)")
    _add_run_options(embed)
    add_field_option(embed, EmbedderConfig, "batch_size")
    embed.add_argument(
        "--devices",
        nargs="+",
        default=None,
        metavar="DEVICE",
        help="data parallel: one model replica per device, e.g. --devices cuda:0 cuda:1 (or cpu cpu)",
    )
    embed.add_argument(
        "--chunk-size",
        type=int,
        default=10000,
        help="texts per checkpoint: finished chunks are kept in OUTPUT.partial/ until the run ends (default 10000)",
    )
    embed.add_argument("--resume", action="store_true", help="continue a run that stopped, from its finished chunks")

    dataset = commands.add_parser(
        "embed-dataset", help="embed a corpus of files with Ray Data (local Ray or a cluster); needs the ray extra"
    )
    _add_model_options(dataset)
    dataset.add_argument(
        "--input", required=True, help="a .parquet/.jsonl/.json/.csv file, a directory of them, a glob, or a URI"
    )
    dataset.add_argument("--input-format", choices=FORMATS, default=None, help="(default: from the file names)")
    dataset.add_argument("--output", required=True, help="output directory (created; must be empty), or a URI")
    dataset.add_argument("--output-format", choices=("parquet", "json"), default="parquet", help="(default: parquet)")
    dataset.add_argument("--text-column", default="text", help="column holding the texts (default: text)")
    dataset.add_argument("--output-column", default="embedding", help="column for the vectors (default: embedding)")
    _add_run_options(dataset)
    dataset.add_argument("--address", default=None, help="Ray cluster to join (ray://host:10001, auto); default: local")
    dataset.add_argument("--concurrency", type=int, default=1, help="model replicas (actors); one per GPU is usual")
    dataset.add_argument("--num-gpus-per-worker", type=float, default=0, help="GPUs per replica (default: 0)")
    dataset.add_argument("--num-cpus-per-worker", type=float, default=1, help="CPUs (torch threads) per replica")
    dataset.add_argument("--batch-size", type=int, default=DEFAULT_DATASET_BATCH, help="rows per actor call")

    select = commands.add_parser("select-layers", help="pick the layers to re-route by intrinsic dimension")
    _add_load_options(select)
    select.add_argument(
        "--texts", type=Path, default=None, help="calibration texts (.txt or .jsonl); default: built-in"
    )
    select.add_argument("--text-field", default="text", help="field holding the text in .jsonl input (default: text)")
    select.add_argument("--plot", type=Path, default=None, help="draw the ID curve to this PNG (needs matplotlib)")
    select.add_argument("--skip-fraction", type=float, default=None, help="early layers never chosen (default 0.2)")
    select.add_argument("--window", type=int, default=None, help="layers after the minimum (default floor(L/10))")
    select.add_argument("--recompute", action="store_true", help="ignore a cached selection and refresh it")
    # The selection depends on the prompt measured and the layer pooled.
    add_field_option(select, EmbedderConfig, "method")
    add_field_option(select, EmbedderConfig, "prompt_family")
    add_field_option(select, EmbedderConfig, "output_layer")
    add_field_option(select, LoadOptions, "device")
    add_field_option(select, LoadOptions, "dtype")

    evaluate = commands.add_parser(
        "eval", help="score methods on STS / retrieval / classification data (Markdown, JSON, PNG)"
    )
    _add_load_options(evaluate)
    evaluate.add_argument(
        "--methods",
        default=",".join(EVAL_METHODS),
        help="comma-separated methods, each optionally with options: 'kv,prompt,kv(bias=0;pooling=last),"
        "kv(layers=10-13)'; 'none' for reference rows only (default: %(default)s)",
    )
    evaluate.add_argument("--sts", type=Path, action="append", default=[], help="STS-B file, SICK / SemEval folder")
    evaluate.add_argument("--retrieval", type=Path, action="append", default=[], help="BEIR folder")
    evaluate.add_argument("--split", default="test", help="qrels split of the retrieval folders (default: test)")
    evaluate.add_argument(
        "--classification", type=Path, action="append", default=[], help="folder with train/test .csv or .tsv"
    )
    evaluate.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="a fixed random part of each task, for quick sweeps: N pairs of each STS task, N test texts of "
        "each classification task, a corpus of N documents keeping every judged one (default: everything)",
    )
    evaluate.add_argument("--text-column", default=None, help="classification text column (default: text)")
    evaluate.add_argument("--label-column", default=None, help="classification label column (default: label)")
    evaluate.add_argument(
        "--reference",
        action="append",
        default=[],
        help="add a sentence-transformers model as a reference row (path, hub id, or all-MiniLM-L6-v2)",
    )
    evaluate.add_argument("--output-dir", type=Path, default=Path("eval-results"), help="(default: %(default)s)")
    evaluate.add_argument("--title", default=None, help="heading of the Markdown table and chart")
    add_field_option(evaluate, EmbedderConfig, "max_length")
    add_field_option(evaluate, EmbedderConfig, "batch_size")
    add_field_option(evaluate, LoadOptions, "device")
    add_field_option(evaluate, LoadOptions, "dtype")
    evaluate.add_argument("--no-cache", action="store_true", help="embed everything afresh, store nothing")
    evaluate.add_argument(
        "--hybrid",
        action="store_true",
        help="retrieval: also score each method's sparse lexical vectors (same forward pass) and dense+sparse, "
        "dense+BM25 fusions",
    )
    evaluate.add_argument(
        "--no-bm25", action="store_true", help="leave out the BM25 reference row of retrieval tasks (bm25s)"
    )

    serve = commands.add_parser(
        "serve", help="serve embeddings over HTTP: OpenAI's /v1/embeddings and TEI's /embed (the serve extra)"
    )
    _add_model_options(serve)
    add_field_option(serve, EmbedderConfig, "max_tokens_per_batch", "--max-batch-tokens")  # TEI's name
    add_field_option(serve, EmbedderConfig, "batch_size")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument(
        "--served-model-name", default=None, help="the model name clients send and /v1/models lists (default: --model)"
    )
    serve.add_argument(
        "--api-key",
        default=None,
        help="key clients must send as 'Authorization: Bearer KEY' (default: the KV_EMBED_API_KEY environment "
        "variable, which keeps it out of ps; neither: no key)",
    )
    add_field_option(serve, ServeSettings, "max_client_batch_size")
    add_field_option(serve, ServeSettings, "max_request_bytes", "--payload-limit")  # TEI's name
    add_field_option(serve, ServeSettings, "max_concurrent_requests")
    serve.add_argument(
        "--auto-truncate",
        action="store_true",
        help="accepted for TEI's command lines: over-long inputs are already cut unless a request says truncate=false",
    )
    serve.add_argument(
        "--graceful-timeout", type=float, default=30.0, help="seconds in-flight requests get after SIGTERM (default 30)"
    )
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    # Containers and orchestrators configure servers by environment, as TEI's and infinity's.
    environment_defaults(serve, ENV_PREFIX)

    similarity = commands.add_parser("similarity", help="cosine similarity of two texts")
    _add_model_options(similarity)
    similarity.add_argument("text_a")
    similarity.add_argument("text_b")
    return parser


def _config(args, *names: str) -> EmbedderConfig:
    """The embedder options given on the command line (and ``names`` where set), validated."""
    options = {name: getattr(args, name) for name in MODEL_OPTIONS}
    if getattr(args, "postprocess_texts", None) is not None:
        options["postprocess_texts"] = read_texts(args.postprocess_texts, "text")
    for name in names:
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    try:
        return EmbedderConfig(**options)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _load_options(args, **changes: Any) -> LoadOptions:
    """How to load ``--model``: the command line's loading options (and ``changes``), validated."""
    options = {"model": args.model, "device": args.device, "dtype": args.dtype}
    options |= {"revision": args.revision, "trust_remote_code": args.trust_remote_code}
    options["device_map"] = getattr(args, "device_map", None)
    try:
        return LoadOptions(**{**options, **changes})
    except ValueError as e:
        raise CLIError(f"cannot load model {args.model!r}: {e}") from None


def _embedder(args):
    import torch

    from ..core.embedder import KVEmbedder
    from ..core.loading import resolve_dtype

    config = _config(args, "batch_size", "max_tokens_per_batch")
    changes = {}
    if getattr(args, "devices", None):
        # Replicas for --devices are made from a CPU copy, in the dtype the replicas' devices want.
        try:
            first = torch.device(args.devices[0])
        except RuntimeError as e:
            raise CLIError(f"--devices: {e}") from None
        changes = {"device": "cpu", "dtype": args.dtype or resolve_dtype(None, first)}
    load_options = _load_options(args, **changes)
    try:
        return KVEmbedder.from_pretrained(load_options, config=config)
    except (OSError, ModuleNotFoundError, ValueError) as e:
        # Missing bundled package, unknown model or directory, bad option: one clear line.
        raise CLIError(f"cannot load model {args.model!r}: {e}") from None


def _select_layers(args) -> None:
    from ..core.embedder import KVEmbedder
    from ..core.method.layer_selection import auto_select_layers

    texts = read_texts(args.texts, args.text_field) if args.texts is not None else None
    if args.plot is not None:
        try:
            require("plot", "kv-embed select-layers --plot")
        except MissingExtraError as e:
            raise CLIError(str(e)) from None
    rule = {k: v for k, v in (("skip_fraction", args.skip_fraction), ("window", args.window)) if v is not None}
    load_options = _load_options(args)
    try:
        # Load without re-routing, then select explicitly (so --recompute and the rule options apply).
        config = EmbedderConfig(
            method=args.method, prompt_family=args.prompt_family, output_layer=args.output_layer, layers=None
        )
        embedder = KVEmbedder.from_pretrained(load_options, config=config)
        rule = {"last_layer": embedder.output_layer, **rule}
        selection = auto_select_layers(embedder, texts, recompute=args.recompute, **rule)
    except (OSError, ModuleNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    source = "cache" if selection.from_cache else "computed"
    print(f"model: {args.model} ({embedder.num_layers} layers)")
    print(f"calibration: {selection.calibration}")
    print("layer  intrinsic_dimension")
    for layer, dimension in enumerate(selection.dimensions):
        mark = "  <- re-routed" if layer in selection.layers else ""
        print(f"{layer:5d}  {dimension:8.3f}{mark}")
    low = min(range(len(selection.dimensions)), key=selection.dimensions.__getitem__)
    print(f"minimum ID over all layers: {selection.dimensions[low]:.3f} at layer {low}")
    print(f"chosen layers: {','.join(map(str, selection.layers))}")
    print(f"selection took {selection.seconds:.1f} s ({source})")
    if args.plot is not None:
        _plot(selection, args.model, args.plot)
        print(f"plot: {args.plot}")


def _plot(selection, model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(len(selection.dimensions)), selection.dimensions, marker="o", markersize=3)
    ax.axvspan(selection.layers[0] - 0.5, selection.layers[-1] + 0.5, alpha=0.2, color="tab:orange", label="re-routed")
    skip = int(len(selection.dimensions) * selection.key["rule"]["skip_fraction"])
    if skip:
        ax.axvspan(-0.5, skip - 0.5, alpha=0.1, color="grey", label="skipped")
    ax.set(xlabel="layer", ylabel="TwoNN intrinsic dimension", title=f"{model}: last-token ID per layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _evaluate(args) -> None:
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
    if not variants and not args.reference:
        raise CLIError("nothing to evaluate: --methods none and no --reference")
    try:
        tasks = [evaluation.load_sts(p) for p in args.sts]
        tasks += [evaluation.load_retrieval(p, split=args.split) for p in args.retrieval]
        tasks += [evaluation.load_classification(p, args.text_column, args.label_column) for p in args.classification]
        if args.sample is not None:
            tasks = [evaluation.subsample(task, args.sample) for task in tasks]
    except (evaluation.DataFormatError, ValueError) as e:
        raise CLIError(str(e)) from None
    try:
        encoders = []
        if variants:
            encoders += evaluation.kv_variants(
                _load_options(args),
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
        encoders, tasks, cache_directory=None if args.no_cache else "default", hybrid=args.hybrid
    )
    report.environment.update(
        model=args.model, dtype=args.dtype or "default", max_length=args.max_length, command=" ".join(sys.argv)
    )
    title = args.title or f"{args.model}"
    paths = evaluation.write_report(report, args.output_dir, title)
    print(evaluation.to_markdown(report, title))
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)


def _embed_file(args) -> None:
    import contextlib

    from ..core.identity import compared_fields
    from ..core.inputs import prepare_texts
    from ..parallel.checkpoint import CheckpointError, ChunkedRun

    texts = read_texts(args.input, args.text_field)
    try:
        texts = prepare_texts(texts, args.empty_text)  # an empty text fails here, before any work
    except ValueError as e:
        raise CLIError(f"{args.input}: {e}") from None
    embedder = _embedder(args)
    # What decides the vectors, from the one identity the stores use (the weights' fingerprint,
    # not the model's name; batching does not count): a resumed run must match it.
    identity = {
        **compared_fields(
            embedder.identity(normalize=not args.no_normalize), also=("dtype", "max_length", "long_text")
        ),
        "prompt_type": args.prompt_type,
    }
    try:
        run = ChunkedRun(args.output, texts, args.chunk_size, identity, resume=args.resume)
        pending = run.pending()
        if len(pending) < run.chunks:
            print(f"resuming: {run.chunks - len(pending)} of {run.chunks} chunks already done", file=sys.stderr)
        tokens = truncated = embedded = 0
        # Data parallel: one pool for the whole run, not one per chunk.
        with embedder.start_pool(args.devices) if args.devices else contextlib.nullcontext(embedder) as workers:
            for index in pending:
                result = workers.embed(
                    run.texts_of(index), prompt_type=args.prompt_type, normalize=not args.no_normalize
                )
                run.save(index, result.vectors)
                tokens, truncated, embedded = (
                    tokens + result.total_tokens,
                    truncated + result.num_truncated,
                    embedded + len(result),
                )
        rows, dim = run.finish()
    except (CheckpointError, ValueError) as e:  # ValueError: e.g. a device this machine does not have
        raise CLIError(str(e)) from None
    if truncated:
        print(
            f"{truncated} of {embedded} texts were longer than max_length={embedder.max_length} tokens "
            "(prompt included) and were truncated",
            file=sys.stderr,
        )
    print(
        f"wrote {rows} x {dim} float32 embeddings to {args.output} ({tokens} tokens embedded by this run)",
        file=sys.stderr,
    )


def _embed_dataset(args) -> None:
    import os
    import time

    from ..parallel import ray_data

    try:
        ray = ray_data.require_ray()
    except ModuleNotFoundError as e:
        raise CLIError(str(e)) from None
    config = _config(args, "max_tokens_per_batch")
    load_options = _load_options(args)
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
                model=load_options,
                text_column=args.text_column,
                output_column=args.output_column,
                prompt_type=args.prompt_type,
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


def _serve(args) -> None:
    import os

    try:
        require("serve", "kv-embed serve")
    except MissingExtraError as e:
        raise CLIError(str(e)) from None
    from ..serving import API_KEY_ENV, EmbeddingEngine, create_app
    from ..serving.server import run_server
    from ..serving.token_ids import cl100k

    name = args.served_model_name or args.model
    try:
        settings = ServeSettings(
            served_model_name=name,
            aliases=(args.model,) if args.model != name else (),
            api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
            max_client_batch_size=args.max_client_batch_size,
            max_request_bytes=args.max_request_bytes,
            max_concurrent_requests=args.max_concurrent_requests,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    embedder = _embedder(args)  # loads the model and chooses the layers before the port opens
    print(
        f"kv-embed serve: {name} ({embedder.num_layers} layers, re-routing {embedder.layers}, "
        f"{embedder.dimension} dimensions) on http://{args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    cl100k()  # token-id inputs: load the encoding now, not in the first request
    app = create_app(EmbeddingEngine(embedder, settings))
    run_server(app, host=args.host, port=args.port, log_level=args.log_level, graceful_timeout=args.graceful_timeout)


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "embed":
        if args.output.suffix != ".npy":
            raise CLIError(f"--output must end in .npy, got {args.output}")
        if not args.output.parent.is_dir():
            raise CLIError(f"output directory does not exist: {args.output.parent}")
        _embed_file(args)
    elif args.command == "embed-dataset":
        _embed_dataset(args)
    elif args.command == "eval":
        _evaluate(args)
    elif args.command == "select-layers":
        _select_layers(args)
    elif args.command == "serve":
        _serve(args)
    elif args.command == "similarity":
        embedder = _embedder(args)
        a, b = embedder.encode([args.text_a, args.text_b])
        print(f"{float(a @ b):.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except CLIError as e:
        print(f"kv-embed: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
