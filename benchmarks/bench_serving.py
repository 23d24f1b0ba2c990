"""HTTP serving: concurrent clients against ``kv-embed serve`` vs the same requests one at a time,
and vs ``KVEmbedder`` in-process (the HTTP overhead). Real SciFact queries and documents, one text
per request unless ``--texts-per-request`` says otherwise; errors counted; vectors compared.

    python benchmarks/bench_serving.py                                       # bundled SmolLM2, CPU
    python benchmarks/bench_serving.py --model random:qwen3-4b --dtype bfloat16 --device cuda \\
        --tokenizer .gpu/tokenizer --data .gpu/scifact
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
from common import DEFAULT_SCIFACT, ROOT, machine, markdown_table, scifact_documents

from kv_embeddings_integrations import KVEmbedder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, model: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "kv_embeddings_integrations.cli", "serve", "--model", model, "--port", str(port)]
    command += ["--served-model-name", "bench", "--dtype", args.dtype, "--device", args.device, "--method", args.method]
    command += ["--max-concurrent-requests", str(4 * args.concurrency), "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.stderr.read()}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("server not ready in time")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


async def run_requests(url: str, bodies: list[dict], concurrency: int, timeout: float):
    """Send ``bodies`` with at most ``concurrency`` in flight; returns (wall s, latencies, vectors, errors)."""
    latencies, vectors, errors = [0.0] * len(bodies), [None] * len(bodies), []
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:

        async def one(i: int, body: dict) -> None:
            async with semaphore:
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/embeddings", json=body)
                except httpx.HTTPError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    return
                latencies[i] = time.perf_counter() - started
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    return
                vectors[i] = [d["embedding"] for d in response.json()["data"]]

        started = time.perf_counter()
        await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
        wall = time.perf_counter() - started
    return wall, latencies, vectors, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="bundled alias, path, or random:<shape>")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", default="kv_pcot")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64, help="clients with a request in flight at once")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300, help="seconds one request may take")
    parser.add_argument("--data", default=str(DEFAULT_SCIFACT), help="BEIR folder (queries.jsonl, corpus.jsonl)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory for random:<shape>")
    args = parser.parse_args()

    with open(f"{args.data}/queries.jsonl", encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line in f]
    texts = (queries + scifact_documents(args.data, limit=args.requests))[: args.requests * args.texts_per_request]
    bodies = [
        {"model": "bench", "input": texts[i : i + args.texts_per_request]}
        for i in range(0, len(texts), args.texts_per_request)
    ]
    model = args.model
    if model.startswith("random:"):
        # The server loads a directory: save the random backbone once.
        import torch
        from models import load_backbone

        backbone, tokenizer, _ = load_backbone(model, getattr(torch, args.dtype), args.device, tokenizer=args.tokenizer)
        model = tempfile.mkdtemp(prefix="random-backbone-")
        backbone.save_pretrained(model)
        tokenizer.save_pretrained(model)
        del backbone
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    process, url = start_server(args, model)
    try:
        # Warm-up, then one at a time, then concurrent.
        asyncio.run(run_requests(url, bodies[:4], 1, args.timeout))
        sequential = asyncio.run(run_requests(url, bodies, 1, args.timeout))
        concurrent = asyncio.run(run_requests(url, bodies, args.concurrency, args.timeout))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)

    local = KVEmbedder.from_pretrained(model, dtype=args.dtype, device=args.device, method=args.method)
    request_texts = [b["input"] for b in bodies]
    local.encode(request_texts[0])
    started = time.perf_counter()
    for batch in request_texts:
        local.encode(batch)
    in_process = time.perf_counter() - started

    async def gathered():
        return await asyncio.gather(*(local.aencode(batch) for batch in request_texts))

    started = time.perf_counter()
    local_vectors = asyncio.run(gathered())
    in_process_concurrent = time.perf_counter() - started

    n, n_texts = len(bodies), len(texts)
    rows = []
    for name, (wall, latencies, _, errors) in (("one at a time", sequential), ("concurrent", concurrent)):
        ok = [lat for lat in latencies if lat > 0]
        rows.append(
            [
                f"HTTP, {name}",
                f"{wall:.2f}",
                f"{n / wall:.1f}",
                f"{n_texts / wall:.1f}",
                f"{1000 * statistics.median(ok):.1f}",
                f"{1000 * percentile(ok, 99):.1f}",
                len(errors),
            ]
        )
    rows.append(["in-process encode, one at a time", f"{in_process:.2f}", f"{n / in_process:.1f}",
                 f"{n_texts / in_process:.1f}", "-", "-", 0])  # fmt: skip
    rows.append(["in-process aencode, all at once", f"{in_process_concurrent:.2f}", f"{n / in_process_concurrent:.1f}",
                 f"{n_texts / in_process_concurrent:.1f}", "-", "-", 0])  # fmt: skip
    got = [v for vs in concurrent[2] if vs is not None for v in vs]
    want = [v for vs in local_vectors for v in vs]
    cosines = [float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(got, want, strict=False)]

    print(f"machine: {machine()}")
    print(
        f"model: {args.model} ({args.dtype}, {args.device}, method {args.method}); {n} requests of "
        f"{args.texts_per_request} SciFact text(s); concurrency {args.concurrency}"
    )
    header = ["", "seconds", "requests/s", "texts/s", "p50 ms", "p99 ms", "errors"]
    print(markdown_table(header, rows))
    print(f"\nconcurrent / one at a time (requests/s): {sequential[0] / concurrent[0]:.2f}x")
    print(f"HTTP overhead per request, one at a time: {1000 * (sequential[0] - in_process) / n:.1f} ms")
    print(f"vectors, HTTP concurrent vs in-process: {len(cosines)} compared, min cosine {min(cosines):.6f}")
    for name, result in (("one at a time", sequential), ("concurrent", concurrent)):
        if result[3]:
            print(f"errors ({name}): {result[3][:5]}")


if __name__ == "__main__":
    main()
