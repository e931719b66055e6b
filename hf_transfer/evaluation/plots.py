"""PNG figures of a run's results (the model card's, ``hf-transfer evaluate``'s and ``rank``'s), drawn with Pillow
only (no plotting dependency).

- :func:`confusion_matrix_png`: a row-normalised heat map with the counts written in the cells.
- :func:`training_curves_png`: the Trainer's ``log_history`` against the step, one quantity per panel
  (:func:`curve_panels`): training losses, evaluation accuracy per domain, then each other changing scalar.

Both are deterministic for the same input (no timestamps), so re-pushing an unchanged run uploads
nothing new.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from hf_transfer.evaluation.plot_text import Font

_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
_SKIP_KEYS = {
    "step",
    "epoch",
    "learning_rate",
    "grad_norm",
    "total_flos",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_loss",
    "grl_coeff",
}


def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Font) -> tuple[int, int]:
    box = draw.textbbox((0, 0), text, font=font)  # whole pixels (typed float: anchors may be fractional)
    return int(box[2] - box[0]), int(box[3] - box[1])


def _blues(x: float) -> tuple[int, int, int]:
    x = min(max(x, 0.0), 1.0)
    lo, hi = (247, 251, 255), (8, 48, 107)
    red, green, blue = (int(round(a + (b - a) * x)) for a, b in zip(lo, hi, strict=True))
    return red, green, blue


#: the confusion matrix's grid is at most this many pixels wide (cells shrink, then labels and counts go)
MAX_GRID_PX = 1600


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if _text_size(draw, text, font)[0] <= width:
        return text
    while text and _text_size(draw, text + "…", font)[0] > width:
        text = text[:-1]
    return text + "…"


def confusion_matrix_png(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str, title: str = "") -> str:
    """Rows are true classes, columns predicted ones; colour = fraction of the row, text = count.

    Any labels give a readable figure: long names are cut and names no installed font can draw become their
    class id (:mod:`hf_transfer.evaluation.plot_text`, whose ``label_note`` the card prints); the grid is at most
    :data:`MAX_GRID_PX` wide, counts are written only in cells that fit them and names only in rows that do."""
    from hf_transfer.evaluation.plot_text import label_font, plot_labels

    n = len(labels)
    cell = max(1, min(56, max(28, 560 // max(n, 1)), MAX_GRID_PX // max(n, 1)))
    font_size = min(14, cell - 2)
    names = plot_labels([str(lab) for lab in labels], size=max(font_size, 6))
    font, small = label_font(names, max(font_size, 6)), _font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    show_names = font_size >= 6
    label_w = max([_text_size(probe, t, font)[0] for t in names.texts] + [20]) if show_names else 20
    left, top = label_w + 40, 60 + label_w
    width, height = max(left + n * cell + 20, 320), top + n * cell + 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((10, 8), _fit(draw, title, _font(16), width - 20), fill="black", font=_font(16))
    draw.text((left + n * cell // 2 - 30, top - label_w - 26), "predicted", fill="black", font=font)
    draw.text((6, top + n * cell + 14), "rows: true class", fill="black", font=font)
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        for j, count in enumerate(row):
            frac = count / total
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=_blues(frac), outline=(220, 220, 220))
            if count and cell >= 20:
                text = str(count)
                tw, th = _text_size(draw, text, small)
                if tw > cell - 2:
                    continue
                draw.text(
                    (x0 + (cell - tw) / 2, y0 + (cell - th) / 2 - 1),
                    text,
                    font=small,
                    fill="white" if frac > 0.5 else "black",
                )
    for k, lab in enumerate(names.texts if show_names else []):
        tw, th = _text_size(draw, lab, font)
        draw.text((left - tw - 8, top + k * cell + (cell - th) / 2 - 2), lab, fill="black", font=font)
        # column labels, rotated
        tag = Image.new("RGBA", (tw + 4, th + 6), (255, 255, 255, 0))
        ImageDraw.Draw(tag).text((2, 0), lab, fill="black", font=font)
        tag = tag.rotate(90, expand=True)
        img.paste(tag, (left + k * cell + (cell - tag.width) // 2, top - tag.height - 6), tag)
    img.save(path, format="PNG", optimize=True)
    return path


def curve_series(log_history: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """``{name: [(step, value), ...]}`` for every numeric scalar logged during training."""
    series: dict[str, list[tuple[float, float]]] = {}
    for entry in log_history or []:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if key in _SKIP_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key.endswith(("_runtime", "_samples_per_second", "_steps_per_second")) or not math.isfinite(value):
                continue
            series.setdefault(key, []).append((float(step), float(value)))
    return {k: v for k, v in series.items() if v}


def _range(values: list[float], *, unit: bool = False) -> tuple[float, float]:
    """The y range of a panel: [0, 1] for fractions (accuracy), from 0 when every value is >= 0 (losses),
    else the data's range; padded so that lines do not sit on the frame."""
    lo, hi = min(values), max(values)
    if unit and lo >= 0 and hi <= 1:
        return 0.0, 1.0
    if lo >= 0:
        return 0.0, (hi * 1.05 if hi > 0 else 1.0)
    if hi == lo:
        return lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def curve_panels(log_history: list[dict]) -> list[dict]:
    """What :func:`training_curves_png` draws: one quantity per panel, each ``{"title", "series", "ylim"}``.

    - ``training loss``: the logged training losses (``loss`` and the mode's terms, e.g. ``cls_loss``);
    - ``evaluation accuracy`` / ``evaluation macro-F1`` / ``evaluation loss``: one line per evaluated domain,
      from the ``eval_<domain>_<metric>`` entries (a domain whose loss is 0 throughout, i.e. no labels, is left out);
    - one panel for each other training scalar that changes (e.g. DANN's ``domain_acc``); constants such as
      ``trade_off`` are stated in the card, not plotted.
    """
    series = curve_series(log_history)
    panels: list[dict] = []
    train_losses = {k: v for k, v in series.items() if "loss" in k and not k.startswith("eval_")}
    if train_losses:
        panels.append({"title": "training loss", "series": train_losses})
    for metric, title in (
        ("accuracy", "evaluation accuracy"),
        ("macro_f1", "evaluation macro-F1"),
        ("loss", "evaluation loss"),
    ):
        per_domain = {
            k[len("eval_") : -len(f"_{metric}")]: v
            for k, v in series.items()
            if k.startswith("eval_") and k.endswith(f"_{metric}") and any(y != 0 for _, y in v)
        }
        if per_domain:
            panels.append({"title": title, "series": per_domain, "unit": metric != "loss"})
    for key, pts in sorted(series.items()):
        if key.startswith("eval_") or key in train_losses or len({y for _, y in pts}) < 2:
            continue
        panels.append({"title": key, "series": {key: pts}, "unit": key.endswith(("_acc", "accuracy"))})
    for panel in panels:
        values = [y for pts in panel["series"].values() for _, y in pts]
        panel["ylim"] = _range(values, unit=panel.pop("unit", False))
    return panels


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    series: dict[str, list[tuple[float, float]]],
    title: str,
    ylim: tuple[float, float],
    xlim: tuple[float, float],
    font: Font,
    small: Font,
    xlabel: str = "step",
    xformat: str = ".0f",
) -> None:
    x0, y0, x1, y1 = box
    draw.text((x0, y0 - 22), title, fill="black", font=font)
    draw.rectangle(box, outline=(120, 120, 120))
    (ymin, ymax), (xmin, xmax) = ylim, xlim

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):  # y ticks
        y = ymin + frac * (ymax - ymin)
        _, py = to_px(xmin, y)
        draw.line([(x0, py), (x1, py)], fill=(235, 235, 235))
        draw.text((x0 - 52, py - 7), f"{y:.3g}", fill="black", font=small)
    for frac in (0.0, 0.5, 1.0):  # x ticks
        x = xmin + frac * (xmax - xmin)
        px, _ = to_px(x, ymin)
        draw.text((px - 10, y1 + 4), format(x, xformat), fill="black", font=small)
    draw.text(((x0 + x1) / 2 - 12, y1 + 18), xlabel, fill="black", font=small)
    for k, (name, pts) in enumerate(sorted(series.items())):
        colour = _PALETTE[k % len(_PALETTE)]
        pix = [to_px(x, y) for x, y in sorted(pts)]
        if len(pix) > 1:
            draw.line(pix, fill=colour, width=2)
        for px, py in pix if len(pix) <= 40 else []:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        draw.rectangle([x1 + 12, y0 + 6 + 18 * k, x1 + 24, y0 + 16 + 18 * k], fill=colour)
        draw.text((x1 + 30, y0 + 3 + 18 * k), name, fill="black", font=small)


