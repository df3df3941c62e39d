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
# Not --quiet: it hides the warnings that --strict turns into a failure. The log is shown only when it fails.
docs_log=$(mktemp)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d "$(mktemp -d)" >"$docs_log" 2>&1 || { cat "$docs_log" >&2; exit 1; }
.venv/bin/python -m pytest "$@"
