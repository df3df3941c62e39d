#!/usr/bin/env bash
# Downloads, on this machine, the wheels that the GPU machine's image lacks (pydantic and what it needs), for its
# Python 3.12, into .whl/ (git-ignored). Run once before `bench/gpu/run.sh` travels with carry=[".whl"].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  "$(grep -i '^pydantic==' requirements/constraints.txt)" \
  "$(grep -i '^pydantic_core==' requirements/constraints.txt)" \
  "$(grep -i '^annotated-types==' requirements/constraints.txt)" \
  "$(grep -i '^typing-inspection==' requirements/constraints.txt)"
ls -la .whl
