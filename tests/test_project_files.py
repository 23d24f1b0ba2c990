"""The project's own files agree with each other: the locks satisfy the published ranges, the
pre-commit hooks run the locked ruff, and the version is written once."""

from __future__ import annotations

import importlib.metadata
import re
import sys

import pytest
from helpers import REPO_ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import kv_embeddings_integrations

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (mypy and pip-tools depend on it there)
    import tomli as tomllib

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
LOCKS = ("requirements/dev.txt", "requirements/demo.txt")


def _pins(path: str) -> dict[str, str]:
    """A lock's ``name==version`` lines, by canonical name (comments and options skipped)."""
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{path}: {line!r} is not an exact pin"
        pins[canonicalize_name(name)] = version.strip()
    return pins


def _published(extras: tuple[str, ...]) -> list[Requirement]:
    project = PYPROJECT["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return [Requirement(spec) for spec in specs]


@pytest.mark.parametrize("lock,extras", [(LOCKS[0], ("dev", "examples")), (LOCKS[1], ("examples",))])
def test_each_lock_pins_a_version_the_published_ranges_allow(lock, extras):
    pins = _pins(lock)
    for requirement in _published(extras):
        name = canonicalize_name(requirement.name)
        if name == "torch":
            assert name not in pins, "torch stays out of the locks: make installs its own build first"
            continue
        assert name in pins, f"{lock} lacks {requirement.name}: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {requirement.name}=={pins[name]}, outside the published {requirement}"
        )


def test_the_demo_lock_is_the_dev_lock_at_the_same_versions():
    dev, demo = _pins(LOCKS[0]), _pins(LOCKS[1])
    assert {name: version for name, version in demo.items() if dev.get(name) != version} == {}


def test_registry_limits_stay_out_of_the_published_metadata():
    # requirements/constraints.txt holds what one registry lacks; the published ranges say what the code needs.
    limited = {
        canonicalize_name(Requirement(line).name)
        for line in (REPO_ROOT / "requirements/constraints.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert "langchain-core" in limited
    for requirement in _published(tuple(PYPROJECT["project"]["optional-dependencies"])):
        if canonicalize_name(requirement.name) == "langchain-core":
            assert requirement.specifier.contains("1.8.4"), f"{requirement} holds users back"


def test_pre_commit_runs_the_locked_ruff():
    config = (REPO_ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8")
    hooked = set(re.findall(r'"ruff==([^"]+)"', config))
    assert hooked == {_pins(LOCKS[0])["ruff"]}


def test_the_version_is_written_once():
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert importlib.metadata.version("kv-embeddings-integrations") == kv_embeddings_integrations.__version__
