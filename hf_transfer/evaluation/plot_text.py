"""Class names as the card's figures can draw them: a font that has their glyphs, and a bounded length.

Pillow's default font covers basic Latin only (``é`` is a box) and a label is drawn at its full length, so
a 1000-character name made a 9284-px confusion matrix. Here:

- the font is the first installed one (``$HF_TRANSFER_PLOT_FONT``, Noto CJK / Noto Sans, DejaVu Sans, ...,
  then Pillow's default) that has a glyph for every character of every label, else the one that covers
  most labels. Whether a font has a glyph is read from what it renders: a missing glyph renders as the
  font's ``.notdef`` (the same bitmap as a code point no font has, U+10FFFD);
- a label longer than :data:`MAX_CHARS` is cut with an ellipsis and prefixed with its class id
  (``#12 a very long na…``), so two cut names never look alike;
- a label the font cannot draw is shown as its class id (``#3``) alone.

:func:`label_note` is the card's sentence about both (the full names are in its per-class table).
"""

from __future__ import annotations

import functools
import glob
import os
import unicodedata
from dataclasses import dataclass

from PIL import ImageFont

#: a font Pillow draws with: a scalable one, or the bitmap default of a Pillow without FreeType
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

MAX_CHARS = 24
#: font files tried in order (globbed under the font folders); the first that draws every label wins
FONT_PATTERNS = (
    "NotoSansCJK*-Regular.tt[cf]",
    "NotoSansCJK*-Regular.otf",
    "NotoSans*CJK*Regular*",
    "NotoSans-Regular.ttf",
    "DejaVuSans.ttf",
    "LiberationSans-Regular.ttf",
    "Arial Unicode.ttf",
    "arialuni.ttf",
)
_FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.local/share/fonts",
    "~/.fonts",
    "/Library/Fonts",
    "/System/Library/Fonts",
    "C:/Windows/Fonts",
)
_MISSING = "\U0010fffd"  # a private-use code point: what a font draws for a glyph it lacks


@functools.lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """Installed font files worth trying, in :data:`FONT_PATTERNS` order (``$HF_TRANSFER_PLOT_FONT`` first)."""
    found = [os.environ["HF_TRANSFER_PLOT_FONT"]] if os.environ.get("HF_TRANSFER_PLOT_FONT") else []
    for pattern in FONT_PATTERNS:
        for root in _FONT_DIRS:
            found += sorted(glob.glob(os.path.join(os.path.expanduser(root), "**", pattern), recursive=True))
    return tuple(dict.fromkeys(p for p in found if os.path.isfile(p)))


@functools.lru_cache(maxsize=32)
def _load(path: str | None, size: int) -> Font:
    if path is None:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow without FreeType sizing
            return ImageFont.load_default()
    return ImageFont.truetype(path, size)


def _signature(font: Font, text: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(text)
    return mask.size, bytes(mask)


def can_draw(font: Font, text: str) -> bool:
    """Whether ``font`` has a glyph for every visible character of ``text`` (see the module doc)."""
    try:
        missing = _signature(font, _MISSING)
    except (AttributeError, OSError):  # a bitmap font: no way to tell, and it is Latin only
        return text.isascii()
    for ch in set(text):
        if unicodedata.category(ch)[0] in "ZC" or unicodedata.category(ch) in ("Mn", "Me"):
            continue  # spaces, controls and combining marks draw nothing of their own
        if _signature(font, ch) == missing:
            return False
    return True


@dataclass
class PlotLabels:
    """What a figure draws for each class (``texts``), the font, and what it had to change."""

    texts: list[str]
    font_path: str | None  # None: Pillow's default font
    shortened: list[str]  # full names cut to MAX_CHARS
    undrawable: list[str]  # full names no installed font can draw: shown as their class id


def shorten(index: int, label: str, max_chars: int = MAX_CHARS) -> str:
    """``label`` itself, or ``#index`` + its first characters + an ellipsis when longer than ``max_chars``."""
    text = " ".join(str(label).split())  # newlines and tabs would break the layout
    if len(text) <= max_chars:
        return text
    return f"#{index} {text[: max_chars - len(str(index)) - 3].rstrip()}…"


def plot_labels(labels: list[str], size: int = 14) -> PlotLabels:
    """The font that draws the most ``labels`` (all, when one can) and each label's text (module doc)."""
    texts = [shorten(i, lab) for i, lab in enumerate(labels)]
    best: tuple[str | None, list[bool]] | None = None
    for path in [*font_files(), None]:
        font = _load(path, size)
        drawable = [can_draw(font, t) for t in texts]
        if best is None or sum(drawable) > sum(best[1]):
            best = (path, drawable)
        if all(drawable):
            break
    assert best is not None  # the candidates end with None (Pillow's default font): the loop ran
    path, drawable = best
    return PlotLabels(
        texts=[t if ok else f"#{i}" for i, (t, ok) in enumerate(zip(texts, drawable, strict=True))],
        font_path=path,
        shortened=[str(lab) for lab, t in zip(labels, texts, strict=True) if t != " ".join(str(lab).split())],
        undrawable=[str(lab) for lab, ok in zip(labels, drawable, strict=True) if not ok],
    )


def label_font(labels: PlotLabels, size: int) -> Font:
    """The font of ``labels`` at ``size``."""
    return _load(labels.font_path, size)


def label_note(labels: list[str], shown: int = 8) -> str:
    """The card's sentence about class names the figures cut or could not draw ('' when none)."""
    result = plot_labels(labels)
    notes = []
    if result.shortened:
        notes.append(
            f"{len(result.shortened)} class name(s) longer than {MAX_CHARS} characters are cut in the figures "
            "(shown as `#id` + their start; id = the class id in `id2label`); the full names are in the per-class "
            "table."
        )
    if result.undrawable:
        listed = ", ".join(repr(n) for n in result.undrawable[:shown]) + (
            " ..." if len(result.undrawable) > shown else ""
        )
        notes.append(
            f"No font installed where this card was written can draw {len(result.undrawable)} class name(s) "
            f"({listed}): the figures show their class id (`#id`) instead; install a font with those glyphs "
            "(e.g. Noto Sans CJK) or set HF_TRANSFER_PLOT_FONT to one to draw them."
        )
    return " ".join(notes)
