"""After training, before the export: the choices between weights the run made, each on the validation split held
out of the labelled training split (:mod:`hf_transfer.data.validation`), never on a test split.

1. ``--model_ema``: the moving average or the raw weights, whichever scores higher on validation (a tie keeps the
   raw weights); both are scored on every evaluated domain too, for results.json and the card.
2. ``--wise_ft_alpha``: the chosen weights are interpolated with the starting ones for each alpha
   (:mod:`hf_transfer.methods.finetune.wise_ft`), the head at alpha=0 being LP-FT's probe head when the run has
   one; every alpha is scored on validation and on every evaluated domain, and the best on validation (a tie: the
   larger alpha) is exported.

Every process runs these passes (``Trainer.predict`` gathers the rows across processes) and holds the same weights
after them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from hf_transfer.methods.finetune.lp_ft import ProbeThenFineTune
from hf_transfer.methods.finetune.wise_ft import interpolate, parse_alphas
from hf_transfer.training.build import PreparedRun
from hf_transfer.training.trainer import TransferTrainer

logger = logging.getLogger(__name__)

VALIDATION_RULE = (
    "chosen on the validation split held out of the labelled training split (validation_fraction), never on a "
    "test split"
)


def accuracy(trainer: TransferTrainer, dataset: torch.utils.data.Dataset, name: str) -> float:
    """The accuracy of the trainer's model now on ``dataset`` (gathered over processes, not logged)."""
    metrics = trainer.predict(dataset, metric_key_prefix=name).metrics
    assert metrics is not None, "the run's compute_metrics scores every labelled set"
    return float(metrics[f"{name}_accuracy"])


def scores(run: PreparedRun) -> dict[str, float]:
    """The accuracy on the validation split and on every evaluated domain's test split, by name."""
    assert run.validation_set is not None, "the run holds out a validation split for its choices"
    out = {"validation": accuracy(run.trainer, run.validation_set, "validation")}
    for name, ds in run.eval_sets.items():
        out[name] = accuracy(run.trainer, ds, f"test_{name}")
    return out


def choose_ema(run: PreparedRun) -> dict[str, Any] | None:
    """``--model_ema``: keep the average or the raw weights, the better on validation; what both scored."""
    ema = run.trainer.model_ema
    if ema is None:
        return None
    raw = scores(run)
    with ema.swapped_in():
        averaged = scores(run)
    chosen = "ema" if averaged["validation"] > raw["validation"] else "raw"
    if chosen == "ema":
        ema.load_into()
    logger.info(
        "model_ema: validation accuracy %.4f (EMA) vs %.4f (raw weights): exporting the %s weights.",
        averaged["validation"],
        raw["validation"],
        "EMA" if chosen == "ema" else "raw",
    )
    return {
        "decay": ema.decay,
        "warmup": ema.warmup,
        "exported": chosen,
        "rule": VALIDATION_RULE + "; a tie keeps the raw weights",
        "accuracy": {"ema": averaged, "raw": raw},
    }


def start_with_head(run: PreparedRun) -> tuple[dict[str, torch.Tensor], str]:
    """WiSE-FT's alpha=0 state: the starting weights with LP-FT's probe head when the run has one; and its name."""
    assert run.start_state is not None, "build_run keeps the starting state with --wise_ft_alpha"
    start = dict(run.start_state)
    unfreezing = getattr(run.mode, "unfreezing", None)
    if isinstance(unfreezing, ProbeThenFineTune):
        if unfreezing.probe_head is None:
            raise RuntimeError("lp_ft ended without reaching its stage boundary: no probe head for WiSE-FT")
        prefix = run.backbone.head_name + "."
        start.update({prefix + k: v for k, v in unfreezing.probe_head.items()})
        return start, "the LP-FT probe head (at the stage boundary) on the starting backbone"
    return start, "the starting backbone with its own pretrained head"


@torch.no_grad()
def _load(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, value in model.state_dict().items():
        value.copy_(state[name])


def wise_ft(run: PreparedRun) -> dict[str, Any] | None:
    """``--wise_ft_alpha``: score every alpha, keep the best on validation; the sweep and the choice."""
    if run.args.wise_ft_alpha is None:
        return None
    model = run.backbone.model
    start, head = start_with_head(run)
    finetuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sweep: list[tuple[float, dict[str, float]]] = []
    for alpha in parse_alphas(run.args.wise_ft_alpha):
        _load(model, interpolate(start, finetuned, alpha))
        sweep.append((alpha, scores(run)))
    best, best_scores = max(sweep, key=lambda row: (row[1]["validation"], row[0]))
    _load(model, interpolate(start, finetuned, best))
    logger.info("WiSE-FT: alpha %.2f is best on validation (%.4f).", best, best_scores["validation"])
    return {
        "alphas": [alpha for alpha, _ in sweep],
        "exported_alpha": best,
        "alpha_0": head,
        "rule": VALIDATION_RULE + "; a tie takes the larger alpha",
        "sweep": [{"alpha": alpha, "accuracy": accuracies} for alpha, accuracies in sweep],
    }


def validation_record(run: PreparedRun) -> dict[str, Any] | None:
    """Which split chose, and its size, for results.json (None when the run made no choice)."""
    if run.validation_set is None:
        return None
    domain = "source" if run.args.mode == "domain" else "target"
    return {
        "domain": domain,
        "held_out_of": f"{domain} train",
        "fraction": run.args.validation_fraction,
        "rows": len(run.validation_set),  # type: ignore[arg-type]  # every eval set of the run is sized
    }


def choose_weights(run: PreparedRun) -> dict[str, Any]:
    """The EMA choice, then WiSE-FT on the chosen weights; the results.json keys they fill (none when unused)."""
    out = {"model_ema": choose_ema(run), "wise_ft": wise_ft(run), "validation": validation_record(run)}
    return {k: v for k, v in out.items() if v is not None}
