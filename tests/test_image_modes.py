"""Images of every mode reach the model with their real value range, on every input path.

Pillow's ``convert("RGB")`` clips 16-bit greyscale (``I;16``) to white and float (``F``) images to black;
:func:`hf_transfer.data.images.to_rgb` scales them from their range first, and the stock path, the decoded
cache (fast path), ``evaluate``'s prediction (both paths) and the card's example images all use it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_transfer.data.images import grey_to_uint8, to_rgb
from hf_transfer.data.load import load_domain
from hf_transfer.data.transforms import DataConfig
from hf_transfer.errors import TransferConfigError

CLASSES = ("dark", "light")


def _ramp16(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    """A uint16 image over most of the 16-bit range, with some texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(xx * 1500 + yy * 400 + rng.integers(0, 800, (h, w)), 0, 65535).astype(np.uint16)


def test_sixteen_bit_is_scaled_not_clipped():
    arr = _ramp16()
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = np.asarray(to_rgb(img))
    assert out.shape == (*arr.shape, 3) and out.dtype == np.uint8
    expected = np.rint(arr / 257.0).astype(np.uint8)
    assert np.array_equal(out[..., 0], expected) and np.array_equal(out[..., 2], expected)
    assert out.min() < 10 and out.max() > 200 and len(np.unique(out)) > 100  # Pillow alone: all 255


@pytest.mark.parametrize(
    ("values", "mode", "expected"),
    [
        (np.array([[0.0, 0.5, 1.0]], np.float32), "F", [0, 128, 255]),  # 0..1 floats
        (np.array([[0.0, 100.0, 255.0]], np.float32), "F", [0, 100, 255]),  # 0..255 floats
        (np.array([[-1.0, 0.0, 1.0]], np.float32), "F", [0, 128, 255]),  # other range: the image's own
        (np.array([[np.nan, 0.0, 1.0]], np.float32), "F", [0, 0, 255]),
        (np.array([[0, 100, 255]], np.int32), "I", [0, 100, 255]),  # 8-bit values stored wide
        (np.array([[0, 1000, 65535]], np.int32), "I", [0, 4, 255]),  # 16-bit values stored wide
        (np.array([[-5, 0, 5]], np.int32), "I", [0, 128, 255]),
    ],
)
def test_wide_modes_use_their_range(values, mode, expected):
    assert grey_to_uint8(values, mode).tolist() == [expected]
    img = Image.fromarray(values)
    assert img.mode == mode
    assert np.asarray(to_rgb(img))[0, :, 1].tolist() == expected


def test_eight_bit_modes_convert_as_pillow_does():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for mode in ("L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "1"):
        img = rgb.convert(mode)
        assert np.array_equal(np.asarray(to_rgb(img)), np.asarray(img.convert("RGB"))), mode
    assert to_rgb(rgb) is rgb
    with pytest.raises(TransferConfigError, match="'La'"):
        to_rgb(Image.new("La", (2, 2)))


def _folder(tmp_path, sixteen_bit: bool):
    """An imagefolder of 16-bit PNGs (or the same pictures as 8-bit greyscale)."""
    root = tmp_path / ("sixteen" if sixteen_bit else "eight")
    for k, name in enumerate(CLASSES):
        for split in ("train", "test"):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                arr = _ramp16(seed=10 * k + i) // (2 if k == 0 else 1)
                img = Image.fromarray(arr) if sixteen_bit else Image.fromarray(np.rint(arr / 257.0).astype(np.uint8))
                img.save(root / split / name / f"{i}.png")
    return str(root)


@pytest.mark.parametrize("input_path", ["stock", "fast"])
def test_every_path_sees_sixteen_bit_images_as_their_eight_bit_twins(tmp_path, monkeypatch, input_path):
    """Stock path, fast path and evaluate's prediction: a 16-bit dataset gives the tensors (and logits) of the
    same pictures stored in 8 bits, not a white page."""
    from hf_transfer.data.paired import ImageDomainDataset
    from hf_transfer.data.transforms import eval_transform
    from hf_transfer.evaluation.predict import predict_logits
    from hf_transfer.models.backbones import load_backbone

    monkeypatch.setenv("HF_TRANSFER_CACHE", str(tmp_path / "cache"))
    wide = load_domain(_folder(tmp_path, True))["test"]
    narrow = load_domain(_folder(tmp_path, False))["test"]
    assert wide[0]["image"].mode == "I;16"  # decoded in its own mode; converted by to_rgb on each path
    cfg = DataConfig(input_size=(3, 16, 16), crop_pct=1.0)
    stock = torch.stack([ImageDomainDataset(wide, eval_transform(cfg))[i]["pixel_values"] for i in range(len(wide))])
    twin = torch.stack([ImageDomainDataset(narrow, eval_transform(cfg))[i]["pixel_values"] for i in range(len(wide))])
    torch.testing.assert_close(stock, twin)
    assert stock.std() > 0.3  # a picture, not a white page

    torch.manual_seed(0)
    backbone = load_backbone("test_resnet", list(CLASSES), image_size=16, crop_pct=1.0)
    kwargs = {"input_path": input_path, "decoded_cache_dir": str(tmp_path / "decoded"), "progress": False}
    logits_wide, labels = predict_logits(backbone, wide, **kwargs)
    logits_narrow, _ = predict_logits(backbone, narrow, **kwargs)
    np.testing.assert_allclose(logits_wide, logits_narrow, atol=1e-5)
    assert sorted(set(labels.tolist())) == [0, 1]


def test_reference_examples_keep_the_range(tmp_path):
    """The card's widget images (what a served model is shown) are converted the same way."""
    from hf_transfer.models.backbones import load_backbone
    from hf_transfer.models.examples import write_reference_predictions

    wide = load_domain(_folder(tmp_path, True))["test"]
    backbone = load_backbone("test_resnet", list(CLASSES), image_size=16, crop_pct=1.0)
    rows = write_reference_predictions(backbone, wide, str(tmp_path / "out"), k=2)
    saved = np.asarray(Image.open(tmp_path / "out" / rows[0]["file"]).convert("L"))
    assert saved.min() < 60 and saved.std() > 20  # Pillow's convert("RGB") gave 255 everywhere
