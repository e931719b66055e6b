"""The card's results section: the metrics tables (with Wilson intervals, the baseline, the upper bound and the base
model's "before" row), the notes on unscored classes and run health, and the limitations. Pure functions of
``results.json`` (and the optional baseline / upper-bound results)."""

from __future__ import annotations

import math
import os

from hf_transfer.evaluation.negative_transfer import recorded_or_new, warning_text
from hf_transfer.hub.card_domain import domain_gap_table
from hf_transfer.hub.card_inputs import (
    CONFUSION_PNG,
    CURVES_PNG,
    WISE_FT_PNG,
    accuracy,
    pct,
)
from hf_transfer.hub.card_provenance import initialisation
from hf_transfer.methods.registry import is_baseline


def wilson_interval(acc: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on ``n`` images (scipy's ``binomtest``).

    Unlike the normal approximation it does not collapse to +-0 at 0% or 100%, and stays inside [0, 1].
    """
    from scipy.stats import binomtest

    ci = binomtest(int(round(acc * n)), n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def train_loss_text(results: dict) -> float | str:
    """The mean training loss, rounded (``nan``/``inf`` as words: a diverged run says so)."""
    value = float(results["train_loss"])
    return round(value, 4) if math.isfinite(value) else str(value)


def health_warnings(results: dict) -> list[str]:
    """The run's divergence warnings (loss ended far above its start, accuracy at chance), from results.json."""
    return list((results.get("health") or {}).get("warnings") or [])


def _ci(acc: float, n: int | None) -> str:
    if not n:  # no count, no interval
        return ""
    low, high = wilson_interval(acc, int(n))
    return f" ({100 * low:.1f}-{100 * high:.1f})"


def base_before(results: dict) -> dict | None:
    """The base checkpoint's own head on the target test set before adaptation, shaped like a results dict.

    From ``base_model_evaluation``, written by training only when its class names overlap the target's.
    """
    ev = results.get("base_model_evaluation")
    if not ev or not ev.get("metrics"):
        return None
    name = results.get("base_model") or os.path.basename(str(ev.get("model", "base")).rstrip(os.sep))
    metrics = {**ev["metrics"], "per_class_accuracy": ev.get("per_class_accuracy_by_target_class") or {}}
    return {"name": name, "partial": bool(ev.get("excluded_rows")), "metrics": {"target": metrics}, "eval": ev}


def base_before_note(before: dict | None) -> str:
    """What the base row is, and, when its head knows only some target classes, which rows it was scored on."""
    if before is None:
        return ""
    ev, m = before["eval"], before["metrics"]["target"]
    text = (
        "The base-model row is the base checkpoint with its own pretrained classifier, before any adaptation, "
        "on the same target test images with the same preprocessing (classes matched by name)."
    )
    if before["partial"]:
        same = ev.get("this_model_same_rows") or {}
        text += (
            f" † Its head knows {len(ev['label_names'])} of the target classes: it is scored on the "
            f"{m['num_samples']} test images of those classes (argmax over them; "
            f"{sum(ev['excluded_rows'].values())} images of other classes excluded)"
        )
        if same.get("accuracy") is not None:
            text += (
                f"; this model scores {pct(same['accuracy'])} (macro-F1 {100 * same['macro_f1']:.1f}) "
                "on the same images"
            )
        text += "."
    return text


def results_tables(results: dict, baseline: dict | None, upper: dict | None, method_title: str) -> dict:
    """The results table and the per-class table.

    The results table has a row for this model, the base model before adaptation, the baseline and the upper
    bound, with columns per domain.
    """
    method = results.get("method")
    domains = [d for d in ("target", "source") if d in (results.get("metrics") or {})]
    columns = []
    for d in domains:
        columns += [f"{d} test accuracy", f"{d} macro-F1"]
    rows = []
    entries = [(f"**this model** ({method_title})", results)]
    before = base_before(results)
    if before is not None:
        entries.append(
            (
                f"base model before adaptation (`{before['name']}`, its own head){' †' if before['partial'] else ''}",
                before,
            )
        )
    if baseline and not is_baseline(method):
        entries.append(("source-only baseline", baseline))
    if upper:
        entries.append(("upper bound: trained on target labels", upper))
    for name, res in entries:
        values = []
        for d in domains:
            m = (res.get("metrics") or {}).get(d)
            values += (
                ["-", "-"]
                if not m
                else [
                    f"{pct(m['accuracy'])}{_ci(m['accuracy'], m.get('num_samples'))}",
                    f"{100 * m['macro_f1']:.1f}" if m.get("macro_f1") is not None else "-",
                ]
            )
        rows.append({"name": name, "values": values})
    labels = results.get("label_names") or []
    pc_rows = []
    sources = [("target (this model)", results, "target")]
    if before is not None:
        sources.append(("target (base model, before)", before, "target"))
    if baseline and not is_baseline(method):
        sources.append(("target (baseline)", baseline, "target"))
    if "source" in domains:
        sources.append(("source (this model)", results, "source"))
    sources = [
        s for s in sources if ((s[1].get("metrics") or {}).get(s[2]) or {}).get("per_class_accuracy") is not None
    ]
    pc_cols = [s[0] for s in sources]
    for i, lab in enumerate(labels):
        vals = []
        for _, res, d in sources:
            pca = res["metrics"][d]["per_class_accuracy"]
            v = pca.get(lab) if isinstance(pca, dict) else (pca[i] if i < len(pca) else None)
            vals.append(pct(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "-")
        pc_rows.append({"name": lab, "values": vals})
    return {"result_columns": columns, "results_table": rows, "per_class_columns": pc_cols, "per_class_table": pc_rows}


def unscored_note(results: dict) -> str:
    """Which classes the card's numbers say nothing about (no test row in a domain): '' when none."""
    from hf_transfer.evaluation.metrics import unscored_classes, unscored_message

    labels = results.get("label_names") or []
    notes = []
    for domain in ("target", "source"):
        per_class = ((results.get("metrics") or {}).get(domain) or {}).get("per_class_accuracy")
        if isinstance(per_class, list) and len(per_class) == len(labels):
            names = unscored_classes(per_class, labels)
            if names:
                notes.append(unscored_message(f"{domain} test", names, len(labels)) + " Their per-class cells are '-'.")
    return " ".join(notes)


def results_vars(results: dict, baseline: dict | None, upper: dict | None, method_title: str, figures: bool) -> dict:
    """Template variables of the results sections: tables, figures, the domain gap and what is missing."""
    from hf_transfer.evaluation.plots import curve_series

    mode, method = results.get("mode"), results.get("method")
    has_cm = figures and "confusion_matrix" in ((results.get("metrics") or {}).get("target") or {})
    has_curves = figures and bool(curve_series(results.get("log_history") or []))
    note = []
    if results.get("source_free"):  # its baseline is the starting model, scored on the same rows (base row)
        note.append("Source-free: the baseline is the starting model before adaptation (the base-model row).")
    elif accuracy(baseline, "target") is None and not is_baseline(method) and mode == "domain":
        note.append("No source-only baseline was given for this card.")
    if accuracy(upper, "target") is None:
        note.append("No target-supervised upper bound was given for this card.")
    before_note = base_before_note(base_before(results))
    if before_note:
        note.insert(0, before_note)
    if unscored := unscored_note(results):
        note.insert(0, unscored)
    if has_cm:  # names the figure had to cut, or could not draw with the fonts installed here
        from hf_transfer.evaluation.plot_text import label_note

        if names_note := label_note(results.get("label_names") or []):
            note.append(names_note)
    gap_rows, gap_intro = domain_gap_table(results)
    return dict(
        results_intro=(
            "Accuracy on the held-out test split of each domain (in brackets: its 95% Wilson score interval "
            "from the number of test images); macro-F1 in points."
        ),
        results_note=" ".join(note),
        confusion_png=CONFUSION_PNG if has_cm else None,
        curves_png=CURVES_PNG if has_curves else None,
        domain_gap_rows=gap_rows,
        domain_gap_intro=gap_intro,
        **results_tables(results, baseline, upper, method_title),
        **robust_vars(results, figures),
    )


def _ordered(scores: dict) -> list[str]:
    """Split names: validation first (it chose), then target, source and any other evaluated domain."""
    first = [n for n in ("validation", "target", "source") if n in scores]
    return first + sorted(set(scores) - set(first))


def _splits(scores: dict) -> str:
    return ", ".join(f"{n if n == 'validation' else n + ' test'} {pct(scores[n])}" for n in _ordered(scores))


def robust_vars(results: dict, figures: bool) -> dict:
    """The card's lines on the weights chosen on the validation split (``model_ema``, ``wise_ft``) and the sweep."""
    lines, rows, columns = [], [], []
    validation = results.get("validation") or {}
    if validation:
        lines.append(
            f"The choices below were made on a validation split of {validation['rows']} images held out of the "
            f"{validation['held_out_of']} split ({100 * validation['fraction']:g}%), never on a test split."
        )
    ema = results.get("model_ema")
    if ema:
        kept = "the moving average (EMA)" if ema["exported"] == "ema" else "the raw weights"
        lines.append(
            f"**Model EMA** (decay {ema['decay']:g}{', warm-up' if ema['warmup'] else ''}): this model holds {kept}. "
            f"EMA: {_splits(ema['accuracy']['ema'])}; raw: {_splits(ema['accuracy']['raw'])}."
        )
    wise = results.get("wise_ft")
    if wise:
        lines.append(
            f"**WiSE-FT**: this model is (1 - alpha) * start + alpha * fine-tuned at alpha={wise['exported_alpha']:g}, "
            f"the best on validation; at alpha=0, {wise['alpha_0']}."
        )
        names = _ordered(wise["sweep"][0]["accuracy"])
        columns = [n if n == "validation" else f"{n} test" for n in names]
        rows = [
            {"name": f"{row['alpha']:g}", "values": [pct(row["accuracy"].get(n)) for n in names]}
            for row in wise["sweep"]
        ]
    has_plot = figures and wise is not None and len(wise.get("sweep") or []) > 1
    return dict(
        robust_lines=lines,
        wise_ft_columns=columns,
        wise_ft_rows=rows,
        wise_ft_png=WISE_FT_PNG if has_plot else None,
    )


def limitations(results: dict, baseline: dict | None) -> list[str]:
    """Bullet lines: sample size, closed label set, what domain adaptation cannot promise, input size."""
    mode = results.get("mode")
    out = [f"Training health: {line}" for line in health_warnings(results)]
    if warning := warning_text(recorded_or_new(results, baseline)):
        out.insert(0, warning)
    tm = (results.get("metrics") or {}).get("target") or {}
    if tm.get("num_samples"):
        out.append(
            f"The numbers above come from {tm['num_samples']} target test images; the bracketed 95% Wilson "
            "intervals show how far the true accuracy may lie, so differences between rows whose intervals "
            "overlap may not be meaningful."
        )
    out.append(
        f"The model only knows the {len(results.get('label_names') or [])} classes listed above; any other "
        "image is still assigned to one of them."
    )
    if mode == "domain":
        out.append(
            "No target labels were used for training, and none for choosing hyper-parameters by this run; "
            "adaptation can still hurt some classes (compare the per-class table with the baseline)."
        )
    if (
        baseline is None
        and not is_baseline(results.get("method"))
        and mode == "domain"
        and not results.get("source_free")
    ):
        out.append("No source-only baseline was attached to this card, so the gain from adaptation is not shown.")
    if results.get("base_model") is None and initialisation(results) == "random":
        out.append(
            "The backbone started from random weights, not from a large-scale pretrained model: expect it to "
            "transfer poorly beyond these domains."
        )
    dc = results.get("data_config") or {}
    if dc.get("input_size"):
        out.append(f"Only evaluated at {dc['input_size'][-1]}x{dc['input_size'][-1]} input resolution.")
    return out
