# Two commands a newcomer runs on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed-dev
TORCHREC_STAMP := $(VENV)/.installed-torchrec

.PHONY: demo test test-fast install install-torchrec bench gpu-wheels clean

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

# The wheels the GPU machine lacks for scripts/gpu-check.sh (Python 3.12 there; .whl/ is ignored
# and travels with the device tool's carry): polars, its runtime and tomli-w, in this venv's versions.
GPU_WHEELS = polars polars-runtime-32 tomli-w
gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
		$(foreach w,$(GPU_WHEELS),$(w)==$$($(PY) -c "import importlib.metadata as m; print(m.version('$(w)'))"))

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache .whl
