"""The serving tests' servers: one of each kind per test session (per xdist worker), shared by
the test files that split the server's contracts (OpenAI's routes, TEI's, errors, lifecycle)."""

from __future__ import annotations

import pytest
from helpers import tied_model_dir
from server_harness import LAYERS, PROMPTS, Server

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.serving.token_ids import seed_tiktoken_cache


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict[str, str]:
    # The autouse fixture's isolated cache (shared with in-process embedders, so centering is fitted
    # once) and a private tiktoken cache.
    base = tmp_path_factory.getbasetemp()
    return {"KV_EMBED_CACHE": str(base / "cache"), "TIKTOKEN_CACHE_DIR": str(base / "tiktoken")}


@pytest.fixture(scope="session")
def server(model_dir, env):
    prompt = "topic=" + PROMPTS["topic"]
    server = Server(str(model_dir), "--layers", LAYERS, "--max-length", "256", "--prompt", prompt, env=env)
    yield server
    assert server.stopped_gracefully(), server.output()


@pytest.fixture(scope="session")
def strict(model_dir, env):
    """Small limits, to reach every refusal cheaply."""
    limits = ["--max-client-batch-size", "4", "--max-request-bytes", "20000", "--max-concurrent-requests", "2"]
    server = Server(str(model_dir), "--layers", LAYERS, "--postprocess", "none", "--lexical", "none", *limits, env=env)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gated(model_dir, env):
    """Every forward pass held until the test runs it; at most 2 requests admitted at once."""
    server = Server(
        str(model_dir), "--layers", LAYERS, "--postprocess", "none", "--max-concurrent-requests", "2",
        env=env, gated=True,
    )  # fmt: skip
    yield server
    assert server.stopped_gracefully(), server.output()


@pytest.fixture
def local(model_dir, env, monkeypatch):
    monkeypatch.setenv("KV_EMBED_CACHE", env["KV_EMBED_CACHE"])
    return KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], max_length=256, prompts=PROMPTS)


@pytest.fixture
def tiktoken_cache(env, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", env["TIKTOKEN_CACHE_DIR"])
    assert seed_tiktoken_cache()


@pytest.fixture(scope="session")
def sparse_server(env):
    """A model whose LM head survives a base-model load (tied word embeddings)."""
    server = Server(tied_model_dir(), "--method", "kv", "--layers", "1", "--postprocess", "none", env=env)
    yield server
    server.stop()
