# Quick start: `make bench` (the quick benchmark suite) and `make test` (the test suite).
# Both create the local virtual environment .venv when it is missing and reuse it when present.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv bench test smoke perf gpu clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m benchmarks run --suite quick

test: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider

smoke: $(STAMP)
	$(PY) -m benchmarks run --suite smoke

perf: $(STAMP)
	$(PY) -m benchmarks perf

# The GPU check (one H200, about 8 minutes for the suite): CUDA perf ratios, then the gpu suite.
gpu: $(STAMP)
	$(PY) -m benchmarks perf --out results/perf/gpu
	$(PY) -m benchmarks run --suite gpu --device cuda

clean-venv:
	rm -rf $(VENV)
