# Quick start: `make bench` (the quick benchmark suite's confirmatory stage, from scratch, at the
# committed pre-registered lrs, then its replication report against the committed results/quick)
# and `make test` (the test suite).
# Both create the local virtual environment .venv when it is missing and reuse it when present.
# animal-mnist is installed without dependencies: its metadata pulls in tensorflow, which reading
# its data files does not need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The documentation site's own environment: the docs extra alone (mkdocs-material, mkdocstrings), not the
# test-and-benchmark .venv. mkdocstrings reads lrgroups' source without importing it, so neither torch nor
# lrgroups is installed there. DOCS_EXTRA prints the docs extra of pyproject.toml, one requirement a line.
DOCS_VENV := .venv-docs
DOCS_STAMP := $(DOCS_VENV)/.installed
DOCS_EXTRA := import sys; toml = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli"); print(*toml.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["docs"], sep="\n")

.PHONY: venv bench tuning reference replication standard standard-replication test docs docs-serve smoke perf gpu clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m pip install --quiet --no-deps animal-mnist==0.4
	touch $(STAMP)

$(DOCS_STAMP): pyproject.toml
	test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install --quiet --upgrade pip "tomli; python_version < '3.11'"
	$(DOCS_VENV)/bin/python -c '$(DOCS_EXTRA)' > $(DOCS_VENV)/requirements.txt
	$(DOCS_VENV)/bin/python -m pip install --quiet -r $(DOCS_VENV)/requirements.txt
	touch $(DOCS_STAMP)

bench: $(STAMP)
	rm -rf runs/quick
	$(PY) -m benchmarks run --suite quick --out runs/quick
	$(PY) -m benchmarks replicate --suite quick --reference results/quick --new runs/quick

# The tuning stage, from scratch into runs/quick-tuning: every strategy on its lr grid; then whether it
# selects the lrs of the committed pre-registration (benchmarks/preregistration/quick.json; exit 1 if not).
# The committed tuning run is results/quick-tuning; `python -m benchmarks preregister --tuning
# results/quick-tuning --write` wrote the pre-registration from it.
tuning: $(STAMP)
	rm -rf runs/quick-tuning
	$(PY) -m benchmarks run --suite quick_tuning --out runs/quick-tuning --no-progress
	$(PY) -m benchmarks preregister --tuning runs/quick-tuning

# The committed reference of the confirmatory stage (results/quick).
reference: $(STAMP)
	$(PY) -m benchmarks run --suite quick --out results/quick --no-progress

# The committed second run: disjoint seeds with their own source models, the Ray executor (another
# process layout), compared verdict by verdict with the reference.
replication: $(STAMP)
	$(PY) -m benchmarks run --suite quick_replication --out results/quick-replication --executor ray --no-progress
	-$(PY) -m benchmarks replicate --reference results/quick --new results/quick-replication  # differing verdicts are the report's content here, not a failure

# The standard suite (three suite-pretrained architectures and the ImageNet EfficientNet-Lite0 top):
# its confirmatory stage from scratch into runs/standard (the reference took 1831 s on 2 cores), then its
# replication report against the committed results/standard.
standard: $(STAMP)
	rm -rf runs/standard
	$(PY) -m benchmarks run --suite standard --out runs/standard --no-progress
	-$(PY) -m benchmarks replicate --reference results/standard --new runs/standard

# The committed second run of the standard suite (disjoint seeds with their own source models, Ray).
standard-replication: $(STAMP)
	$(PY) -m benchmarks run --suite standard_replication --out results/standard-replication --executor ray --no-progress
	-$(PY) -m benchmarks replicate --reference results/standard --new results/standard-replication

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -p no:cacheprovider

# The documentation site (mkdocs-material + mkdocstrings, the docs extra, in .venv-docs) into site/; strict: a
# warning fails. `make test` builds it too, in .venv (tests/test_docs.py).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs serve --strict

smoke: $(STAMP)
	$(PY) -m benchmarks run --suite smoke

perf: $(STAMP)
	$(PY) -m benchmarks perf

# The GPU check (one H200, about 8 minutes): CUDA perf ratios, then the gpu suite (seeds sized
# from a timed first step) into results/gpu.
gpu: $(STAMP)
	$(PY) -m benchmarks perf --out results/perf/gpu
	$(PY) -m benchmarks run --suite gpu --device cuda --out results/gpu

clean-venv:
	rm -rf $(VENV) $(DOCS_VENV)
