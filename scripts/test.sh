#!/usr/bin/env bash
# Lint and the whole test suite, in the pinned environment.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lens-hub registry validate
.venv/bin/lens-hub registry schema --out registry/schema.json --check
.venv/bin/python -m pytest "$@"
