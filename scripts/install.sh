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
# the web monitor's browser test (tests/service/test_monitor.py) drives the system's Chromium:
# Playwright's own browser download cannot work on these machines, Debian's package can
if [[ ",$extras," == *",test,"* ]] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
        || echo "warning: could not install chromium; the monitor's browser test will fail" >&2
fi
