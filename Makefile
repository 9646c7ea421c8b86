# Two commands do all the set-up on a fresh machine (Python 3.10+ and make):
#   make demo   virtual environment + package + the whole workflow on generated data
#   make test   virtual environment + lint + the test suite
#   make test-fast   lint + the quick tests (no slow ones), under 2 minutes
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := artifacts/demo

.PHONY: venv demo test test-fast lint notebook

$(BIN)/activate: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/activate

venv: $(BIN)/activate

lint: venv
	$(BIN)/ruff check vesselseg benchmarks experiments tests

# Two workers (the machine's two cores), one test file per worker at a time: about 11 minutes
# instead of 20 on a 2-core CPU; module fixtures are built once per file.
test: venv lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: venv lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

demo: venv
	$(BIN)/python -m vesselseg.demo --out $(DEMO)

# Execute the walkthrough in place, so that it is committed with its outputs and figures
# (tests/test_notebook.py executes a copy of it too).
notebook: venv
	$(BIN)/python notebooks/execute.py
