#!/usr/bin/env bash
# Every CPU figure in benchmarks/README.md, one benchmark after another (never two at once: they
# would share the cores). Outputs go to benchmarks/results/cpu/. About 75 minutes on 2 cores.
# Run a subset by name: benchmarks/run_cpu.sh throughput memory
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=benchmarks/results/cpu
mkdir -p "$OUT"
WANT="$*"
run() {
    local name=$1; shift
    if [ -z "$WANT" ] || [[ " $WANT " == *" $name "* ]]; then
        echo "== $name: $*"
        "$PY" "$@" 2>/dev/null | tee "$OUT/$name.txt"
    fi
}
run overhead benchmarks/bench_overhead.py --repeats 5
run overhead-3-layers benchmarks/bench_overhead.py --repeats 5 --layers 10,11,12
run overhead-qwen3-4b-shape benchmarks/bench_overhead.py --model random:qwen3-4b --dtype bfloat16 --lengths 512 2048 --repeats 3
run throughput benchmarks/bench_throughput.py --docs 128 --repeats 2
run concurrency benchmarks/bench_concurrency.py --requests 64 --repeats 3
run concurrency-bf16 benchmarks/bench_concurrency.py --requests 64 --repeats 3 --dtype bfloat16
run memory benchmarks/bench_memory.py --docs 256 --budgets 2048 8192 32768
run pool benchmarks/bench_pool.py --devices cpu cpu --docs 128 --repeats 2
run ray benchmarks/bench_ray.py --actors 1 2 --batch-size 128
run stores benchmarks/bench_stores.py --docs 500
run first-run benchmarks/bench_first_run.py --runs 2 --without-shipped
