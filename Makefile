PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench clean compat

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

# python-dockerflow's own tests (tests/core and tests/flask of its sdist), run unmodified against
# our installed package. The sdist is fetched with pip into build/compat/ and only its tests/ is
# unpacked, so the only importable `dockerflow` is ours. `-c` names an empty config: neither
# their pytest.ini (coverage options) nor ours (filterwarnings = error) applies to their tests.
COMPAT_VERSION := 2026.3.4
COMPAT_DIR := build/compat
COMPAT_SDIST := $(COMPAT_DIR)/dockerflow-$(COMPAT_VERSION).tar.gz
COMPAT_TESTS := $(COMPAT_DIR)/python-dockerflow-$(COMPAT_VERSION)
# Deliberate differences, each explained in docs/migrating.rst.
COMPAT_DESELECT := \
	--deselect tests/flask/test_flask.py::test_error_returns_500_and_logs_error

$(COMPAT_SDIST): | $(BIN)/python
	mkdir -p $(COMPAT_DIR)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: \
		--dest $(COMPAT_DIR) dockerflow==$(COMPAT_VERSION)

$(COMPAT_TESTS)/tests: $(COMPAT_SDIST)
	rm -rf $(COMPAT_TESTS) && mkdir -p $(COMPAT_TESTS)
	tar -xzf $(COMPAT_SDIST) -C $(COMPAT_TESTS) --strip-components=1 \
		dockerflow-$(COMPAT_VERSION)/tests
	touch $@

compat: $(STAMP) $(COMPAT_TESTS)/tests
	cd $(COMPAT_TESTS) && touch compat.ini && $(abspath $(BIN))/python -m pytest \
		-c compat.ini --rootdir . -p no:cacheprovider --timeout 120 -q \
		$(COMPAT_DESELECT) tests/core tests/flask

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
