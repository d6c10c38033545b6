PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo demo-static bench clean compat test-min test-pythons settings-table dist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check dockerflow tests benchmarks examples docs .ci
	$(BIN)/ruff format --check dockerflow tests benchmarks examples docs .ci

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

# The migrations are a step of their own before the server starts, never in the app factory.
demo: $(STAMP)
	$(BIN)/flask --app examples.demo.app:create_app db upgrade
	@echo "Serving the demo on http://localhost:$(PORT)/ (logs: mozlog JSON on stdout)" >&2
	@PORT=$(PORT) $(BIN)/gunicorn -c examples/gunicorn.conf.py 'examples.demo.app:create_app()'

# The demo's static files with content-hashed names (committed; tests/test_demo.py fails while stale).
demo-static: $(STAMP)
	$(BIN)/python -m examples.demo.static_build

.PHONY: docs
docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -b html docs docs/_build/html

# The settings table in docs/configuration.rst, generated from the code and committed;
# tests/test_settings_table.py fails while it is stale.
settings-table: $(STAMP)
	$(BIN)/python docs/_ext/settings_table.py

# python-dockerflow's own tests (tests/core and tests/flask of its sdist), run unmodified against
# our installed package. The sdist is fetched with pip into build/compat/ and only its tests/ is
# unpacked, so the only importable `dockerflow` is ours. `-c` names an empty config: neither
# their pytest.ini (coverage options) nor ours (filterwarnings = error) applies to their tests.
COMPAT_VERSION := 2026.3.4
COMPAT_DIR := build/compat
COMPAT_SDIST := $(COMPAT_DIR)/dockerflow-$(COMPAT_VERSION).tar.gz
COMPAT_TESTS := $(COMPAT_DIR)/python-dockerflow-$(COMPAT_VERSION)
# Deliberate differences, each explained in docs/migrating.rst (at most two).
COMPAT_DESELECT := \
	--deselect tests/flask/test_flask.py::test_error_returns_500_and_logs_error \
	--deselect tests/core/test_logging.py::test_JsonLogFormatter_emits_warning

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

# The suite against the lowest supported Flask, Werkzeug and Flask extensions, pinned by
# .ci/constraints-min.txt, in a venv of its own beside the main one (which has the newest).
MIN_VENV := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed

$(MIN_STAMP): pyproject.toml .ci/constraints-min.txt
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/python -m pip install --quiet -c .ci/constraints-min.txt -e '.[all,test]'
	touch $(MIN_STAMP)

# The suites of the other Pythons and of the lowest versions run one configuration of the
# drain's gunicorn matrix per worker class (tests/production/test_drain_gunicorn.py).
test-min: $(MIN_STAMP)
	$(MIN_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(flask|werkzeug)(-|\s)'
	DRAIN_TEST_MATRIX=diagonal $(MIN_VENV)/bin/pytest

# The suite on every other supported Python (the main venv has $(PYTHON)), each in a venv of its
# own. An interpreter is taken from ~/.pyenv/versions or PATH (python3.X), the first that runs; a
# missing one is an error, not a skip.
PYTHONS ?= 3.10 3.12 3.13
find_python = $(shell for p in $(HOME)/.pyenv/versions/$(1).*/bin/python $$(command -v python$(1)); do "$$p" -c '' 2>/dev/null && echo "$$p" && break; done)

.venv-py%/.installed: pyproject.toml
	@test -n "$(call find_python,$*)" || { echo "Python $* not found (PATH or ~/.pyenv)" >&2; exit 1; }
	rm -rf .venv-py$*
	$(call find_python,$*) -m venv .venv-py$*
	.venv-py$*/bin/python -m pip install --quiet --upgrade pip
	.venv-py$*/bin/python -m pip install --quiet -e '.[all,test,test-flask-sqlalchemy]'
	touch $@

test-py%: .venv-py%/.installed
	.venv-py$*/bin/python --version
	DRAIN_TEST_MATRIX=diagonal .venv-py$*/bin/pytest -q

test-pythons: $(foreach v,$(PYTHONS),test-py$(v))

# The distribution a user installs from an index: an sdist, and a wheel built from that sdist
# (python -m build's default), in dist/. twine check --strict checks them as PyPI would;
# .ci/check_dist.py checks their version against dockerflow.__version__, the sdist's files
# against the source files git tracks (tests/ and docs/ included, nothing generated or ignored),
# the wheel's (py.typed, LICENSE) and the classifiers against the trove list. Then the wheel is
# installed with the flask extra into a throwaway venv outside the checkout, so that only the
# installed copy is importable, and .ci/dist_smoke.py runs there. Last, the migration trial
# (tests/production/test_migration_trial.py) runs a python-dockerflow service on that wheel. The egg-info left in the
# checkout by an earlier build is removed first: setuptools would add the files it lists.
DIST_DIR := dist

dist: $(STAMP)
	rm -rf $(DIST_DIR) dockerflow_async.egg-info
	$(BIN)/python -m build --quiet --outdir $(DIST_DIR) .
	$(BIN)/twine check --strict $(DIST_DIR)/*
	$(BIN)/python .ci/check_dist.py $(DIST_DIR)
	version=$$($(BIN)/python -c 'import dockerflow; print(dockerflow.__version__)') && \
	smoke=$$(mktemp -d) && trap 'rm -rf "$$smoke"' EXIT && \
	$(PYTHON) -m venv "$$smoke/venv" && \
	"$$smoke/venv/bin/python" -m pip install --quiet \
		"$(abspath $(DIST_DIR))/dockerflow_async-$$version-py3-none-any.whl[flask]" && \
	cd "$$smoke" && "$$smoke/venv/bin/python" -I -W error $(abspath .ci/dist_smoke.py) "$$version"
	version=$$($(BIN)/python -c 'import dockerflow; print(dockerflow.__version__)') && \
	DOCKERFLOW_TRIAL_WHEEL="$(abspath $(DIST_DIR))/dockerflow_async-$$version-py3-none-any.whl" \
		$(BIN)/pytest -q -p no:cacheprovider tests/production/test_migration_trial.py

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_bench.py

clean:
	rm -rf $(VENV) $(MIN_VENV) .venv-py* .mypy_cache .ruff_cache .pytest_cache $(DIST_DIR)
