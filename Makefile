# Set-up and the two everyday commands. Each creates .venv and installs what it needs on first use.
#   make demo TORCH='torch==2.13.0'   the whole pipeline on the embedded MNIST digits
#   make test TORCH='torch==2.13.0'   lint + the whole test suite + the docs site built with --strict
#   make docs                         the documentation site into site/ (make docs-serve: live on 127.0.0.1:8000)
# TORCH is the torch requirement to install first (a CPU pin here, your CUDA build elsewhere).
PYTHON ?= python3
TORCH ?= torch>=2.2
VENV ?= .venv
RUN ?= runs/demo
PRIOR ?= transformer
BIN := $(VENV)/bin

.PHONY: demo test lint docs docs-serve bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,docs]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python cli.py tokenize --run $(RUN) --overwrite
	$(BIN)/python cli.py train-prior --prior $(PRIOR) --codes $(RUN)/codes --overwrite
	$(BIN)/python cli.py generate --prior $(RUN)/prior-$(PRIOR) --n 100 --overwrite
	$(BIN)/python cli.py report $(RUN)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint docs
	$(BIN)/python -m pytest

# `python -m mkdocs`, not .venv/bin/mkdocs: the script's folder on sys.path holds the `vqgen` script, which
# mkdocstrings would take for the package.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet

docs-serve: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs serve

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) runs site .pytest_cache
