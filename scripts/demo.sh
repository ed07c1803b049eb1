#!/usr/bin/env bash
# Quick start: install, then render 8 variants of a prompt with the tiny-sd model through a
# private Redis, Celery workers, a SQLite ledger and a file store, all under ./.farm.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/farm run --model tiny-sd --variants 8 --seed 100 "${1:-a red circle}" --out out "${@:2}"
