#!/usr/bin/env bash
# What a user of `pip install hf-transfer-learning` gets: build the wheel, install it into a fresh venv,
# then, from that install and outside the checkout, train a tiny run and push it to a local Hub test
# server (hf_transfer.testing.hub_server, also from the wheel). Catches files the wheel does not ship
# (the model card template once was one). About 2-3 minutes, most of it the venv install.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hf_transfer_wheel_smoke.XXXXXX")
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
step() { echo "[wheel_smoke $(date +%T)] $*"; }

# Build from a copy of what the build reads: a stale build/ in the checkout cannot leak into the wheel.
mkdir -p "$WORK/src"
cp -R "$ROOT/hf_transfer" "$ROOT/model_cards" "$ROOT/pyproject.toml" "$ROOT/README.md" "$WORK/src/"
find "$WORK/src" -name __pycache__ -type d -prune -exec rm -rf {} +

step "fresh venv"
"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"  # from local disk on this project's machines
step "build the wheel"
"$PY" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL=$(ls "$WORK"/dist/hf_transfer_learning-*.whl)
step "install $(basename "$WHEEL")"
"$PY" -m pip install --quiet "$WHEEL"

cd "$WORK"  # the checkout is not on sys.path from here on
unset PYTHONPATH
"$PY" - "$ROOT" <<'EOF'
import sys
import hf_transfer
assert not hf_transfer.__file__.startswith(sys.argv[1]), f"imported from the checkout: {hf_transfer.__file__}"
print("hf_transfer from", hf_transfer.__file__)
EOF

step "start the Hub test server"
TOKEN=hf_wheelsmoke_user_0123456789abcdef
"$PY" -m hf_transfer.testing.hub_server --root "$WORK/hub" --port 0 --token "$TOKEN=user" \
  >"$WORK/hub.url" 2>"$WORK/hub.log" &
SERVER_PID=$!
for _ in $(seq 100); do
  [ -s "$WORK/hub.url" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/hub.log"; exit 1; }
  sleep 0.2
done
export HF_ENDPOINT=$(head -n1 "$WORK/hub.url") HF_TOKEN=$TOKEN HF_HOME="$WORK/hf_home" HF_HUB_OFFLINE=0 \
  HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
  HF_TRANSFER_CACHE="$WORK/cache" \
  NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
step "Hub test server at $HF_ENDPOINT"

step "train"
"$WORK/venv/bin/hf-transfer" train --mode task --method full --backbone test_resnet \
  --target builtin:digits-handwritten --output_dir "$WORK/run" --image_size 32 --crop_pct 1.0 \
  --max_steps 2 --per_device_train_batch_size 8 --max_train_samples 32 --max_eval_samples 16 \
  --use_cpu true --save_strategy no --eval_strategy no --report_to none --disable_tqdm true
step "push"
"$WORK/venv/bin/hf-transfer" push "$WORK/run" user/wheel-smoke
"$PY" - <<'EOF'
from huggingface_hub import HfApi, hf_hub_download

files = HfApi().list_repo_files("user/wheel-smoke")
missing = {"README.md", "model.safetensors", "config.json", "results.json"} - set(files)
assert not missing, f"not pushed: {sorted(missing)}"
card = open(hf_hub_download("user/wheel-smoke", "README.md"), encoding="utf-8").read()
assert "<!-- hf-transfer:begin" in card, "the card was not rendered from the shipped template"
print(f"pushed from the wheel install: {len(files)} files, card {len(card)} chars")
EOF
step "ok"
