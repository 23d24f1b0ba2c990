"""Fixtures over the helpers in helpers.py (tiny models, a tokenizer, an isolated cache)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import FAMILIES, make_tokenizer, tiny_model_dir
from transformers import PreTrainedTokenizerFast

# Under pytest-xdist (`make test` runs `pytest -n 2`) each worker takes its share of the cores, it and
# the processes it starts (servers, CLI runs): two workers with all-core thread pools oversubscribe
# the CPU, and their spinning threads made the suite slower than one worker (466 s against 374 s).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)

# `import mteb` (by the mteb and evaluation tests) creates its result cache, $MTEB_CACHE or else
# ~/.cache/mteb, at import time: keep it out of the user's home.
_MTEB_HOME = tempfile.mkdtemp(prefix="mteb-home-")
atexit.register(shutil.rmtree, _MTEB_HOME, True)
os.environ.setdefault("MTEB_CACHE", _MTEB_HOME)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return Path(tiny_model_dir())


@pytest.fixture(autouse=True)
def _isolated_cache(request, monkeypatch, tmp_path_factory):
    """Tests never write the user's cache, except the slow ones that use the real bundled model."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("KV_EMBED_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# --cpu-load N: N processes spin on the CPU for the whole session (bounded: each stops by itself
# after an hour at most, and all are killed when the session ends), so the tests run on a machine
# as loaded as CI's busiest. `make test-stress` runs the timing-sensitive tests (marker `timing`)
# this way; `pytest --cpu-load 2` runs any selection so.
_SPIN = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end:\n    pass\n"


def pytest_addoption(parser):
    parser.addoption(
        "--cpu-load",
        type=int,
        default=0,
        metavar="N",
        help="run the tests while N background processes keep N cores busy (0: none)",
    )


def pytest_configure(config):
    count = config.getoption("--cpu-load")
    if count < 0:
        raise pytest.UsageError(f"--cpu-load must be >= 0, got {count}")
    if count:
        # Ray starts its workers at niceness 15, so spinners at 0 would starve them for minutes:
        # under load they compete on equal terms, like every other process of the tests.
        os.environ.setdefault("RAY_worker_niceness", "0")
    # Only the main process spins up the load, not each pytest-xdist worker again.
    spinners = count if not hasattr(config, "workerinput") else 0
    config._cpu_load = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(spinners)]


def pytest_report_header(config):
    lines = [
        f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores"
    ]
    if count := config.getoption("--cpu-load"):
        lines.append(f"cpu load: {count} spinning processes")
    return lines


def pytest_unconfigure(config):
    for process in getattr(config, "_cpu_load", []):
        process.kill()
        process.wait()


def pytest_collection_modifyitems(config, items):
    # `make test` hands whole files to 2 workers (pytest-xdist, --dist loadfile), in this order:
    # the files holding real-model (slow) or Ray tests first, so a long one never starts last.
    heavy = {item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("ray")}
    items.sort(key=lambda item: item.path not in heavy)
