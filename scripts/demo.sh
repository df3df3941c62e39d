#!/usr/bin/env bash
# The main job, offline: the end-to-end lens example on the real SmolLM2-135M-Instruct.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
HF_HUB_OFFLINE=1 .venv/bin/lens-hub demo "$@"
