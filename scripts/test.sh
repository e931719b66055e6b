#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite offline. The Hub test server is started
# by the pytest fixtures themselves (hf_transfer.testing); nothing reaches the internet.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_XET=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest -q --timeout 900 "$@"
