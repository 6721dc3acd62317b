# Two commands matter: `make demo` (the main job, end to end) and `make test` (everything CI checks).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV := python3 -m uv
INSTALLED := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench bench-quick test-ui report clean

$(INSTALLED): pyproject.toml constraints.txt
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@test -x $(PY) || $(UV) venv --quiet --python python3 $(VENV)
	$(UV) pip install --quiet --python $(PY) -c constraints.txt -e '.[test,s3]'
	@touch $@

venv: $(INSTALLED)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .

typecheck: $(INSTALLED)
	$(VENV)/bin/mypy sora2_provider

pytest: $(INSTALLED)
	$(VENV)/bin/pytest -m "not ui" $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
