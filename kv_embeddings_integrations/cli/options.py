"""The options the commands share, and what they turn into: a config, loading options, an embedder.

Each option's values, default and help come from the field of the config it sets
([`add_field_option`][kv_embeddings_integrations.cli.options.add_field_option]); a server's options
can also come from ``$KV_EMBED_*`` variables
([`environment_defaults`][kv_embeddings_integrations.cli.options.environment_defaults]).
"""

from __future__ import annotations

import argparse
import json
import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from ..core.config import EmbedderConfig
from ..core.model.bundled import DEFAULT_MODEL
from ..core.model.loading import LoadOptions
from ..core.outputs.quantization import PRECISIONS, check_output
from ..core.prompts import check_prompt_name
from .errors import CLIError
from .inputs import read_texts

if TYPE_CHECKING:
    from ..core.embedder import KVEmbedder

# The embedder options every embedding command takes, in this order.
MODEL_OPTIONS = (
    "task", "method", "prompt_family", "layers", "bias", "pooling", "output_layer", "postprocess", "dimensions",
    "max_length", "long_text", "empty_text", "batching", "lexical", "lexical_dim", "lexical_weight",
)  # fmt: skip
# The prefix of the variables that give a server's options (``$KV_EMBED_PORT``...).
ENV_PREFIX = "KV_EMBED_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def parse_layers(value: str) -> list[int] | Literal["auto"] | None:
    """``--layers``: ``auto``, ``none`` or comma-separated layer numbers."""
    if value in ("auto", "none"):
        return None if value == "none" else "auto"
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or comma-separated ints, got {value!r}") from None


def parse_prompts(entries: list[str]) -> dict[str, str]:
    """``--prompt NAME=TEMPLATE`` entries as the ``prompts`` option."""
    prompts: dict[str, str] = {}
    for entry in entries:
        name, sep, template = entry.partition("=")
        if not sep or not name.strip():
            raise CLIError(f"--prompt takes NAME=TEMPLATE, got {entry!r}")
        prompts[name.strip()] = template
    return prompts


def literal_choices(annotation: Any) -> tuple[str, ...] | None:
    """The string values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation."""
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(v for v in typing.get_args(annotation) if isinstance(v, str))
    choices = [c for arg in typing.get_args(annotation) for c in (literal_choices(arg) or ())]
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
    choices = literal_choices(field.annotation)
    if choices and "type" not in overrides:
        options["choices"] = choices
    elif (kind := _scalar_type(field.annotation)) is not None:
        options["type"] = kind
    # A field whose default is None says in its description what None means.
    suffix = "" if default is None else f" (default: {default})"
    options["help"] = f"{field.description}{suffix}".replace("%", "%%")
    options.update(overrides)
    return parser.add_argument("--" + name.replace("_", "-"), *aliases, **options)


