# The two README commands:  `make demo`  and  `make test`.
# Both create a virtual environment in $(VENV) with vaemap installed (editable)
# on first use.  TORCH picks the PyTorch build: the default is the CPU-tested
# release; on a GPU cluster use e.g. `make demo TORCH=torch` or a conda env.
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
CORES ?= 2
BIN := $(abspath $(VENV))/bin

.PHONY: demo test results-table report lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed  ## install, then run the whole pipeline on the embedded synthetic Moon
	PATH="$(BIN):$$PATH" snakemake --cores $(CORES)
	PATH="$(BIN):$$PATH" snakemake --cores $(CORES) --report results/report.html
	@echo "Products: results/maps/*.fits and *.png, results/evaluate/metrics.md, results/report.html"

test: $(VENV)/.installed  ## install, then run the test suite (lint, units, end-to-end workflow)
	PATH="$(BIN):$$PATH" ruff check .
	PATH="$(BIN):$$PATH" snakefmt --check workflow
	PATH="$(BIN):$$PATH" pytest

results-table: demo  ## the demo, then the README's results block (and docs/results/) from its numbers
	mkdir -p docs/results
	cp results/evaluate/metrics.json docs/results/metrics.json
	cp results/evaluate/metrics.md docs/results/metrics.md
	PATH="$(BIN):$$PATH" vaemap readme-table docs/results/metrics.json --readme README.md

clean:
	rm -rf results .snakemake
