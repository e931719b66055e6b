"""Serving forms benchmark: what each published form costs on the Hub and who serves it, on the built-in digits.

    python benchmarks/serving_forms.py                      # ~5 min on 2 CPU cores; needs .venv-endpoints
    python benchmarks/serving_forms.py --results benchmarks/results/serving_forms.md

Nothing is downloaded: a local Hub test server (``hf_transfer.testing``) holds everything. Two bases are
made first (timm ``test_resnet``, 32 px, trained on the printed digits): one with the target's 10 labels,
one with only the first 5 ("an ImageNet base with other labels"). Then each form is trained on the
handwritten digits and pushed with ``--push_to_hub`` (so the round-trip check ran on every form):

- full fine-tune of a transformers-native ConvNeXt (random init, local base), and of the timm base;
- LoRA (r=8) on the 5-label base with ``--publish both``, ``merged`` and ``adapter``;
- LoRA on the 10-label base with ``--publish adapter``.

Each repo is then served from a fresh cache by ``tests/endpoint_contract.py`` (what the Inference Endpoints
container does: ``handler.py`` if present, else ``pipeline(model=dir, feature_extractor=dir)``) under
``.venv-endpoints`` (transformers 4.51.3, the toolkit's pins), and by ``pipeline(model=repo)`` with no
arguments (the contract with ``--no-handler``) under the project's transformers and 4.51.3. Accuracy is
over the WHOLE target test split, sent image by image as PNG; "in-process" is the run's own
``results.json`` target test accuracy (same images, the training code's input path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONTRACT = ROOT / "tests" / "endpoint_contract.py"
ENDPOINTS_PYTHON = ROOT / ".venv-endpoints" / "bin" / "python"
SOURCE, TARGET = "builtin:digits-printed", "builtin:digits-handwritten"
COMMON = {
    "image_size": 32,
    "crop_pct": 1.0,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 512,
    "optim": "sgd",
    "learning_rate": 0.05,
    "save_strategy": "no",
    "eval_strategy": "no",
    "report_to": "none",
    "use_cpu": True,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
    "seed": 0,
}


def train(args: dict) -> dict:
    from hf_transfer.config import arguments_from_dict
    from hf_transfer.training.run import run_transfer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_transfer(*arguments_from_dict({**COMMON, **args}))


def test_images(folder: Path) -> tuple[list[str], list[str]]:
    """The target's whole test split as PNG files, and the true label names."""
    from hf_transfer.data.load import load_domain
    from hf_transfer.data.spec import parse_dataset_spec

    test = load_domain(parse_dataset_spec(TARGET), None, None, seed=0)["test"]
    names = test.features["label"].names
    folder.mkdir(parents=True, exist_ok=True)
    files, labels = [], []
    for i, row in enumerate(test):
        path = folder / f"{i}.png"
        row["image"].convert("RGB").save(path)
        files.append(str(path))
        labels.append(names[row["label"]])
    return files, labels


def contract(server, python: str, repo: str, files: list[str], *flags: str) -> dict:
    env = server.subprocess_env(tempfile.mkdtemp(prefix="serving_home_"))
    env.pop("PYTHONPATH", None)
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [python, str(CONTRACT), repo, "--top_k", "1", *flags, "--images", *files],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {"served": False, "error": proc.stderr[-500:]}


