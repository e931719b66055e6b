"""One training step (forward + backward + fused AdamW, fp32) of timm models in NCHW and in NHWC (channels_last),
on the CPU: the measurement behind ``--channels_last auto`` covering the CPU (``hf_transfer/models/speed.py``).

    python benchmarks/channels_last_cpu.py                       # the table in speed.py's docstring (~4 min, 2 cores)
    python benchmarks/channels_last_cpu.py --cases test_resnet@64x32

Prints the median ms per step of each layout and their ratio (NCHW / NHWC: > 1 means NHWC is faster). Random init
(nothing is downloaded); run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

CASES = (
    "test_resnet@64x32,test_resnet@128x32,resnet18@64x32,resnet18@224x16,resnet50@160x8,"
    "efficientnet_b0@160x16,convnext_atto@160x16"
)


def step_ms(arch: str, size: int, batch: int, channels_last: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=10)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    times = []
    for i in range(steps + 2):  # two warm-up steps (oneDNN primitive creation)
        t = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=CASES, help="comma list of arch@<px>x<batch>")
    p.add_argument("--steps", type=int, default=5, help="timed steps per layout (median)")
    a = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model | px | batch | NCHW ms | NHWC ms | NCHW / NHWC |\n|---|---|---|---|---|---|")
    for case in a.cases.split(","):
        arch, rest = case.split("@")
        size, batch = (int(v) for v in rest.split("x"))
        nchw, nhwc = (step_ms(arch, size, batch, cl, a.steps) for cl in (False, True))
        print(f"| {arch} | {size} | {batch} | {nchw:.1f} | {nhwc:.1f} | {nchw / nhwc:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