def training_curves_png(log_history: list[dict], path: str, title: str = "Training curves") -> str | None:
    """The panels of :func:`curve_panels`, stacked, on one step axis. Returns None if nothing was logged."""
    panels = curve_panels(log_history)
    if not panels:
        return None
    steps = [x for p in panels for pts in p["series"].values() for x, _ in pts]
    xlim = (min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1)
    font, small = _font(15), _font(12)
    pw, ph = 520, 200
    width, height = 80 + pw + 220, 50 + len(panels) * (ph + 70)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), title, fill="black", font=_font(16))
    for i, panel in enumerate(panels):
        top = 70 + i * (ph + 70)
        _panel(draw, (70, top, 70 + pw, top + ph), panel["series"], panel["title"], panel["ylim"], xlim, font, small)
    img.save(path, format="PNG", optimize=True)
    return path


def ranking_png(
    candidates: Sequence[str], scores: dict[str, Sequence[float | None]], path: str, title: str = "Backbone ranking"
) -> str:
    """Draw the backbone ranking: one horizontal bar panel per score, candidates in ranked order.

    One colour per candidate; bars are scaled from the panel's lowest to its highest value, the value written
    beside each bar, "n/a" where missing."""
    font, small = _font(15), _font(12)
    name_w, bar_w, row_h = 230, 260, 20
    panel_h = 30 + row_h * len(candidates)
    width, height = name_w + bar_w + 110, 50 + len(scores) * (panel_h + 16)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), title, fill="black", font=_font(16))
    top = 44
    for metric, values in scores.items():
        draw.text((10, top), metric, fill="black", font=font)
        known = [v for v in values if v is not None and math.isfinite(v)]
        lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
        span = hi - lo if hi > lo else 1.0
        for i, (name, value) in enumerate(zip(candidates, values, strict=True)):
            y = top + 24 + i * row_h
            label = name if len(name) <= 34 else "..." + name[-31:]
            draw.text((10, y + 2), label, fill="black", font=small)
            x0 = name_w
            if value is None or not math.isfinite(value):
                draw.text((x0 + 4, y + 2), "n/a", fill="gray", font=small)
                continue
            length = 8 + (bar_w - 8) * (value - lo) / span  # the lowest still gets a visible bar
            draw.rectangle([x0, y + 3, x0 + length, y + row_h - 3], fill=_PALETTE[i % len(_PALETTE)])
            draw.text((x0 + length + 6, y + 2), f"{value:.4g}", fill="black", font=small)
        top += panel_h + 16
    img.save(path, format="PNG", optimize=True)
    return path


