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


def _med(r: dict, key: str) -> str:
    """``median (min-max)`` of an arm over the passes, or the single value."""
    if "error" in r:
        return "ERROR"
    lo, hi = r.get("spread", [None, None])
    return f"{r[key]} ({lo}-{hi})" if lo is not None and len(r.get("all_" + key, [])) > 1 else str(r[key])


def _ratio_cell(r: dict, prefix: str = "ratio") -> str:
    value, rng = r.get(prefix), r.get(prefix + "_range")
    if value is None:
        return "-"
    return f"**{value}x** ({rng[0]}-{rng[1]})" if rng and rng[0] != rng[1] else f"**{value}x**"


def _stock_arms(r: dict, prefix: str) -> list[str]:
    return [k for k in r if k.startswith(prefix) and isinstance(r[k], dict)]


def _stock_cell(r: dict, prefix: str, key: str) -> str:
    """Every stock thread setting, the anchor (the faster) in bold."""
    cells = []
    for arm in _stock_arms(r, prefix):
        a = r[arm]
        text = f"{_med(a, key)} [{a.get('threads', '?')}t]"
        cells.append(f"**{text}**" if arm == r.get("anchor") else text)
    return "<br>".join(cells)


def _ours_cell(r: dict) -> str:
    """Ours as shipped, and ours at the stock arms' worker count when that was run too."""
    cells = []
    for arm in ("ours", "ours_same_workers"):
        if isinstance(r.get(arm), dict):
            cells.append(f"{_med(r[arm], 'img_per_s')} [{r[arm].get('workers', '?')}w]")
    return "<br>".join(cells)


