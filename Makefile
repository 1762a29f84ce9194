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
# The wheels the GPU run carries (benchmarks.environment.CARRIED_WHEELS, read without the venv), for the lent
# machine's Python 3.12 on x86-64 Linux.
CARRIED_WHEELS = $(shell $(PYTHON) -c 'import sys; sys.path.insert(0, "."); from benchmarks.environment import CARRIED_WHEELS; print(*CARRIED_WHEELS)')
WHEEL_PLATFORMS := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any
DOCS_EXTRA := import sys; toml = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli"); print(*toml.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["docs"], sep="\n")

.PHONY: venv bench tuning reference replication standard standard-replication test docs docs-serve smoke perf gpu gpu-wheels clean-venv

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

# The GPU run, on the lent GPU machine (no package registry, no .venv: its own python3 and the carried wheels):
# the device call is run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=600) after `make
# gpu-wheels` here. benchmarks/gpu.sh installs the wheels, checks the environment (exit 3 on a problem), runs
# `python -m benchmarks gpu` time-boxed (smoke into runs/gpu-smoke, the CUDA perf ratios into results/perf/gpu,
# the Lee et al. pilot into results/gpu-tuning and its pre-registration, the confirmatory seeds into results/gpu;
# a second call resumes) and packs them into $OUT (docs/benchmarks/gpu.md). Here, without a GPU, it stops at
# the environment check; REHEARSE=1 RESULTS=/tmp/g RUNS=/tmp/g rehearses every stage on the CPU at toy size.
gpu:
	bash benchmarks/gpu.sh

# The wheels the GPU machine lacks (benchmarks.environment.CARRIED_WHEELS), for its Python 3.12 on x86-64,
# into the ignored folder .whl/ (emptied first: two versions of one package stop the install there); prints
# their total size, which counts towards the call's 64 MiB with the working tree. No venv needed.
gpu-wheels:
	rm -rf .whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: $(WHEEL_PLATFORMS) -d .whl $(CARRIED_WHEELS)
	@du -cb .whl/*.whl | awk 'END { printf "%d wheels in .whl/: %.1f MiB\n", NR - 1, $$1 / 1048576 }'

clean-venv:
	rm -rf $(VENV) $(DOCS_VENV)
