# `make test` sets everything up on a fresh machine and runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_WORKERS ?= 2

.PHONY: test lint services clean demo demo-check bench
.PRECIOUS: $(VENV)/.installed-%

# .venv with the package and one extra installed: .installed-test, .installed-demo
$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$*]'
	touch $@

services: $(VENV)/.installed-test
	PY=$(PY) scripts/services.sh
	scripts/browser.sh
	scripts/npm-tus.sh
	scripts/uppy.sh

# ruff and mypy --strict over src/ (their settings are in pyproject.toml); `make test` runs it first
lint: $(VENV)/.installed-test
	$(PY) -m ruff check src
	$(PY) -m mypy

test: services lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# `make bench` runs every benchmark under bench/ (about ten minutes on 2 cores); each prints
# its table and writes bench/results/NAME.json. BENCHMARKS.md says what the figures mean.
BENCHMARKS ?= pipeline ledger memory delivery maintenance placeholders

bench: services
	for name in $(BENCHMARKS); do $(PY) bench/$$name.py || exit 1; done

# `make demo` runs examples/starlette and its worker on embedded PostgreSQL and Redis (data
# under var/) until Ctrl-C; `make demo-check` runs the same stack headless and checks an upload.
# DEMO_ARGS passes options to scripts/demo.py, e.g. DEMO_ARGS="--framework aiohttp --port 8080".
demo: $(VENV)/.installed-demo
	$(PY) scripts/demo.py $(DEMO_ARGS)

demo-check: $(VENV)/.installed-demo
	$(PY) scripts/demo.py --check $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build src/*.egg-info
