#!/usr/bin/env bash
# Create .venv (if missing) and install hf_transfer with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: on this project's machines these wheels come from local disk (see docs)
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[test]"
# .venv-endpoints: the Inference Endpoints toolkit's pins, for the serving-contract tests (tests/test_serving.py);
# the demo does not need it (scripts/demo.sh sets SKIP_ENDPOINTS_VENV=1)
if [ "${SKIP_ENDPOINTS_VENV:-0}" != "1" ]; then
  PYTHON="$PYTHON" ./scripts/setup_endpoints.sh
fi
