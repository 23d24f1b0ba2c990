"""``kv-embed serve`` against its own OpenAPI document: schemathesis reads the running server's
``/openapi.json`` and sends what it generates from it (the schema's examples, boundary and negative
cases, random valid bodies) to every operation, with every check it has: no 5xx, only the
documented status codes, content types and headers, response bodies that match their schemas,
schema-valid requests accepted and schema-invalid ones refused.

Deterministic: a fixed seed, a bounded number of cases per operation, one worker, no example
database (nothing replayed from an earlier run), no time budget and no timing health check; a
request's timeout is reached only when the server hangs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO

import httpx
import pytest
from helpers import EXIT_TIMEOUT, HANG

pytestmark = pytest.mark.timing

KEY = "conformance-key"
SEED = 20260501
# Cases per operation in the fuzzing phase (the coverage phase adds its own boundary and negative
# cases, a fixed set): about 1,400 requests over 20 operations, under 10 s on two cores.
MAX_EXAMPLES = 8
# negative_data_rejection's default statuses, and 413.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
CONFIG = f"[checks.negative_data_rejection]\nexpected-statuses = {json.dumps(REFUSALS)}\n"


@contextlib.contextmanager
def _serve(model: str, env: dict[str, str]) -> Iterator[tuple[str, IO[str]]]:
    """``kv-embed serve`` in a child process on a free port; its URL once ``/ready`` answers 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "kv_embeddings_integrations.cli", "serve", "--model", model]
    command += ["--port", str(port), "--served-model-name", "tiny-kv", "--layers", "1,2", "--max-length", "256"]
    # The schema's maxItems: the coverage phase sends a batch of exactly that many inputs (and one
    # more), which at the default 2048 takes minutes on two cores.
    command += ["--max-client-batch-size", "8"]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            command, env={**os.environ, **env, "KV_EMBED_API_KEY": KEY}, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.monotonic() + 240
            while True:
                assert process.poll() is None, f"server exited with {process.returncode}:\n{_read(log)}"
                assert time.monotonic() < deadline, f"server not ready in time:\n{_read(log)}"
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                        break
                time.sleep(0.2)
            yield url, log
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(EXIT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _read(log: IO[str]) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def test_the_server_conforms_to_its_own_openapi_document(model_dir, tmp_path):
    env = {"KV_EMBED_CACHE": str(tmp_path / "cache"), "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken")}
    config = tmp_path / "schemathesis.toml"
    # Written here, so no schemathesis.toml above the working directory applies. 413 is a refusal
    # too: the answer to more inputs than --max-client-batch-size (the schema's maxItems).
    config.write_text(CONFIG, encoding="utf-8")
    report = tmp_path / "report.json"
    with _serve(str(model_dir), env) as (url, log):
        command = [sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(config), "run"]
        # `--checks all` includes a response-time limit (10 s by default): only a hang may reach it.
        command += [f"{url}/openapi.json", "--checks", "all", "--max-response-time", str(HANG)]
        command += ["--header", f"Authorization: Bearer {KEY}"]
        command += ["--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "1"]
        # Nothing replayed from an earlier run's failures; the one health check that measures time off.
        command += ["--generation-database", "none", "--suppress-health-check", "too_slow"]
        command += ["--request-timeout", str(HANG), "--continue-on-failure"]
        # Field names such as add_special_tokens stay readable in the report (the key is a test's).
        command += ["--output-sanitize", "false", "--report", "json", "--report-json-path", str(report)]
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        output = f"$ {' '.join(command)}\n{run.stdout}{run.stderr}"
        server_log = "\n".join(_read(log).splitlines()[-40:])
        assert run.returncode == 0, f"{output}\n--- the server's last lines ---\n{server_log}"
    summary = json.loads(report.read_text(encoding="utf-8"))
    operations = summary["operations"]
    assert operations["tested"] == operations["selected"] == operations["total"] > 0, output
    assert summary["errors"] == [] and summary["test_cases"]["generated"] > 0, output
