"""``hf-transfer rank``: its options; the ranking is :mod:`hf_transfer.selection.rank`'s."""

from __future__ import annotations

import argparse

from hf_transfer.evaluation.ranking import SCORES
from hf_transfer.runtime.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf-transfer rank",
        allow_abbrev=False,
        description="Rank candidate backbones for a target dataset from one cached frozen feature pass each "
        "(LogME, LEEP, NCE, H-score, SFDA, leave-one-out k-NN; optionally a cross-validated linear probe).",
    )
    p.add_argument("--target", required=True, help="target dataset spec (labelled): org/name, ./folder, builtin:NAME")
    p.add_argument("--backbones", required=True, nargs="+", metavar="ID", help="candidate backbone ids (two or more)")
    p.add_argument("--source", default=None, help="source dataset spec: the target's classes are aligned with it")
    p.add_argument("--output_dir", required=True, help="folder for ranking.json, ranking.png (and train configs)")
    p.add_argument("--rank_by", default="sfda", choices=SCORES, help="the score that orders the table (sfda)")
    p.add_argument("--probe", action="store_true", help="also a 5-fold cross-validated linear-probe accuracy")
    p.add_argument("--top_k", type=int, default=None, help="write a feature-mode training config for the K best")
    p.add_argument("--image_size", type=int, default=None, help="override every candidate's input size")
    p.add_argument("--crop_pct", type=float, default=None, help="override every candidate's eval crop fraction")
    p.add_argument("--max_train_samples", type=int, default=None, help="score a seeded subset of the train split")
    p.add_argument("--seed", type=int, default=42, help="seed of the subset and of random-init weights (42)")
    p.add_argument("--knn_k", type=int, default=5, help="neighbours of the k-NN score (5)")
    p.add_argument("--label_policy", default=None, help="with --source: shared | partial | strict")
    p.add_argument("--image_column", default=None)
    p.add_argument("--label_column", default=None)
    p.add_argument("--feature_cache_dir", default=None, help="default: $HF_TRANSFER_CACHE/features")
    p.add_argument("--input_path", default="fast", choices=("fast", "stock"))
    p.add_argument("--feature_batch_size", type=int, default=256)
    return p


def main(argv: list[str]) -> int:
    """The command; exit 2 when a candidate could not be ranked (the others are, and are written)."""
    import sys

    args = _parser().parse_args(argv)
    setup_logging()
    from hf_transfer.selection.rank import rank_backbones

    result = rank_backbones(args)
    print(result["table"])
    print(f"Ranking of {len(result['ranking'])} backbones in {result['seconds']:.1f}s: {args.output_dir}/ranking.json")
    for entry in result.get("top_k", []):
        print(f"Train {entry['backbone']}: {entry['command']}")
    for entry in result["not_ranked"]:
        print(f"hf-transfer rank: error: not ranked: {entry['error']}", file=sys.stderr)
    return 2 if result["not_ranked"] else 0