def lr_find_png(lr_find: dict, path: str) -> str | None:
    """Draw the learning-rate range test (``results["lr_find"]``); None when there is no curve.

    The smoothed loss against log10 of the rate, with the rate at the minimum and the pick marked in the legend."""
    import math

    rates, losses = lr_find.get("learning_rates") or [], lr_find.get("losses") or []
    pts = [(math.log10(lr), loss) for lr, loss in zip(rates, losses, strict=True)]
    pts = [(x, y) for x, y in pts if math.isfinite(y)]
    if len(pts) < 2:
        return None
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    picked = f"picked {lr_find['picked']:.3g} (a tenth of {lr_find['min_loss_lr']:.3g}, the minimum)"
    font, small = _font(15), _font(12)
    pw, ph = 520, 240
    img = Image.new("RGB", (80 + pw + 360, 70 + ph + 60), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), "Learning-rate range test (--learning_rate auto)", fill="black", font=_font(16))
    ylim = (min(ys), min(max(ys), 4 * min(ys)) if min(ys) > 0 else max(ys))
    if ylim[1] <= ylim[0]:
        ylim = (ylim[0], ylim[0] + 1)
    clipped = {
        "smoothed loss": [(x, min(y, ylim[1])) for x, y in pts],
        picked: [(math.log10(lr_find["picked"]), ylim[0])],
    }
    _panel(
        draw, (70, 70, 70 + pw, 70 + ph), clipped, "loss", ylim, (min(xs), max(xs)), font, small, "log10(learning rate)"
    )
    img.save(path)
    return path


def wise_ft_png(wise_ft: dict, path: str) -> str | None:
    """Draw the WiSE-FT sweep (``results["wise_ft"]``): accuracy against alpha, one line per evaluated split.

    The exported alpha (the best on validation) is named in the legend; None when the sweep has under 2 alphas."""
    sweep = wise_ft.get("sweep") or []
    if len(sweep) < 2:
        return None
    series: dict[str, list[tuple[float, float]]] = {}
    for row in sweep:
        for split, acc in row["accuracy"].items():
            series.setdefault(split if split == "validation" else f"{split} test", []).append((row["alpha"], acc))
    chosen = wise_ft["exported_alpha"]
    ylim = _range([y for pts in series.values() for _, y in pts], unit=True)
    series[f"exported: alpha={chosen:g}"] = [(chosen, ylim[0]), (chosen, ylim[1])]  # a vertical line
    font, small = _font(15), _font(12)
    pw, ph = 520, 240
    img = Image.new("RGB", (80 + pw + 260, 70 + ph + 60), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), "WiSE-FT: (1 - alpha) * start + alpha * fine-tuned", fill="black", font=_font(16))
    _panel(draw, (70, 70, 70 + pw, 70 + ph), series, "accuracy", ylim, (0.0, 1.0), font, small, "alpha", ".2g")
    img.save(path, format="PNG", optimize=True)
    return path
