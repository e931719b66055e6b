"""Write a small image-classification folder to try hf_transfer on "your own data" offline.

JPEGs in the ``imagefolder`` layout that ``datasets`` reads (``DIR/train/<class>/*.jpg``,
``DIR/test/<class>/*.jpg``), deterministic for a seed; they stand in for a user's folder in the README's
own-folder walk-through, its test and the defaults sweep (``benchmarks/defaults_sweep.py``):

* ``--kind digits`` (default): three classes (``three``, ``five``, ``eight``) of the built-in
  ``digits-handwritten`` domain (real handwriting, scikit-learn's digits), data the demo's printed-digit
  backbone suits, as a user's photos suit an ImageNet backbone;
* ``--kind shapes``: three classes of drawn shapes (``circle``, ``square``, ``triangle``) in random
  colours, sizes, positions and rotations over noisy backgrounds, far from what that backbone saw.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle")
DIGITS = ("three", "five", "eight")


def _colour_pair(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A foreground and a background colour at least 90 grey levels apart, so every shape is visible."""
    while True:
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if abs(int(fg.mean()) - int(bg.mean())) >= 90:
            return tuple(int(v) for v in fg), tuple(int(v) for v in bg)


def draw_shape(name: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """One image of the named shape: random scale, centre, rotation, outline or fill, blur and noise."""
    fg, bg = _colour_pair(rng)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.18, 0.36) * size
    cx, cy = rng.uniform(r + 2, size - r - 2, 2)
    width = 0 if rng.random() < 0.5 else int(rng.integers(3, 7))
    if name == "circle":
        box = [cx - r, cy - r, cx + r, cy + r]
        draw.ellipse(box, fill=None if width else fg, outline=fg, width=max(width, 1))
    else:
        corners = 4 if name == "square" else 3
        start = rng.uniform(0, 2 * math.pi)
        pts = [
            (cx + r * math.cos(start + 2 * math.pi * k / corners), cy + r * math.sin(start + 2 * math.pi * k / corners))
            for k in range(corners)
        ]
        if width:
            draw.line([*pts, pts[0]], fill=fg, width=width, joint="curve")
        else:
            draw.polygon(pts, fill=fg)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(2, 14), (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_shapes(out: Path, n_train: int = 30, n_test: int = 10, seed: int = 0) -> Path:
    """Write ``n_train`` + ``n_test`` shape images per class under ``out/train`` and ``out/test``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for name in SHAPES:
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(name, rng).save(folder / f"{name}_{i:03d}.jpg", quality=90)
    return out


def write_digits(out: Path, n_train: int = 30, n_test: int = 10, seed: int = 0) -> Path:
    """Write the first ``n_train`` / ``n_test`` images of each of :data:`DIGITS` from ``digits-handwritten``'s
    train / test splits (a seeded shuffle of each split) as JPEGs."""
    from hf_transfer.data.builtin import load_builtin

    data = load_builtin("digits-handwritten")
    for split, n in (("train", n_train), ("test", n_test)):
        rows = data[split].shuffle(seed=seed)
        names = rows.features["label"].names
        written = dict.fromkeys(DIGITS, 0)
        for row in rows:
            name = names[row["label"]]
            if name in written and written[name] < n:
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                row["image"].convert("RGB").save(folder / f"{name}_{written[name]:03d}.jpg", quality=90)
                written[name] += 1
        short = {k: v for k, v in written.items() if v < n}
        if short:
            raise SystemExit(f"digits-handwritten/{split} has too few images of {short} for {n} per class")
    return out


def main() -> None:
    """Command line: ``python scripts/make_image_folder.py DIR [--kind digits|shapes]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (train/ and test/ inside)")
    parser.add_argument("--kind", choices=("digits", "shapes"), default="digits")
    parser.add_argument("--train", type=int, default=30, help="training images per class")
    parser.add_argument("--test", type=int, default=10, help="test images per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write = write_digits if args.kind == "digits" else write_shapes
    write(args.out, args.train, args.test, args.seed)
    classes = DIGITS if args.kind == "digits" else SHAPES
    total = (args.train + args.test) * len(classes)
    print(f"wrote {total} images of {len(classes)} classes ({', '.join(classes)}) under {args.out}/train and /test")


if __name__ == "__main__":
    main()
