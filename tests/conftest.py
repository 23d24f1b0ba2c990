"""Fixtures over the helpers in helpers.py (tiny models, a tokenizer, an isolated cache)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import FAMILIES, make_tokenizer, tiny_model_dir
from transformers import PreTrainedTokenizerFast

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
        monkeypatch.setenv("KV_EMBEDDINGS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
