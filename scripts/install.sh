#!/usr/bin/env bash
# Create .venv and install the farm into it (with the extras named in $1, e.g. "test").
# torch is pinned by constraints.txt to the 2.13.0 CPU build; on a GPU host install a CUDA torch
# first (see Dockerfile) and then this project.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
target="."
if [ -n "$extras" ]; then
    target=".[$extras]"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e "$target"
