#!/usr/bin/env bash
# Create .venv-endpoints (if missing): the Inference Endpoints toolkit's own pins (transformers 4.51.3,
# huggingface_hub 0.30.2, peft 0.15.1), in which tests/endpoint_contract.py serves published repos the way
# an Endpoint does. hf_transfer itself is NOT installed there (the serving container does not have it).
# Idempotent: a venv whose pins already match is left as it is. About 3 minutes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-endpoints
PINS=(
  "transformers==4.51.3" "huggingface_hub==0.30.2" "peft==0.15.1"
  "torch==2.14.1" "torchvision==0.29.1" timm pillow safetensors
  # only for running the real toolkit's app (tests/test_serving.py, when its source is present)
  "starlette<0.47" orjson uvicorn
)
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'PY' 2>/dev/null; then
import importlib.metadata as m
want = {"transformers": "4.51.3", "huggingface_hub": "0.30.2", "peft": "0.15.1", "torch": "2.14.1"}
assert all(m.version(k) == v for k, v in want.items())
import timm, PIL, safetensors, starlette, orjson, uvicorn  # noqa: F401
PY
  exit 0
fi
"$PYTHON" -m venv "$VENV"
# torch first, pinned: on this project's machines these wheels come from local disk (see docs)
"$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
