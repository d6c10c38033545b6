PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check dockerflow tests benchmarks examples docs
	$(BIN)/ruff format --check dockerflow tests benchmarks examples docs

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

demo: $(STAMP)
	@echo "Serving the demo on http://localhost:$(PORT)/ (logs: mozlog JSON on stdout)" >&2
	@PORT=$(PORT) $(BIN)/gunicorn -c examples/gunicorn.conf.py 'examples.demo.app:create_app()'

.PHONY: docs
docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -b html docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
