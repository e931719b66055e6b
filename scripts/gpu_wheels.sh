#!/usr/bin/env bash
# Run on a machine that reaches the package registries, before scripts/gpu_bench.sh on a CUDA machine that
# does not: fetches into .whl/ the Python 3.12 wheels that such a machine (an H200 image) lacks or has in versions this project does not support
# (it has torch, torchvision, accelerate, numpy, pandas, pyarrow, ... but transformers 5.17,
# huggingface_hub 1.x and no datasets), and a copy of the stock anchor script
# (../shared/bench/stock_recipe_anchor.py, outside this repository; skipped when absent). About 20 MB, under the
# 64 MiB carry limit. Then: device run with carry [".whl"] and command "bash scripts/gpu_bench.sh".
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PKGS=(transformers==5.23.0 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 truststore
      datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 peft==0.21.2 timm==1.0.31)
for pkg in "${PKGS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$pkg"
done
if [ -f ../shared/bench/stock_recipe_anchor.py ]; then cp ../shared/bench/stock_recipe_anchor.py .whl/; fi
du -sh .whl && ls .whl
