"""Where a fine-tuning step's time goes: the torch profiler over a window of steps of each arm of the speed
benchmark (the stock recipe and ours), same data, model, batch and workers as ``bench_speed.py``.

    python benchmarks/profile_step.py --case finetune:test_vit@160:jpeg --steps 10

Prints, per arm, the wall ms per step inside the window and the top operators by self CPU time (ms per
step), and ``--trace DIR`` writes each arm's chrome trace. Run it on an idle machine (the profiler adds
its own overhead, a few percent; compare the arms with each other, not with bench_speed.py's img/s).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_speed  # noqa: E402
import speed_arms  # noqa: E402
from speed_data import Data  # noqa: E402


def _profiling_clock(window: tuple[int, int], out: dict):
    """A ``make_clock`` replacement: the usual clock, plus the profiler over steps ``[start, stop)``."""
    original = speed_arms.make_clock

    def make(device, memory):
        clock = original(device, memory)
        start, stop = window
        base = type(clock)

        class Profiled(base):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == start:
                    self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    self.prof.__enter__()
                    self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                super().on_step_end(args, state, control, **kw)
                if state.global_step == stop:
                    out["wall_ms_per_step"] = 1000 * (time.perf_counter() - self.t0) / (stop - start)
                    self.prof.__exit__(None, None, None)
                    out["prof"] = self.prof

        clock.__class__ = Profiled
        return clock

    return make


def _report(name: str, out: dict, steps: int, top: int, trace: str | None) -> None:
    prof = out["prof"]
    print(f"\n## {name}: {out['wall_ms_per_step']:.1f} ms per step (wall, profiled window of {steps} steps)")
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    print("| op | self CPU ms/step | calls/step |\n|---|---|---|")
    for e in rows:
        print(f"| {e.key} | {e.self_cpu_time_total / 1000 / steps:.2f} | {e.count / steps:.0f} |")
    if trace:
        os.makedirs(trace, exist_ok=True)
        prof.export_chrome_trace(os.path.join(trace, f"{name}.json"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", default="finetune:test_vit@160:jpeg")
    p.add_argument("--steps", type=int, default=10, help="profiled steps (after --warmup steps)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="stock arm's intra-op threads (default: torch's)")
    p.add_argument("--arms", default="stock,ours")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--trace", default=None, help="folder for chrome traces")
    a = p.parse_args(argv)
    kind, rest, dname = a.case.split(":")
    arch, size = rest.split("@")
    args = bench_speed.parse_args(["--device", "cpu", "--steps", str(a.steps + 2), "--warmup", str(a.warmup)])
    device = torch.device("cpu")
    threads = a.threads or args.default_threads
    with tempfile.TemporaryDirectory(prefix="hf_transfer_profile_") as work:
        data = Data(args, work)
        for arm in a.arms.split(","):
            out: dict = {}
            speed_arms.make_clock = _profiling_clock((a.warmup, a.warmup + a.steps), out)
            if arm == "stock":
                speed_arms.stock_trainer_arm(
                    args,
                    device,
                    data,
                    arch,
                    int(size),
                    dname,
                    args.train_images,
                    freeze=False,
                    epochs=None,
                    threads=threads,
                )
            else:
                speed_arms.ours_finetune_arm(
                    args, device, data, arch, int(size), dname, args.train_images, args.ours_workers
                )
            _report(f"{arm} [{torch.get_num_threads()} threads]", out, a.steps, a.top, a.trace)


if __name__ == "__main__":
    main()
