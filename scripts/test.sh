#!/usr/bin/env bash
# Lint, the layering contract, registry validation, the strict docs build and the whole test suite, in the pinned environment.
# The browser test of the docs needs Debian's chromium + chromium-driver (installed by .ci/run; skipped without).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache  # the layering contract in pyproject.toml: imports only point down
.venv/bin/lens-hub registry validate
.venv/bin/lens-hub registry schema --out registry/schema.json --check
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet -d "$(mktemp -d)"
.venv/bin/python -m pytest "$@"
