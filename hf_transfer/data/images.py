"""The one place where a decoded image becomes the RGB uint8 picture every input path sees.

Pillow's ``convert("RGB")`` clips wide-range modes to 0..255: a 16-bit greyscale PNG (``I;16``, values up to
65535) comes out all white, a float image (``F``, values in 0..1) all black. :func:`to_rgb` maps those
modes from their real value range to 8 bits first, and hands every other mode (``L``, ``LA``, ``P``,
``RGBA``, ``CMYK``, ``YCbCr``, ``1`` ...) to Pillow, whose conversion of 8-bit modes is exact:

- ``I;16`` / ``I;16B`` / ``I;16L`` / ``I;16N``: the type's range, ``0..65535 -> 0..255`` (``round(v / 257)``);
- ``I`` (32-bit int): kept when every value fits ``0..255``, ``0..65535 -> 0..255`` when they fit 16 bits
  (how 16-bit files are often stored), else the image's own min..max;
- ``F`` (32-bit float): ``0..1 -> 0..255`` when the values lie in 0..1, kept in ``0..255``, else the image's
  own min..max; NaN becomes 0.

The stock path (:func:`hf_transfer.data.transforms.make_batch_transform`), the decoded cache
(:mod:`hf_transfer.data.decoded`) and the card's example images all call it, so training, evaluation and
the pictures a served model is shown see the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from hf_transfer.errors import TransferConfigError

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _scaled(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` mapped linearly from ``low..high`` to ``0..255``, rounded, as uint8."""
    span = high - low if high > low else 1.0
    out = (values.astype(np.float64) - low) * (255.0 / span)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """A wide-range greyscale array (``I;16*``, ``I``, ``F``) as uint8, from its real value range (module doc)."""
    if mode in _SIXTEEN_BIT:
        return _scaled(values, 0.0, 65535.0)
    values = np.nan_to_num(values.astype(np.float64), nan=0.0) if mode == "F" else values
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        return _scaled(values, 0.0, 1.0)
    if lo >= 0.0 and hi <= 255.0:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if mode == "I" and lo >= 0.0 and hi <= 65535.0:
        return _scaled(values, 0.0, 65535.0)
    return _scaled(values, lo, hi)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB PIL image, wide-range modes scaled from their real range (see the module doc)."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        return Image.fromarray(grey_to_uint8(np.asarray(img), img.mode)).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as err:  # e.g. "La" (premultiplied alpha), which Pillow cannot convert
        raise TransferConfigError(f"An image of mode {img.mode!r} cannot be converted to RGB: {err}") from err
