# Two commands a newcomer runs on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed-dev
TORCHREC_STAMP := $(VENV)/.installed-torchrec

.PHONY: demo test test-fast install install-torchrec bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the project's metadata changes.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# TorchRec + FBGEMM's CPU build for --embeddings sharded (CUDA machines: pip install 'recscale[torchrec]').
$(TORCHREC_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[torchrec-cpu]'
	$(PIP) install -q -c constraints.txt --no-deps torchrec
	touch $(TORCHREC_STAMP)

install-torchrec: $(TORCHREC_STAMP)

demo: $(STAMP)
	$(VENV)/bin/recscale demo --out runs/demo

# Lint and import order first (ruff, configured in pyproject.toml), then the whole suite.
test: $(STAMP) $(TORCHREC_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

# The fast part of the suite while working (about a minute): no subprocess-heavy tests.
test-fast: $(STAMP) $(TORCHREC_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/prepare.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
