"""The serving tests' harness: ``kv-embed serve`` as a real server process on 127.0.0.1, and what
the tests send it (the fixtures that start servers are in conftest.py)."""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
from helpers import EXIT_TIMEOUT, HANG, TESTS_DIR

KEY = "test-key-123"
NAME = "tiny-kv"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
DOCS = [
    "The mitochondria is the powerhouse of the cell.",
    "Paris is the capital and largest city of France.",
    "Python lists are mutable sequences of objects.",
    "The stock market fell sharply on Tuesday.",
    "Photosynthesis turns light into chemical energy in plants.",
    "A binary search halves the interval at every step.",
]
QUERY = "Which organelle makes energy for the cell?"
# The tiny model's options on both sides (server and in-process): re-routed layers fixed, the
# default prompts and centering otherwise.
LAYERS = "1,2"
# A named prompt of the main server's (``--prompt``), picked by input_type / prompt_name.
PROMPTS = {"topic": "The topic of: {text}"}
GATED_SERVE = str(TESTS_DIR / "gated_serve.py")
# Every call waits for its answer (a loaded machine is slow); only a hang reaches the limit.
post = functools.partial(httpx.post, timeout=HANG)
get = functools.partial(httpx.get, timeout=HANG)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``kv-embed serve`` in a child process, ready when ``/ready`` answers 200.

    ``gated=True`` starts it through ``gated_serve.py``: every coalesced forward pass then waits
    for the test ([`next_pass`][tests.serving.server_harness.Server.next_pass] says one has started
    and how many texts it holds, [`step`][tests.serving.server_harness.Server.step] runs it,
    [`open`][tests.serving.server_harness.Server.open] runs every pass from then on).
    """

    def __init__(
        self, model: str, *extra: str, env: dict[str, str], api_key: str | None = KEY, gated: bool = False
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        entry = [GATED_SERVE] if gated else ["-m", "kv_embeddings_integrations.cli"]
        command = [sys.executable, *entry, "serve", "--model", model]
        command += ["--port", str(self.port), "--served-model-name", NAME, *extra]
        full_env = {**os.environ, **env}
        if api_key is not None:
            full_env["KV_EMBED_API_KEY"] = api_key  # from the environment, as the README says
        self.gated = gated
        self.passes: queue.Queue[int] = queue.Queue()
        pass_fds: tuple[int, ...] = ()
        if gated:
            read_end, write_end = os.pipe()
            full_env["KV_TEST_PASS_FD"] = str(write_end)
            pass_fds = (write_end,)
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed by stop())
        self.process = subprocess.Popen(
            command,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if gated else None,
            pass_fds=pass_fds,
            text=True,
        )
        if gated:
            os.close(write_end)
            threading.Thread(target=self._read_passes, args=(read_end,), daemon=True).start()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in time:\n{self.output()}")

    def _read_passes(self, fd: int) -> None:
        with os.fdopen(fd) as lines:
            for line in lines:
                self.passes.put(int(line))

    def next_pass(self) -> int:
        """Wait until the next coalesced pass has started (and is held); its number of texts."""
        try:
            return self.passes.get(timeout=HANG)
        except queue.Empty:
            raise AssertionError(f"no forward pass started within {HANG} s:\n{self.output()}") from None

    def _tell(self, word: str) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):  # the server has already gone
            self.process.stdin.write(word + "\n")
            self.process.stdin.flush()

    def step(self) -> None:
        """Run the held pass."""
        self._tell("step")

    def open(self) -> None:
        """Run the held pass, if any, and every later one without holding it."""
        self._tell("open")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def metric(self, name: str) -> float:
        text = get(f"{self.url}/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> int:
        if self.gated:
            self.open()  # a held pass would keep the graceful shutdown waiting
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def stopped_gracefully(self) -> bool:
        """Exited after uvicorn's graceful shutdown: status 0, or SIGTERM re-raised once it finished
        (what uvicorn does, so a supervisor sees the signal)."""
        return self.stop() in (0, -signal.SIGTERM) and "Finished server process" in self.output()


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def ranking(query_vector, doc_vectors) -> list[int]:
    return list(np.argsort(-(np.asarray(doc_vectors) @ np.asarray(query_vector)), kind="stable"))


def cosine(a, b) -> float:
    return float(cosines([a], [b])[0])
