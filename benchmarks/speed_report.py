"""What the speed benchmark prints and writes: markdown tables, the header of the .md file, the
environment, and the one-line summary of a case."""

from __future__ import annotations

import os
import platform
import sys

import torch


def _g(r: dict, key: str):
    return "ERROR" if "error" in r else r.get(key)


def _mem(r: dict) -> str:
    if "error" in r:
        return "-"
    s = f"{r.get('peak_rss_main_mb')}+{r.get('workers_pss_mb')}"
    if r.get("peak_gpu_mb") is not None:
        s += f" / GPU {r['peak_gpu_mb']}"
    return s


def _table(title: str, columns: list[str], rows: list[list]) -> list[str]:
    """A markdown section: title, header, separator (one per column), one line per row of cells."""
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"  # noqa: E731
    return [title, "", line(columns), "|" + "---|" * len(columns), *(line(r) for r in rows), ""]


def markdown(rows: list[dict], args) -> str:
    out = []
    ft = [r for r in rows if r["kind"] == "finetune" and "error" not in r]
    if ft:
        cells = []
        for r in ft:
            s, o = r["stock"], r["ours"]
            if "error" in o:
                opts, decode = "-", "-"
            else:
                opts = ", ".join(k for k, v in o["options"].items() if v is True) or "eager fp32"
                opts += f", aug {o['options']['augment_impl']}" + (
                    " (compile failed: eager)" if "compile_error" in o else ""
                )
                decode = f"{o['decode_s']} ({o['decoded_splits']} splits)"
            cells.append(
                [
                    f"{r['model']} @ {r['size']}",
                    r["data"],
                    _g(s, "img_per_s"),
                    _g(o, "img_per_s"),
                    f"**{r['ratio']}x**",
                    opts,
                    decode,
                    f"{_g(s, 'setup_s')} / {_g(o, 'setup_s')}",
                    _mem(s),
                    _mem(o),
                ]
            )
        out += _table(
            f"### Fine-tuning: steady-state training img/s (batch {args.batch_size}, {args.steps} timed "
            f"steps after {args.warmup} warm-up, {args.workers} loader workers)",
            [
                "model @ px",
                "data",
                "stock img/s",
                "ours img/s",
                "ratio",
                "ours options",
                "ours one-time decode s",
                "setup s stock / ours",
                "memory MB: main peak RSS + workers PSS (GPU peak) stock",
                "ours",
            ],
            cells,
        )
    pr = [r for r in rows if r["kind"] == "probe" and "error" not in r]
    if pr:

        def parts(x):
            return "ERROR" if "error" in x else f"{x['total_s']} ({x['extract_s']} + {x['head_train_s']})"

        cells = [
            [
                f"{r['model']} @ {r['size']}",
                r["data"],
                _g(r["naive"], "images"),
                f"{_g(r['naive'], 'total_s')} ({_g(r['naive'], 'img_per_s_per_epoch')})",
                parts(r["ours"]),
                f"**{r['ratio']}x**",
                parts(r["ours_fastx"]),
                f"**{r['ratio_fastx']}x**",
                _mem(r["naive"]),
                _mem(r["ours"]),
                _mem(r["ours_fastx"]),
            ]
            for r in pr
        ]
        out += _table(
            f"### {args.probe_epochs}-epoch linear probe: total wall time, setup included",
            [
                "model @ px",
                "data",
                "train images",
                "naive frozen Trainer s (per-epoch img/s)",
                "ours: feature mode s (extract + head)",
                "ratio",
                "ours + fast extraction s (extract + head)",
                "ratio",
                "memory MB naive",
                "ours",
                "ours+fastx",
            ],
            cells,
        )
    ex = [r for r in rows if r["kind"] == "extract" and "error" not in r]
    if ex:
        cells = [
            [
                f"{r['model']} @ {r['size']}",
                r["data"],
                r["images"],
                f"{_g(r['stock'], 'img_per_s_end_to_end')} ({_g(r['stock'], 'img_per_s')})",
                f"{_g(r['ours_cold'], 'img_per_s_end_to_end')} (decode {_g(r['ours_cold'], 'decode_s')} s)",
                f"**{r['ratio_cold']}x**",
                _g(r["ours_warm"], "img_per_s_end_to_end"),
                f"**{r['ratio_warm']}x**",
                _g(r["ours_stock_path"], "img_per_s_end_to_end"),
                _mem(r["stock"]),
                _mem(r["ours_cold"]),
            ]
            for r in ex
        ]
        out += _table(
            f"### Extraction: one inference pass (batch {2 * args.batch_size}), img/s end to end",
            [
                "model @ px",
                "data",
                "images",
                "stock img/s (steady state)",
                "ours fast, cold: decode + pass",
                "ratio",
                "ours fast, warm (decoded cache)",
                "ratio",
                "extract_features stock path, no workers",
                "memory MB stock",
                "ours cold",
            ],
            cells,
        )
    for r in rows:
        errors = (
            {"case": r["error"]}
            if "error" in r
            else {
                k: v.get("error") or v.get("compile_error")
                for k, v in r.items()
                if isinstance(v, dict) and (v.get("error") or v.get("compile_error"))
            }
        )
        for arm, err in errors.items():
            out.append(f"- {r['kind']} {r['model']}@{r['size']} {r['data']} ({arm}): ERROR {err}")
    return "\n".join(out)


