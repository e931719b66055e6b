"""``hf-transfer tta MODEL --target DATASET --method tent|eata|sar --output_dir DIR``: test-time adaptation, its
options and console summary; the pass is :mod:`hf_transfer.training.tta`'s, the card
:mod:`hf_transfer.hub.card_tta`'s."""

from __future__ import annotations

import argparse
import json

from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.model_source import one_line
from hf_transfer.runtime.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    from hf_transfer.methods.registry import all_methods, default_method
    from hf_transfer.methods.tta.base import TTA_MODE
    from hf_transfer.training.tta import RESETS

    methods = list(all_methods(TTA_MODE))
    p = argparse.ArgumentParser(
        prog="hf-transfer tta",
        allow_abbrev=False,
        description="Adapt an image classifier at test time: one online pass over the target's test split, batch by "
        "batch, updating its normalisation layers (no labels). Writes the adapted model (Hub-ready), results.json "
        "with accuracy before, online and after, and a model card.",
    )
    p.add_argument("model", help="Hub id (org/name, timm/name), a run folder, or a published repo")
    p.add_argument(
        "--target", required=True, help="dataset spec of the target: builtin:NAME, org/name[:config], a folder"
    )
    p.add_argument("--method", default=default_method(TTA_MODE), choices=methods, help="the test-time method")
    p.add_argument("--method_args", default=None, help="the method's own options as JSON, e.g. '{\"rho\": 0.05}'")
    p.add_argument("--output_dir", required=True, help="where the adapted model, results.json and README.md go")
    p.add_argument(
        "--reset", default=None, choices=RESETS, help="reset policy (default: the method's: sar on_collapse)"
    )
    p.add_argument("--collapse_entropy", type=float, default=None, help="--reset on_collapse: the threshold (0.2)")
    p.add_argument("--learning_rate", type=float, default=None, help="SGD rate of the adapted parameters (method's)")
    p.add_argument("--batch_size", type=int, default=64, help="test images per online step (>= 2)")
    p.add_argument("--eval_batch_size", type=int, default=64, help="batch size of the before/after scoring")
    p.add_argument("--handler", action="store_true", help="also write an Endpoints handler.py that keeps adapting")
    p.add_argument("--revision", default=None, help="the model's revision on the Hub")
    p.add_argument("--split", default="test", help="the target split adapted on and scored (test)")
    p.add_argument("--image_column", default=None)
    p.add_argument("--label_column", default=None)
    p.add_argument("--seed", type=int, default=None, help="stream order and subsets (default: a run folder's seed, 42)")
    p.add_argument("--max_samples", type=int, default=None, help="a seeded subset of the split")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--input_path", default="fast", choices=("fast", "stock"))
    p.add_argument("--decoded_cache_dir", default=None)
    p.add_argument("--overwrite_output_dir", action="store_true", help="write into a folder that holds files")
    p.add_argument("--skip_bad_images", action="store_true")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """The checked arguments of ``hf-transfer tta`` (``method_args`` parsed from JSON)."""
    args = _parser().parse_args(argv)
    if args.method_args:
        try:
            args.method_args = json.loads(args.method_args)
        except json.JSONDecodeError as err:
            raise TransferConfigError(f"--method_args is not valid JSON: {err}") from err
        if not isinstance(args.method_args, dict):
            raise TransferConfigError("--method_args must be a JSON object, e.g. '{\"rho\": 0.05}'.")
    return args


def main(argv: list[str]) -> int:
    """Run ``hf-transfer tta`` with ``argv``; prints before / online / after, returns the exit status."""
    from hf_transfer.hub.card_tta import write_tta_card
    from hf_transfer.runtime.folder_lock import lock_folder
    from hf_transfer.training.tta import run_tta

    args = parse(argv)
    setup_logging()
    try:
        results = run_tta(args)
    except TransferConfigError as err:
        raise TransferConfigError(one_line(str(err))) from err
    with lock_folder(args.output_dir, "hf-transfer tta"):
        write_tta_card(args.output_dir, results)
    ba = results["before_after"]
    print(
        f"{results['method']} on {results['target_name']} ({results['split']}): accuracy before "
        f"{100 * ba['before']['accuracy']:.1f}%, online {100 * ba['online']['accuracy']:.1f}%, after "
        f"{100 * ba['after']['accuracy']:.1f}% ({results['tta']['resets']} reset(s)); wrote {args.output_dir}"
    )
    return 0