def accuracy(answer: dict, labels: list[str]) -> float | None:
    if not answer.get("served"):
        return None
    return sum(p[0]["label"] == y for p, y in zip(answer["predictions"], labels, strict=True)) / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="outputs/benchmarks/serving_forms.md")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    if not ENDPOINTS_PYTHON.is_file():
        sys.exit("Run scripts/setup_endpoints.sh first (.venv-endpoints: the Endpoints toolkit's pins).")
    from huggingface_hub import HfApi

    from hf_transfer.testing.hub_common import USER, USER_TOKEN
    from hf_transfer.testing.hub_server import HubTestServer
    from hf_transfer.testing.tiny_models import convnext_folder

    start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="serving_forms_"))
    steps = args.steps
    forms = [
        ("full, transformers-native ConvNeXt", "user/convnext-full"),
        ("full, timm (TimmWrapper)", "user/timm-full"),
        ("LoRA --publish both (default)", "user/lora-both"),
        ("LoRA --publish merged", "user/lora-merged"),
        ("LoRA --publish adapter, base with other labels", "user/lora-adapter"),
        ("LoRA --publish adapter, base with the same labels", "user/lora-adapter-same"),
    ]
    rows = []
    with HubTestServer(tmp / "hub", tokens={USER_TOKEN: USER}) as server:
        with server.client_environment(home=tmp / "home", token=USER_TOKEN):
            api = HfApi()
            for repo, classes in (("user/digits-base", None), ("user/five-base", "first:5")):
                out = tmp / repo.split("/")[1]
                extra = {"target_classes": classes} if classes else {}
                train({"mode": "task", "method": "full", "backbone": "test_resnet", "target": SOURCE,
                       "max_steps": 300, "output_dir": str(out), **extra})  # fmt: skip
                api.create_repo(repo)
                api.upload_folder(folder_path=str(out), repo_id=repo)
            push = {"push_to_hub": True, "target": TARGET, "max_steps": steps, "mode": "task"}
            lora = {**push, "method": "lora", "lora_r": 8, "backbone": "user/five-base"}
            results = {
                "user/convnext-full": train(
                    {
                        **push,
                        "method": "full",
                        "backbone": convnext_folder(tmp / "convnext", num_labels=10, hidden_sizes=(16, 32)),
                        "hub_model_id": "user/convnext-full",
                        "output_dir": str(tmp / "r1"),
                    }  # fmt: skip
                ),
                "user/timm-full": train(
                    {
                        **push,
                        "method": "full",
                        "backbone": "user/digits-base",
                        "backbone_lr_scale": 0.1,
                        "hub_model_id": "user/timm-full",
                        "output_dir": str(tmp / "r2"),
                    }  # fmt: skip
                ),
            }
            for publish, repo in (("both", "user/lora-both"), ("merged", "user/lora-merged")):
                results[repo] = train({**lora, "publish": publish, "hub_model_id": repo, "output_dir": str(tmp / repo)})
            results["user/lora-adapter"] = train(
                {**lora, "publish": "adapter", "hub_model_id": "user/lora-adapter", "output_dir": str(tmp / "r5")}
            )
            results["user/lora-adapter-same"] = train(
                {
                    **lora,
                    "backbone": "user/digits-base",
                    "publish": "adapter",
                    "hub_model_id": "user/lora-adapter-same",
                    "output_dir": str(tmp / "r6"),
                }  # fmt: skip
            )
        files, labels = test_images(tmp / "test_images")
        for name, repo in forms:
            pushed = server.files(repo)
            weights = sum(
                len(b) for p, b in pushed.items() if p.endswith(".safetensors") and not p.startswith("adapter/")
            )
            adapter_bytes = sum(
                len(b) for p, b in pushed.items() if p.startswith("adapter/") and p.endswith(".safetensors")
            )
            endpoint = contract(server, str(ENDPOINTS_PYTHON), repo, files)
            no_args_new = contract(server, sys.executable, repo, files, "--no-handler")
            no_args_old = contract(server, str(ENDPOINTS_PYTHON), repo, files, "--no-handler")
            row = {
                "form": name,
                "repo": repo,
                "repo_bytes": sum(len(b) for b in pushed.values()),
                "weights_bytes": weights + adapter_bytes,
                "files": sorted(p for p in pushed if not p.startswith("examples/") and not p.endswith(".png")),
                "handler": "handler.py" in pushed,
                "pipeline_no_args": {
                    "project": no_args_new.get("served", False),
                    "4.51.3": no_args_old.get("served", False),
                },
                "endpoint_served_4513": endpoint.get("served", False),
                "endpoint_how": endpoint.get("how"),
                "endpoint_error": None if endpoint.get("served") else endpoint.get("error"),
                "accuracy_endpoint_4513": accuracy(endpoint, labels),
                "accuracy_pipeline_no_args": accuracy(no_args_new, labels),
                "accuracy_in_process": results[repo]["metrics"]["target"]["accuracy"],
                "in_process_n": results[repo]["metrics"]["target"]["num_samples"],
            }
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("files", "endpoint_error")}), flush=True)
    write(rows, len(files), args.results, time.time() - start)


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def write(rows: list[dict], n: int, path: str, seconds: float) -> None:
    import torch
    import transformers

    lines = [
        "# Serving forms: size, who serves them, accuracy served vs in-process",
        "",
        f"`python benchmarks/serving_forms.py --results {path}` ({seconds / 60:.1f} min on {os.cpu_count()} CPU cores, "
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}; "
        "Endpoint = tests/endpoint_contract.py under .venv-endpoints: transformers 4.51.3, huggingface_hub 0.30.2, "
        "peft 0.15.1). Tiny timm `test_resnet` / ConvNeXt models at 32 px on the built-in digits, so the sizes "
        "are small in absolute terms; the ratios are what transfer.",
        "",
        f"Accuracy: the whole target test split ({n} handwritten digits), sent one PNG per request; in-process = "
        "the run's results.json (same images, the training input path).",
        "",
        "| form | repo size (weights) | pipeline(model=repo) with no args (5.x / 4.51.3) | Endpoint-served (4.51.3) "
        "| accuracy served by the Endpoint | in-process accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['form']} | {r['repo_bytes'] / 1e3:.0f} kB ({r['weights_bytes'] / 1e3:.0f} kB) | "
            f"{_yes(r['pipeline_no_args']['project'])} / {_yes(r['pipeline_no_args']['4.51.3'])} | "
            f"{_yes(r['endpoint_served_4513'])}{' (handler.py)' if r['handler'] else ''} | "
            f"{_pct(r['accuracy_endpoint_4513'])} | {_pct(r['accuracy_in_process'])} |"
        )
    lines += [
        "",
        "Repo size counts every pushed file (weights, configs, card, plots, examples); weights = the `.safetensors`"
        " files (for `both`: merged model + adapter).",
        "The ConvNeXt starts from random init (no pretrained transformers-native model is available offline), hence "
        "its low accuracy; what the table checks is served = in-process.",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")
    Path(path).with_suffix(".json").write_text(json.dumps({"test_images": n, "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
