# The two README commands:  `make demo`  and  `make test`.
# Both create a virtual environment in $(VENV) with vaemap installed (editable)
# on first use.  TORCH picks the PyTorch build: the default is the CPU-tested
# release; on a GPU cluster use e.g. `make demo TORCH=torch` or a conda env.
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
CORES ?= 2
BIN := $(abspath $(VENV))/bin

.PHONY: demo test results-table viewer report lint clean

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

results-table: demo  ## the demo and all channels, then the README's results blocks (and docs/results/)
	PATH="$(BIN):$$PATH" snakemake --cores $(CORES) --configfile config/config.yaml config/allchannels.yaml
	mkdir -p docs/results
	cp results/evaluate/metrics.json docs/results/metrics.json
	cp results/evaluate/metrics.md docs/results/metrics.md
	cp results/allchannels/evaluate/metrics.json docs/results/allchannels.json
	cp results/allchannels/evaluate/metrics.md docs/results/allchannels.md
	cp results/model/likelihood_sigma.png docs/likelihood_sigma.png
	PATH="$(BIN):$$PATH" vaemap readme-table docs/results/metrics.json --readme README.md \
		--channels "7 (default)=docs/results/metrics.json" "1-9=docs/results/allchannels.json"

viewer: $(VENV)/.installed  ## the demo's HiPS maps in Aladin Lite, served on http://127.0.0.1:8000
	npm ci --prefix viewer --no-audit --no-fund
	PATH="$(BIN):$$PATH" snakemake --cores $(CORES) results/maps/hips/index.html
	@echo "Open http://127.0.0.1:8000/ (Ctrl-C stops the server)"
	$(BIN)/python -m http.server --directory results/maps/hips --bind 127.0.0.1 8000

clean:
	rm -rf results .snakemake
