# Two commands do all set-up: `make demo` and `make test` (each installs into .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; override e.g. TORCH_SPEC="torch" to let pip choose a CUDA build.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install demo test test-fast test-min lint docs bench notebooks clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/python -m aligner_chains.cli demo

# Everything (CI runs this): notebooks and slow tests included.
test: install
	@echo "make test: ruff, then the whole suite: about 6 minutes on 2 CPU cores (make test-fast skips the slow part)"
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The quick loop while editing: no notebooks, no tests marked slow (pyproject.toml registers the markers).
test-fast: install
	@echo "make test-fast: the suite without the notebooks and the tests marked slow"
	$(BIN)/python -m pytest -q -m "not slow and not notebook"

# The dependency floors: a fresh .venv-min with exactly requirements-min.txt (the floors of pyproject.toml)
# runs the core, LangChain and LlamaIndex tests. torch is the exception: it stays the CPU build on this
# machine's disk, since any other build (its floor, 2.6, included) downloads GBs of CUDA wheels; where
# that is fine, `make test-min MIN_TORCH_SPEC=torch==2.6.0` tries the floor.
MIN_VENV ?= .venv-min
MIN_TORCH_SPEC ?= torch==2.13.0
# Test tools and the serve stack (the remote backend's tests run a server); not floors, pip picks them.
MIN_TEST_TOOLS := pytest pytest-asyncio langchain-tests fastapi uvicorn httpx prometheus-client
# The core, LangChain and LlamaIndex tests, and fine-tuning (on accelerate, so its floor is run too).
MIN_TESTS := tests/test_aligner.py tests/test_loading.py tests/test_speculative.py tests/test_drafting.py \
	tests/test_micro_batching.py \
	tests/test_templates.py tests/test_remote_backend.py \
	tests/test_langchain_runnable.py tests/test_langchain_chat_model.py tests/test_langchain_question.py \
	tests/test_langchain_middleware.py \
	tests/test_llama_index_postprocessor.py tests/test_llama_index_query_engine.py \
	tests/test_llama_index_workflow.py tests/test_llama_index_instrumentation.py \
	tests/test_finetune.py

test-min: $(MIN_VENV)/.installed
	$(MIN_VENV)/bin/python -m pytest -q $(MIN_TESTS)

$(MIN_VENV)/.installed: pyproject.toml requirements-min.txt
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/pip install --quiet "$(MIN_TORCH_SPEC)"
	$(MIN_VENV)/bin/pip install --quiet -c requirements-min.txt -e ".[langchain,lora]" $(MIN_TEST_TOOLS)
	$(MIN_VENV)/bin/pip check
	touch $@

# The documentation site (MkDocs Material + mkdocstrings, the `docs` extra) into site/, warnings as errors.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

$(VENV)/.docs-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Figures go to a new benchmarks/results-<UTC date-time>.md (git-ignored); `make bench UPDATE=1` rewrites the
# committed benchmarks/RESULTS.md instead. `python -m benchmarks.<name>` alone updates its RESULTS.md section.
bench: install
	$(BIN)/python -m benchmarks.run $(if $(UPDATE),--update)

# Re-run cookbook/0*.ipynb with the shipped demo Aligner and store their outputs in place (each in a temporary
# working directory; nothing else is written). `make notebooks NB=05` refreshes one. About 2 minutes on 2 CPU cores.
notebooks: install
	$(BIN)/python -m cookbook.refresh $(NB)

clean:
	rm -rf $(VENV) $(MIN_VENV) build dist .pytest_cache
