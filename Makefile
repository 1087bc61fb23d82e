# Two commands a newcomer runs on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-fast install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the project's metadata changes.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recscale demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest

# The fast part of the suite while working (about a minute): no subprocess-heavy tests.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/prepare.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
