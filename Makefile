# Two commands matter: `make demo` (the main job, end to end) and `make test` (what CI checks first, on Airflow 3.3).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV := python3 -m uv
INSTALLED := $(VENV)/.installed
# One pinned set per Airflow line (constraints/airflow-X.Y.txt); .venv and `make test` use the newest line.
CONSTRAINTS := constraints/airflow-3.3.txt

.PHONY: test lint typecheck pytest docs demo airflow bench bench-quick test-ui test-cluster test-stores report acceptance-report \
	clean uv dist test-matrix

uv:
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

$(INSTALLED): pyproject.toml $(CONSTRAINTS) | uv
	@test -x $(PY) || $(UV) venv --quiet --python python3 $(VENV)
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -c $(CONSTRAINTS) -e '.[test,s3,openlineage]'
	@touch $@

venv: $(INSTALLED)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .

typecheck: $(INSTALLED)
	$(VENV)/bin/mypy sora2_provider

pytest: $(INSTALLED)
	$(VENV)/bin/pytest -m "not ui and not cluster and not stores" $(PYTEST_ARGS)

test: lint typecheck docs pytest

# The documentation site (docs/, mkdocs.yml; MkDocs Material and mkdocstrings, the `docs` extra pinned in
# $(CONSTRAINTS)) built into site/ with warnings as errors: a broken link, a missing page or an API reference that
# no longer resolves fails it. `.venv/bin/mkdocs serve` shows it on http://127.0.0.1:8000 while you write. No --quiet: it hides the warnings that --strict counts, and the build passes.
DOCS_INSTALLED := $(VENV)/.installed-docs

docs: $(DOCS_INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

$(DOCS_INSTALLED): $(INSTALLED) pyproject.toml $(CONSTRAINTS)
	$(UV) pip install --quiet --python $(PY) -c $(CONSTRAINTS) -e '.[test,s3,openlineage,docs]'
	@touch $@

# Browser tests of the Airflow UI (tests/ui, marker `ui`): Playwright drives Debian's Chromium, installed here with
# apt when missing (as root, or through sudo). Playwright's own browser download is never used. The `ui` extra adds
# the FAB auth manager (per-DAG roles for the plugin's access tests), pinned in $(CONSTRAINTS).
CHROMIUM := /usr/bin/chromium
UI_INSTALLED := $(VENV)/.installed-ui

test-ui: $(UI_INSTALLED) $(CHROMIUM)
	$(VENV)/bin/pytest -m ui $(PYTEST_ARGS)

$(UI_INSTALLED): $(INSTALLED) pyproject.toml $(CONSTRAINTS)
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -c $(CONSTRAINTS) -e '.[test,s3,openlineage,ui]'
	@touch $@

$(CHROMIUM):
	@if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium

# Distributed-Airflow tests (tests/cluster, marker `cluster`): CeleryExecutor with two workers, Postgres metadata DB
# and Redis broker, all started by the tests on free loopback ports in temp dirs and stopped by PID. Debian's
# redis-server and postgresql are installed here with apt when missing (as root, or through sudo); the Python
# side is the `cluster` extra, pinned in $(CONSTRAINTS).
CLUSTER_INSTALLED := $(VENV)/.installed-cluster
REDIS_SERVER := /usr/bin/redis-server
POSTGRES := /usr/lib/postgresql/15/bin/postgres

test-cluster: $(CLUSTER_INSTALLED) $(REDIS_SERVER) $(POSTGRES)
	$(VENV)/bin/pytest -m cluster $(PYTEST_ARGS)

$(CLUSTER_INSTALLED): $(INSTALLED) pyproject.toml $(CONSTRAINTS)
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -c $(CONSTRAINTS) -e '.[test,s3,openlineage,cluster]'
	@touch $@

$(REDIS_SERVER):
	@if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq redis-server

$(POSTGRES):
	@if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq postgresql

# Every object store (tests/stores, marker `stores`): S3 (moto), GCS (gcp-storage-emulator) and Azure Blob (Azurite,
# from npm into .stores/ when missing; node must be on the machine). The gcs/azure extras are installed without
# --compile-bytecode: compiling the Google and Azure SDKs takes minutes, and only what the tests import is compiled.
STORES_INSTALLED := $(VENV)/.installed-stores
AZURITE := .stores/node_modules/.bin/azurite-blob
AZURITE_VERSION := 3.37.0

test-stores: $(STORES_INSTALLED) $(AZURITE)
	$(VENV)/bin/pytest -m stores tests/stores $(PYTEST_ARGS)

$(STORES_INSTALLED): pyproject.toml $(CONSTRAINTS)
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@test -x $(PY) || $(UV) venv --quiet --python python3 $(VENV)
	$(UV) pip install --quiet --python $(PY) -c $(CONSTRAINTS) -e '.[test-stores]'
	@touch $@

$(AZURITE):
	npm install --silent --no-audit --no-fund --prefix .stores azurite@$(AZURITE_VERSION)

# Runs tests/acceptance (fault matrix, bad input, secrets) and renders tests/acceptance/REPORT.md from what it saw.
acceptance-report: $(INSTALLED)
	@results=$$(mktemp -t sora2-acceptance-XXXXXX.json); \
	SORA2_ACCEPTANCE_RESULTS=$$results $(VENV)/bin/pytest tests/acceptance $(PYTEST_ARGS); status=$$?; \
	$(PY) tests/acceptance/render_report.py $$results tests/acceptance/REPORT.md && rm -f $$results; exit $$status

# A local Airflow to try the provider in (scripts/local_airflow.py), in the foreground until Ctrl-C: the example DAGs,
# the emulator as `sora2_default`, one example run triggered; prints its Video tab URL. PORT=8081 picks another port.
# Its home is .airflow/ (kept across restarts with the videos; `make clean` deletes it).
airflow: $(INSTALLED)
	$(PY) -m scripts.local_airflow $(if $(PORT),--port $(PORT)) $(AIRFLOW_ARGS)

# Runs the sora2_daily_video example through Airflow (deferral included) against the local emulator.
demo: $(INSTALLED)
	$(PY) -m scripts.demo $(DEMO_ARGS)

# Benchmarks of issue #8 (bench/RESULTS.md): the full run takes under 15 minutes on two cores; bench-quick is the
# small variant (make test runs it too, through tests/bench). Options: BENCH_ARGS="--only P2,P3" ...
bench: $(INSTALLED) $(STORES_INSTALLED) $(AZURITE)
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: $(INSTALLED)
	$(PY) -m bench --quick $(BENCH_ARGS)

# The sdist and the wheel users install, built from a clean sdist (uv build: sdist first, then the wheel from it).
dist: | uv
	rm -rf dist
	$(UV) build --quiet --out-dir dist

# Airflow 2.11, 3.0, 3.1, 3.2 and 3.3 (scripts/matrix.py): per line a cached venv .matrix/airflow-X.Y from
# constraints/airflow-X.Y.txt running the unit, hook, sensor and operator suites (three lines at a time), then one
# line at a time a deferrable generation through a real scheduler and triggerer, then the release check of the
# wheel from `make dist` in a clean venv of each line.
# Options: MATRIX_ARGS="3.1" (one line), MATRIX_ARGS="--phases release" ...
test-matrix: dist
	python3 scripts/matrix.py $(MATRIX_ARGS)

clean:
	rm -rf $(VENV) .matrix dist .mypy_cache .ruff_cache .stores .airflow site