def markdown(rows: list[dict], args) -> str:
    out = []
    ft = [r for r in rows if r["kind"] == "finetune" and "error" not in r]
    if ft:
        cells = []
        for r in ft:
            o = r["ours"]
            if "error" in o:
                opts, decode = "-", "-"
            else:
                opts = ", ".join(k for k, v in o["options"].items() if v is True) or "eager fp32"
                opts += f", aug {o['options']['augment_impl']}, {o.get('threads', '?')} threads" + (
                    " (compile failed: eager)" if "compile_error" in o else ""
                )
                decode = f"{o['decode_s']} ({o['decoded_splits']} splits)"
            anchor = r[r["anchor"]]
            cells.append(
                [
                    f"{r['model']} @ {r['size']}",
                    r["data"],
                    _stock_cell(r, "stock", "img_per_s"),
                    _ours_cell(r),
                    _ratio_cell(r)
                    + (f"<br>{_ratio_cell(r, 'ratio_same_workers')}" if "ratio_same_workers" in r else ""),
                    opts,
                    decode,
                    f"{_g(anchor, 'setup_s')} / {_g(o, 'setup_s')}",
                    _mem(anchor),
                    _mem(o),
                ]
            )
        out += _table(
            f"### Fine-tuning: steady-state training img/s, median (range) of {args.repeats} passes (batch "
            f"{args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up; loader workers: stock "
            f"{args.workers}, ours {args.ours_workers} as shipped, and {args.workers} below it)",
            [
                "model @ px",
                "data",
                "stock img/s [threads] (anchor in bold)",
                "ours img/s [loader workers]",
                "ratio to the anchor (range of per-pass ratios)",
                "ours options",
                "ours one-time decode s",
                "setup s anchor / ours",
                "memory MB: main peak RSS + workers PSS (GPU peak) anchor",
                "ours",
            ],
            cells,
        )
    pr = [r for r in rows if r["kind"] == "probe" and "error" not in r]
    if pr:

        def parts(x):
            if "error" in x:
                return "ERROR"
            extra = f", {x['lbfgs_iterations']} iterations" if x.get("lbfgs_iterations") else ""
            return f"{_med(x, 'total_s')} ({x['extract_s']} + {x['head_train_s']}{extra})"

        def accuracy(r):
            return " / ".join(
                str(_g(r[a], "accuracy")) for a in (r["anchor"], "ours", "ours_lbfgs") if isinstance(r.get(a), dict)
            )

        cells = [
            [
                f"{r['model']} @ {r['size']}",
                r["data"],
                _g(r["ours"], "images"),
                _stock_cell(r, "naive", "total_s"),
                parts(r["ours"]),
                _ratio_cell(r),
                parts(r["ours_lbfgs"]),
                _ratio_cell(r, "ratio_lbfgs"),
                accuracy(r),
                f"{_mem(r[r['anchor']])} / {_mem(r['ours'])} / {_mem(r['ours_lbfgs'])}",
            ]
            for r in pr
        ]
        out += _table(
            f"### {args.probe_epochs}-epoch linear probe: total wall time s, setup included, median (range) of "
            f"{args.repeats} passes",
            [
                "model @ px",
                "data",
                "train images",
                "naive frozen Trainer s [threads] (anchor in bold)",
                "ours, SGD head (Trainer) s (extract + head)",
                "ratio",
                "ours, L-BFGS head s (extract + head)",
                "ratio",
                "test accuracy anchor / ours SGD / ours L-BFGS",
                "memory MB anchor / ours / ours L-BFGS",
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
    load = env.get("load") or {}
    verdict = load.get("verdict", "unknown")
    return "\n".join(
        [
            f"# Speed: stock recipe vs hf_transfer, side by side in one process ({machine})",
            "",
            f"**Machine: {verdict}.** Load average (1/5/15 min) at the start {_fmt_load(load.get('loadavg_start'))}, "
            f"at the end {_fmt_load(load.get('loadavg_end'))} (the end counts this benchmark's own processes); "
            f"cores kept busy by OTHER processes during the run: mean {load.get('foreign_cores_mean')}, "
            f"max {load.get('foreign_cores_max')} (limit for an idle run: {load.get('busy_limit_cores')} = 0.5 per "
            f"core, at the start and on average)."
            + (f" Waited {load['waited_for_idle_s']} s for an idle machine." if load.get("waited_for_idle_s") else ""),
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
                f"Machine: {machine}; OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, torch's default threads "
                f"{env['torch_threads']}. Whole run {total_s:.0f} s"
                + (f" (JPEG generation {notes['jpeg_generation_s']} s)" if notes else "")
                + "."
            ),
            "",
            (
                f"Settings: batch {args.batch_size}, {args.workers} DataLoader workers in every stock arm and the "
                f"probe/extraction arms that use them; ours fine-tunes with {args.ours_workers} (hf_transfer's default"
                f"{' on the CPU' if args.ours_workers == 0 else ''}) and also with {args.workers} when that differs, "
                f"{args.steps} timed steps after {args.warmup} warm-up steps, ours bf16={args.bf16} "
                f"channels_last={args.channels_last} (resolved per arm: the options column) "
                f"compile={args.compile} (the stock arms are the anchor recipe: bf16 on CUDA only); {args.repeats} "
                "passes, every arm once per pass, interleaved."
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
    }


def summary(row: dict) -> str:
    """The line printed after each case."""
    if "error" in row:
        return "ERROR " + row["error"]
    if row["kind"] == "finetune":
        stock = ", ".join(f"{a} {_g(row[a], 'img_per_s')}" for a in _stock_arms(row, "stock"))
        return (
            f"{stock} img/s, ours {_g(row['ours'], 'img_per_s')} img/s "
            f"(x{row['ratio']} vs {row['anchor']}, per pass {row.get('ratio_all')})"
            + (
                f"; ours at the stock's workers {_g(row['ours_same_workers'], 'img_per_s')} img/s "
                f"(x{row.get('ratio_same_workers')}, per pass {row.get('ratio_all_same_workers')})"
                if isinstance(row.get("ours_same_workers"), dict)
                else ""
            )
        )
    if row["kind"] == "probe":
        naive = ", ".join(f"{a} {_g(row[a], 'total_s')} s" for a in _stock_arms(row, "naive"))
        return (
            f"{naive}; ours {_g(row['ours'], 'total_s')} s (x{row['ratio']}), ours L-BFGS "
            f"{_g(row['ours_lbfgs'], 'total_s')} s (x{row.get('ratio_lbfgs')}); accuracy "
            f"{_g(row[row['anchor']], 'accuracy')} / {_g(row['ours'], 'accuracy')} / "
            f"{_g(row['ours_lbfgs'], 'accuracy')}"
        )
    return (
        f"stock {_g(row['stock'], 'img_per_s_end_to_end')} img/s, ours cold "
        f"{_g(row['ours_cold'], 'img_per_s_end_to_end')} (x{row['ratio_cold']}), warm "
        f"{_g(row['ours_warm'], 'img_per_s_end_to_end')} (x{row['ratio_warm']})"
    )
