"""The first load of a bundled model in a fresh user cache: what a newcomer waits for.

Each run is a new Python process with an empty cache (``$KV_EMBED_CACHE`` in a temporary
folder), so nothing converted or cached earlier is reused; it reports the import, the GGUF
conversion, and the whole first ``from_pretrained`` (conversion, load, layer choice, centering),
then a second ``from_pretrained`` in the same cache.

    python benchmarks/bench_first_run.py [--model smollm2-135m] [--runs 3] [--without-shipped]

``--without-shipped`` also times the first load with the shipped layer choice and centering
ignored (``KV_EMBED_SHIPPED=0``): what every first load cost before they were shipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from common import machine

_CHILD = """
import json, sys, time
started = time.perf_counter()
from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.model.bundled import bundled_model_dir
imported = time.perf_counter()
bundled_model_dir(sys.argv[1])
converted = time.perf_counter()
KVEmbedder.from_pretrained(sys.argv[1])  # reads the converted model: its load, layers, centering
first = time.perf_counter()
embedder = KVEmbedder.from_pretrained(sys.argv[1])
second = time.perf_counter()
print(json.dumps({"import": imported - started, "convert": converted - imported,
                  "first_from_pretrained": first - imported, "second_from_pretrained": second - first,
                  "origin": embedder.layer_selection.origin if embedder.layer_selection else None}))
"""


def _run(model: str, shipped: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="kv-first-run-") as cache:
        env = {**os.environ, "KV_EMBED_CACHE": cache, "KV_EMBED_SHIPPED": "1" if shipped else "0"}
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, model], capture_output=True, text=True, env=env, check=True
        )
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--without-shipped", action="store_true")
    args = parser.parse_args()
    print(machine())
    for shipped in (True, False) if args.without_shipped else (True,):
        runs = [_run(args.model, shipped) for _ in range(args.runs)]
        label = "shipped results" if shipped else "shipped results ignored"
        print(f"{args.model}, fresh cache, {label} (layers: {runs[0]['origin']}); median of {len(runs)} runs:")
        for name in ("import", "convert", "first_from_pretrained", "second_from_pretrained"):
            values = [r[name] for r in runs]
            print(f"  {name:<24} {statistics.median(values):6.1f} s  (min {min(values):.1f}, max {max(values):.1f})")
        print("  (first_from_pretrained includes convert; the conversion is timed once, by itself, first)")


if __name__ == "__main__":
    main()
