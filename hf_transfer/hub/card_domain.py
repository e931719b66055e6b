"""Model-card text for domain-adaptation runs: the domain gap and what was done about a partial
label space. Pure functions of ``results.json`` (kept apart from :mod:`hf_transfer.hub.cards` so the
domain-specific wording lives in one small place)."""

from __future__ import annotations

from collections.abc import Iterable

GAP_MEASURES = (
    (
        "proxy_a_distance",
        "proxy A-distance",
        "0 = a linear domain classifier cannot tell source from target, 2 = perfectly separable",
    ),
    ("mmd", "MMD (squared, multi-kernel)", "0 for identical feature distributions"),
)


def _names(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def domain_gap_table(results: dict) -> tuple[list[dict], str]:
    """Rows ``{name, before, after, change, meaning}`` and an intro sentence ([] when not measured)."""
    gap = results.get("domain_gap") or {}
    before, after = gap.get("before") or {}, gap.get("after") or {}
    rows = []
    for key, name, meaning in GAP_MEASURES:
        b, a = before.get(key), after.get(key)
        if b is None and a is None:
            continue
        digits = 3 if key == "proxy_a_distance" else 4
        change = "-" if a is None or b is None else f"{a - b:+.4f}"
        rows.append(
            {"name": name, "before": _num(b, digits), "after": _num(a, digits), "change": change, "meaning": meaning}
        )
    if not rows:
        return [], ""
    n = after.get("num_samples") or before.get("num_samples") or {}
    if results.get("source_free"):  # no source: how far adaptation moved the target's own features
        intro = (
            "Source-free run (no source data): the distance between the target test images' features under the "
            "starting model and under the adapted one (the backbone's pooled features), i.e. how far adaptation "
            f"moved them, on {n.get('target', '?')} target images. 0 = unchanged."
        )
        return rows, intro
    intro = (
        "Distance between the source and target test images in the backbone's pooled features (the input of "
        "the classifier), before training and after adaptation (lower is closer)"
    )
    if n:
        intro += f", on {n.get('source', '?')} source and {n.get('target', '?')} target images"
    intro += ". A smaller gap alone does not mean higher target accuracy: compare with the results above."
    return rows, intro


def label_space_text(results: dict) -> str:
    """One paragraph on ``partial_weighting`` ("" when no class was excluded or weighted)."""
    pw = results.get("partial_weighting") or {}
    method = pw.get("method")
    if method == "exclude" and pw.get("excluded_classes"):
        rows = pw.get("excluded_source_rows", 0)
        counted = (
            "their source training rows (not counted: the source was streamed)"
            if rows is None
            else f"their {rows} source training rows"
        )
        return (
            f"Partial label space: the target dataset does not declare {_names(pw['excluded_classes'])}, so "
            f"{counted} were left out of training (`partial_weighting=exclude`; the head still has these classes)."
        )
    if method == "pada":
        weights = pw.get("class_weights") or {}
        text = (
            f"Partial label space: source classes were weighted with [PADA]({pw.get('paper')}) class weights "
            f"(the mean target prediction, divided by its maximum; re-estimated every {pw.get('every_steps')} "
            f"steps, {pw.get('updates', 0)} estimates) in the source cross-entropy"
            " and the source side of the domain loss (adversarial methods)."
        )
        if weights:
            text += " Final weights: " + ", ".join(f"`{k}` {v:.2f}" for k, v in weights.items()) + "."
        down = pw.get("down_weighted") or []
        text += (
            f" Down-weighted (below {pw.get('down_weighted_below')}): {_names(down)}."
            if down
            else f" No class fell below {pw.get('down_weighted_below')}."
        )
        return text
    return ""


def domain_option_lines(results: dict) -> list[str]:
    """Bullet lines for the shared domain-adaptation options that differ from their defaults."""
    if results.get("mode") != "domain":
        return []
    out = []
    schedule = results.get("trade_off_schedule")
    if schedule and schedule != "constant":
        ramp = {
            "dann": "`trade_off * (2 / (1 + exp(-10 p)) - 1)` over training progress p",
            "linear": f"linear from 0 over the first {results.get('trade_off_warmup')} of training",
        }
        out.append(f"**Transfer-loss weight schedule:** `{schedule}` ({ramp.get(schedule, schedule)}).")
    if results.get("bottleneck_dim"):
        out.append(
            f"**Bottleneck:** Linear + BatchNorm to {results['bottleneck_dim']} dims before a new linear "
            "head during training (the alignment loss sees these features); folded exactly into the one "
            "linear classifier of the exported model."
        )
    ratio = results.get("target_batch_ratio")
    if ratio not in (None, 1, 1.0):
        out.append(f"**Target images per source image in a batch:** {ratio}.")
    return out
