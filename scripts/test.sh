#!/usr/bin/env bash
# Install what the tests need (including the real Redis, PostgreSQL and S3 servers they start)
# and run them. Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
# house habits first (seconds): lint + import order, then the typed seams between layers
.venv/bin/ruff check farm engine workers tests bench
.venv/bin/mypy
# the layers, as import-linter contracts ([tool.importlinter] in pyproject.toml)
.venv/bin/lint-imports --no-cache --no-logo
# two processes (this machine's cores); each test file stays on one of them, in order
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
