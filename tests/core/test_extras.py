"""The optional-dependency registry (``core/extras.py``): every extra it names is declared in
pyproject.toml, and a missing one is named with the feature and its install command."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import tomllib
from helpers import REPO_ROOT

from kv_embeddings_integrations.core import extras


def test_every_registered_extra_exists_in_pyproject():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    declared = pyproject["project"]["optional-dependencies"]
    for name, extra in extras.EXTRAS.items():
        assert name in declared, name
        assert extra.install_command == f"pip install 'kv-embeddings-integrations[{name}]'"


def test_a_missing_extra_names_the_feature_and_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    with pytest.raises(extras.MissingExtraError) as caught:
        extras.require("eval", "kv-embed eval")
    assert str(caught.value) == "kv-embed eval needs scipy:  pip install 'kv-embeddings-integrations[eval]'"
    assert isinstance(caught.value, ModuleNotFoundError)
    extras.require("eval", "only sklearn", ("sklearn",))  # present: no error
