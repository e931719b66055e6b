"""Readable figures for any class name: bounded size, cut long names, a font with the glyphs or class ids.

Before: a 1000-character label made a 9284-px confusion matrix with the matrix in a corner, and names outside
basic Latin (``é``, CJK, emoji) were drawn as boxes by Pillow's default font, with no word in the card.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFont

from hf_transfer.evaluation import plot_text
from hf_transfer.evaluation.plot_text import MAX_CHARS, can_draw, label_note, plot_labels, shorten
from hf_transfer.evaluation.plots import MAX_GRID_PX, confusion_matrix_png
from hf_transfer.hub.card_results import results_vars


def _matrix(n: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 3, (n, n)) + 5 * np.eye(n, dtype=int)).tolist()


def test_a_thousand_character_label_keeps_the_figure_small(tmp_path):
    labels = ["cat", "x" * 1000, "dog"]
    path = confusion_matrix_png(_matrix(3), labels, str(tmp_path / "cm.png"), title="t" * 500)
    with Image.open(path) as img:
        assert max(img.size) < 800, img.size  # was 9284 px wide
        grid = np.asarray(img.convert("RGB"))
    # the matrix fills the figure: its cells (blue) span more than a third of the width
    blue_cols = np.flatnonzero((grid[..., 2].astype(int) - grid[..., 0] > 5).any(axis=0))  # the cells' blues
    assert blue_cols.max() - blue_cols.min() > img.size[0] / 3


def test_many_classes_cap_the_grid(tmp_path):
    n = 400
    path = confusion_matrix_png(_matrix(n), [f"class number {i}" for i in range(n)], str(tmp_path / "cm.png"))
    with Image.open(path) as img:
        assert max(img.size) <= MAX_GRID_PX + 400, img.size  # was 28 px a cell: 11200 px


def test_shorten_keeps_short_names_and_ids_long_ones():
    assert shorten(0, "golden retriever") == "golden retriever"
    cut = shorten(12, "a" * 100)
    assert cut.startswith("#12 a") and cut.endswith("…") and len(cut) == MAX_CHARS
    assert shorten(3, "two\nlines") == "two lines"


def test_a_font_with_the_glyphs_is_chosen():
    labels = ["café", "naïve", "über"]  # Pillow's default font draws é, ï and ü as boxes
    assert not all(can_draw(ImageFont.load_default(size=14), t) for t in labels)
    chosen = plot_labels(labels)
    if not plot_text.font_files():
        pytest.skip("no TrueType font installed here")
    assert chosen.font_path is not None and chosen.undrawable == [] and chosen.texts == labels


def test_names_no_font_can_draw_become_ids_and_the_card_says_so(monkeypatch):
    labels = ["cat", "猫", "\U0001fae8 shaking face"]  # CJK, and an emoji of Unicode 15
    font = plot_text._load(None, 14)
    chosen = plot_labels(labels)
    drawable = [can_draw(plot_text.label_font(chosen, 14), t) for t in labels]
    for i, (label, ok) in enumerate(zip(labels, drawable, strict=True)):  # whatever fonts are installed here
        assert chosen.texts[i] == (label if ok else f"#{i}")
    assert chosen.undrawable == [lab for lab, ok in zip(labels, drawable, strict=True) if not ok]
    # with only Pillow's default font (no system font), the CJK name cannot be drawn: said in the card
    monkeypatch.setattr(plot_text, "font_files", lambda: ())
    assert not can_draw(font, "猫")
    only_default = plot_labels(labels)
    assert "猫" in only_default.undrawable and only_default.texts[1] == "#1"
    note = label_note(labels)
    assert "class id (`#id`)" in note and "'猫'" in note
    results = {
        "mode": "task",
        "method": "full",
        "label_names": labels,
        "metrics": {"target": {"accuracy": 1.0, "macro_f1": 1.0, "confusion_matrix": _matrix(3)}},
    }
    assert "'猫'" in results_vars(results, None, None, "full", figures=True)["results_note"]
    assert "'猫'" not in results_vars(results, None, None, "full", figures=False)["results_note"]  # no figure


def test_the_card_says_long_names_are_cut():
    results = {
        "mode": "task",
        "method": "full",
        "label_names": ["cat", "y" * 300],
        "metrics": {"target": {"accuracy": 1.0, "macro_f1": 1.0, "confusion_matrix": _matrix(2)}},
    }
    note = results_vars(results, None, None, "full", figures=True)["results_note"]
    assert f"longer than {MAX_CHARS} characters are cut" in note


def test_evaluate_says_which_names_its_figure_cut(tmp_path, caplog):
    import logging

    from hf_transfer.evaluation.evaluate import write_outputs

    result = {
        "model": "m",
        "dataset": "d",
        "split": "test",
        "label_names": ["cat", "z" * 200],
        "metrics": {"confusion_matrix": _matrix(2)},
    }
    with caplog.at_level(logging.WARNING, logger="hf_transfer.evaluation.evaluate"):
        write_outputs(result, str(tmp_path))
    assert any("confusion_matrix.png" in r.getMessage() and "are cut" in r.getMessage() for r in caplog.records)
