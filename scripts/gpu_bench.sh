#!/usr/bin/env bash
# Runs on a CUDA machine, from the repo root (with the .whl/ folder that scripts/gpu_wheels.sh filled on a
# machine that reaches the package registries, when the CUDA machine does not). One call does all the
# GPU checks, each stage under its own time limit so that a slow stage cannot eat the
# others, writing to $OUT as it goes (what finished comes back even if the call is cut):
#   env.txt            nvidia-smi, versions
#   pytest_cuda.log    the CUDA-only tests + the speed-option tests, on the GPU
#   speed_h200.json/md benchmarks/bench_speed.py: stock recipe vs ours side by side (fine-tuning
#                      ViT-B/16 + ResNet-50 at 224, 10-epoch linear probe, extraction)
#   anchor.json/log    .whl/stock_recipe_anchor.py when gpu_wheels.sh found it (the stock anchors, same machine)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
# SKIP_WHEELS=1: a dry run with the local .venv's python3 first on PATH (no GPU needed to try the script)
if [ "${SKIP_WHEELS:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_XET=1 PYTHONUNBUFFERED=1 \
       HF_HOME=/tmp/hf_home HF_TRANSFER_CACHE=/tmp/hf_transfer_cache OUT
{ nvidia-smi; python3 - <<'PY'
import torch, torchvision, transformers, timm, datasets, peft, accelerate, huggingface_hub
for m in (torch, torchvision, transformers, timm, datasets, peft, accelerate, huggingface_hub):
    print(m.__name__, m.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
PY
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout ${PYTEST_S:-90} python3 -m pytest -q -x -p no:cacheprovider --timeout 80 tests/test_fast_input.py tests/test_speed.py \
  > "$OUT/pytest_cuda.log" 2>&1; echo "pytest exit $?"; tail -4 "$OUT/pytest_cuda.log"
timeout ${BENCH_S:-300} python3 benchmarks/bench_speed.py --repeats ${BENCH_REPEATS:-1} --out "$OUT/speed_h200.json" 2>&1 | tee "$OUT/bench.log" | tail -45
if [ -f .whl/stock_recipe_anchor.py ]; then
  timeout ${ANCHOR_S:-150} python3 .whl/stock_recipe_anchor.py > "$OUT/anchor.log" 2>&1; echo "anchor exit $?"; tail -25 "$OUT/anchor.log"
fi
