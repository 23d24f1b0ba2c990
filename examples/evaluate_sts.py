"""STS evaluation: Spearman (x100) of cosine similarity against gold scores, per method.

Reads the STS-B format (tab-separated: gold score in column 5, sentences in columns 6 and 7,
0-based 4-6; extra trailing columns ignored). Needs scipy (``pip install -e .[eval]``).

    python examples/evaluate_sts.py ../shared/evaldata/stsbenchmark/sts-dev.csv \
        --model smollm2-135m --methods kv,prompt,prompteol,mean,last --layer-sets "auto;10,11,12,13"
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from kv_embeddings_integrations import DEFAULT_MODEL, KVEmbedder


def read_stsb(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    first, second, gold = [], [], []
    with path.open(encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            gold.append(float(row[4]))
            first.append(row[5])
            second.append(row[6])
    return first, second, np.asarray(gold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--methods", default="kv,prompt,prompteol,echo,mean,last")
    parser.add_argument(
        "--layer-sets",
        default="auto",
        help="';'-separated layer sets for kv, each 'auto' or e.g. '10,11,12' (default: auto)",
    )
    parser.add_argument("--bias", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    first, second, gold = read_stsb(args.path)
    print(
        f"{args.path}: {len(gold)} pairs; model {args.model}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    base = KVEmbedder.from_pretrained(args.model, layers=None)
    layer_sets = [s if s == "auto" else [int(x) for x in s.split(",")] for s in args.layer_sets.split(";")]
    runs = [(m, layers) for m in args.methods.split(",") for layers in (layer_sets if m == "kv" else ["auto"])]
    results = []
    for method, layers in runs:
        # One model load, many methods: each embedder wraps the same model object.
        embedder = KVEmbedder(base.model, base.tokenizer, name=args.model, method=method, layers=layers, bias=args.bias)
        start = time.perf_counter()
        a = embedder.encode(first)
        b = embedder.encode(second)
        seconds = time.perf_counter() - start
        score = 100 * spearmanr((a * b).sum(axis=1), gold).statistic
        results.append(
            {"method": method, "layers": embedder.layers, "spearman": round(score, 2), "seconds": round(seconds, 1)}
        )
        texts = 2 * len(gold)
        print(f"{method:10s} layers={embedder.layers}  Spearman x100 = {score:6.2f}   ({texts} texts, {seconds:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