def add_load_options(parser: argparse.ArgumentParser) -> None:
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


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The loading options, every embedder option
    ([`MODEL_OPTIONS`][kv_embeddings_integrations.cli.options.MODEL_OPTIONS]) and where the model
    goes."""
    add_load_options(parser)
    for name in MODEL_OPTIONS:
        overrides = {"type": parse_layers, "metavar": "auto|none|10,11,12"} if name == "layers" else {}
        add_field_option(parser, EmbedderConfig, name, **overrides)
    parser.add_argument(
        "--postprocess-texts",
        type=Path,
        default=None,
        metavar="FILE",
        help="texts (.txt or .jsonl 'text') to fit --postprocess on, e.g. a sample of your corpus "
        "(default: the built-in calibration texts)",
    )
    parser.add_argument(
        "--lexical-texts",
        type=Path,
        default=None,
        metavar="FILE",
        help="texts (.txt or .jsonl 'text') to count --lexical's statistics on (IDF, mean length), e.g. a sample "
        "of your corpus (default: the built-in calibration texts)",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="NAME=TEMPLATE",
        help="a named prompt template with {text} (repeatable): document / query replace the method's, other names "
        "are picked with --prompt-name",
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


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that embed a corpus."""
    parser.add_argument(
        "--prompt-name",
        "--prompt-type",
        dest="prompt_type",
        default="document",
        metavar="NAME",
        help="the prompt the texts get: document (default), query, a --prompt NAME, or another provider's name "
        "for a side (search_query, passage, ...)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="output precision (the array's or column's type): float32, float16, int8 / uint8 (ranges fitted on the "
        "calibration texts), binary / ubinary (sign bits packed 8 to a byte) (default: float32)",
    )
    add_field_option(parser, EmbedderConfig, "max_tokens_per_batch")
    parser.add_argument("--no-normalize", action="store_true", help="keep raw (unnormalised) vectors")


def _entries(raw: str, variable: str) -> list[str]:
    if not raw.lstrip().startswith("{"):
        return [raw]
    try:
        entries = json.loads(raw)
    except ValueError as e:
        raise CLIError(f"${variable} is not a JSON object of NAME: TEMPLATE ({e})") from None
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise CLIError(f"${variable} must be a JSON object of NAME: TEMPLATE strings")
    return [f"{name}={template}" for name, template in entries.items()]


def environment_defaults(parser: argparse.ArgumentParser, prefix: str) -> None:
    """Each ``--some-option`` of ``parser`` takes its default from ``$<prefix>SOME_OPTION`` when
    that is set: a flag still wins, then the variable, then the built-in default. A value the flag
    would refuse is refused here too, naming the variable."""
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
        if isinstance(action, argparse._AppendAction):
            # --prompt: one NAME=TEMPLATE, or several as a JSON object; flags add to them.
            action.default = _entries(raw, variable)
            continue
        try:
            value = action.type(raw) if callable(action.type) else raw
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise CLIError(f"${variable}={raw!r} is not a valid {action.option_strings[0]}: {e}") from None
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise CLIError(f"${variable}={raw!r}: {action.option_strings[0]} takes one of {choices}")
        action.default = value


def embedder_config(args: argparse.Namespace, *names: str) -> EmbedderConfig:
    """The embedder options given on the command line (and ``names`` where set), validated."""
    options = {name: getattr(args, name) for name in MODEL_OPTIONS}
    if getattr(args, "postprocess_texts", None) is not None:
        options["postprocess_texts"] = read_texts(args.postprocess_texts, "text")
    if getattr(args, "lexical_texts", None) is not None:
        options["lexical_texts"] = read_texts(args.lexical_texts, "text")
    if getattr(args, "prompt", None):
        options["prompts"] = parse_prompts(args.prompt)
    for name in names:
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    try:
        config = EmbedderConfig(**options)
        if hasattr(args, "prompt_type"):
            check_prompt_name(args.prompt_type, config.prompts, "--prompt-name")
        if getattr(args, "precision", "float32") != "float32":
            check_output(args.precision, not getattr(args, "no_normalize", False), True)
        return config
    except ValueError as e:
        raise CLIError(str(e)) from None


def load_options(args: argparse.Namespace, **changes: Any) -> LoadOptions:
    """How to load ``--model``: the command line's loading options (and ``changes``), validated."""
    options = {"model": args.model, "device": args.device, "dtype": args.dtype}
    options |= {"revision": args.revision, "trust_remote_code": args.trust_remote_code}
    options["device_map"] = getattr(args, "device_map", None)
    try:
        return LoadOptions(**{**options, **changes})
    except ValueError as e:
        raise CLIError(f"cannot load model {args.model!r}: {e}") from None


def load_embedder(args: argparse.Namespace) -> KVEmbedder:
    """The embedder the command line describes, loaded (one CPU copy for ``--devices`` replicas)."""
    import torch

    from ..core.embedder import KVEmbedder
    from ..core.model.loading import resolve_dtype

    config = embedder_config(args, "batch_size", "max_tokens_per_batch")
    changes: dict[str, Any] = {}
    if getattr(args, "devices", None):
        # Replicas for --devices are made from a CPU copy, in the dtype the replicas' devices want.
        try:
            first = torch.device(args.devices[0])
        except RuntimeError as e:
            raise CLIError(f"--devices: {e}") from None
        changes = {"device": "cpu", "dtype": args.dtype or resolve_dtype(None, first)}
    options = load_options(args, **changes)
    try:
        return KVEmbedder.from_pretrained(options, config=config)
    except (OSError, ModuleNotFoundError, ValueError) as e:
        # Missing bundled package, unknown model or directory, bad option: one clear line.
        raise CLIError(f"cannot load model {args.model!r}: {e}") from None
