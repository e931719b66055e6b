#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the built-in demo: every transfer mode on the built-in digits pair, CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_ENDPOINTS_VENV=1 ./scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/hf-transfer demo "$@"
