#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment: install vaemap itself from
# this checkout (the repository root is two levels above this file).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python -m pip install --no-deps --no-build-isolation "$repo"
