"""``kv-embed select-layers``: the layers to re-route, picked by the intrinsic dimension of each
layer's last-token states; prints the curve and optionally draws it (matplotlib, imported
lazily)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.config import EmbedderConfig
from ..core.extras import MissingExtraError, require
from ..core.model.loading import LoadOptions
from .errors import CLIError
from .inputs import read_texts
from .options import add_field_option, add_load_options, load_options

if TYPE_CHECKING:
    from ..core.fitting.layer_selection import LayerSelection

NAME = "select-layers"
HELP = "pick the layers to re-route by intrinsic dimension"


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``kv-embed select-layers``."""
    add_load_options(parser)
    parser.add_argument(
        "--texts", type=Path, default=None, help="calibration texts (.txt or .jsonl); default: built-in"
    )
    parser.add_argument("--text-field", default="text", help="field holding the text in .jsonl input (default: text)")
    parser.add_argument("--plot", type=Path, default=None, help="draw the ID curve to this PNG (needs matplotlib)")
    parser.add_argument("--skip-fraction", type=float, default=None, help="early layers never chosen (default 0.2)")
    parser.add_argument("--window", type=int, default=None, help="layers after the minimum (default floor(L/10))")
    parser.add_argument("--recompute", action="store_true", help="ignore a cached selection and refresh it")
    # The selection depends on the prompt measured and the layer pooled.
    add_field_option(parser, EmbedderConfig, "method")
    add_field_option(parser, EmbedderConfig, "prompt_family")
    add_field_option(parser, EmbedderConfig, "output_layer")
    add_field_option(parser, LoadOptions, "device")
    add_field_option(parser, LoadOptions, "dtype")


def run(args: argparse.Namespace) -> None:
    """Select the layers (or read the cached selection) and print the curve."""
    from ..core.embedder import KVEmbedder
    from ..core.fitting.layer_selection import auto_select_layers

    texts = read_texts(args.texts, args.text_field) if args.texts is not None else None
    if args.plot is not None:
        try:
            require("plot", "kv-embed select-layers --plot")
        except MissingExtraError as e:
            raise CLIError(str(e)) from None
    rule = {k: v for k, v in (("skip_fraction", args.skip_fraction), ("window", args.window)) if v is not None}
    model = load_options(args)
    try:
        # Load without re-routing, then select explicitly (so --recompute and the rule options apply).
        config = EmbedderConfig(
            method=args.method, prompt_family=args.prompt_family, output_layer=args.output_layer, layers=None
        )
        embedder = KVEmbedder.from_pretrained(model, config=config)
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


def _plot(selection: LayerSelection, model: str, path: Path) -> None:
    """Draw the intrinsic dimension per layer, the re-routed window and the skipped layers to a PNG."""
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