def header(env: dict, args, notes: dict, total_s: float) -> str:
    machine = env["gpu"] or f"CPU only, {env['cpu_count']} cores"
    cmd = " ".join(["OMP_NUM_THREADS=" + env["OMP_NUM_THREADS"]] if env["OMP_NUM_THREADS"] else [])
    cmd = (cmd + " python " + " ".join(sys.argv)).strip()
    return "\n".join(
        [
            f"# Speed: stock recipe vs hf_transfer, side by side in one process ({machine})",
            "",
            f"Command: `{cmd}`",
            "",
            (
                f"Versions: torch {env['torch']}, torchvision {env['torchvision']}, "
                f"transformers {env['transformers']}, timm {env['timm']}, datasets {env['datasets']}, "
                f"Python {env['python']}; {env['platform']}."
            ),
            "",
            (
                f"Machine: {machine}; OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, torch threads {env['torch_threads']}; "
                f"load average at start {_fmt_load(env.get('loadavg_start'))}, "
                f"at end {_fmt_load(env.get('loadavg_end'))}. "
                f"Whole run {total_s:.0f} s"
                + (f" (JPEG generation {notes['jpeg_generation_s']} s)" if notes else "")
                + "."
            ),
            "",
            (
                f"Settings: batch {args.batch_size}, {args.workers} DataLoader workers in every arm, "
                f"{args.steps} timed steps after {args.warmup} warm-up steps, ours bf16={args.bf16} "
                f"channels_last={args.channels_last} "
                f"compile={args.compile} (the stock arms are the anchor recipe: bf16 on CUDA only), best of "
                f"{args.repeats}."
            ),
            "",
        ]
    )


def _fmt_load(v) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


def environment(device: torch.device) -> dict:
    import datasets
    import timm
    import torchvision
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "datasets": datasets.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "loadavg_start": loadavg(),
    }


def loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def summary(row: dict) -> str:
    """The line printed after each case."""
    if "error" in row:
        return "ERROR " + row["error"]
    if row["kind"] == "finetune":
        return (
            f"stock {_g(row['stock'], 'img_per_s')} img/s, ours {_g(row['ours'], 'img_per_s')} img/s "
            f"(x{row['ratio']}; ours decode once {_g(row['ours'], 'decode_s')} s)"
        )
    if row["kind"] == "probe":
        return (
            f"naive {_g(row['naive'], 'total_s')} s, ours {_g(row['ours'], 'total_s')} s (x{row['ratio']}), "
            f"ours+fast extraction {_g(row['ours_fastx'], 'total_s')} s (x{row['ratio_fastx']})"
        )
    return (
        f"stock {_g(row['stock'], 'img_per_s_end_to_end')} img/s, ours cold "
        f"{_g(row['ours_cold'], 'img_per_s_end_to_end')} (x{row['ratio_cold']}), warm "
        f"{_g(row['ours_warm'], 'img_per_s_end_to_end')} (x{row['ratio_warm']})"
    )
