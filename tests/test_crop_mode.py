"""Train and serve see the same pixels: every eval path applies the data config's ``crop_mode``.

timm's pretrained configs use ``center``, ``squash`` or ``border`` (e.g. ``convnext_base.fb_in22k_ft_in1k_384``
is ``squash``); the exported ``TimmWrapperImageProcessor`` applies it at serving, so the stock eval
transform, the decoded cache + ``BatchAugment`` (fast path) and ``pipeline()`` on the exported folder must
give one tensor for a non-square image.
"""

from __future__ import annotations

import dataclasses

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_transfer.data.augment import BatchAugment
from hf_transfer.data.decoded import DecodedImages
from hf_transfer.data.transforms import DataConfig, eval_transform
from hf_transfer.errors import TransferConfigError

NAMES = ["zero", "one", "two"]
CROP_MODES = ("center", "squash", "border")  # timm's eval crop modes


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    """Ramps and a bright disk near one side (so a crop, a squash and a pad all change the tensor)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([255 * xx / (w - 1), 255 * yy / (h - 1), np.full_like(xx, 90)], -1)
    arr[(xx - 0.1 * w) ** 2 + (yy - 0.5 * h) ** 2 < (0.15 * h) ** 2] = (250, 250, 20)
    arr += np.random.default_rng(seed).normal(0, 6, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _fast(cfg: DataConfig, images, tmp_path) -> torch.Tensor:
    ds = datasets.Dataset.from_dict({"image": images, "label": [0] * len(images)}).cast_column(
        "image", datasets.Image()
    )
    decoded = DecodedImages(ds, cfg, "eval", cache_dir=tmp_path / "decoded")
    batch = torch.stack([decoded[i]["pixel_values"] for i in range(len(images))])
    return BatchAugment(cfg, "standard").eval()(batch)


@pytest.mark.parametrize("crop_mode", CROP_MODES)
def test_fast_stock_and_pipeline_give_one_eval_tensor(tmp_path, crop_mode):
    from transformers import pipeline

    from hf_transfer.models.backbones import load_backbone
    from hf_transfer.models.export import export_model

    backbone = load_backbone("test_resnet", NAMES, image_size=32, crop_pct=0.875)
    backbone.data_config = dataclasses.replace(backbone.data_config, crop_mode=crop_mode)
    folder = export_model(backbone, str(tmp_path / "export"))
    images = [_image(40, 64), _image(70, 30, 1)]  # wide and tall
    cfg = backbone.data_config
    stock = torch.stack([eval_transform(cfg)(im) for im in images])
    fast = _fast(cfg, images, tmp_path)
    pipe = pipeline("image-classification", model=folder)
    served = torch.cat([pipe.preprocess(im)["pixel_values"] for im in images])
    assert stock.shape == fast.shape == served.shape == (2, 3, 32, 32)
    torch.testing.assert_close(fast, stock, atol=1e-5, rtol=0)
    torch.testing.assert_close(served, stock, atol=1e-5, rtol=0)


def test_crop_modes_give_different_pixels():
    """The guard has teeth: on a non-square image the three modes are three different tensors."""
    img = _image(40, 64)
    out = {m: eval_transform(DataConfig(input_size=(3, 32, 32), crop_mode=m))(img) for m in CROP_MODES}
    assert not torch.allclose(out["center"], out["squash"])
    assert not torch.allclose(out["center"], out["border"])
    assert not torch.allclose(out["squash"], out["border"])


@pytest.mark.parametrize("crop_mode", CROP_MODES)
def test_batch_augment_eval_resize_follows_crop_mode(crop_mode):
    """Input that is not the model size (train storage evaluated): the recipe of the same crop_mode."""
    cfg = DataConfig(input_size=(3, 32, 32), crop_mode=crop_mode)
    img = _image(48, 80, 2)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())[None]
    out = BatchAugment(cfg, "standard").eval()(x)[0]
    ref = eval_transform(cfg)(img)
    others = [eval_transform(dataclasses.replace(cfg, crop_mode=m))(img) for m in CROP_MODES if m != crop_mode]
    err = (out - ref).abs().mean()
    assert err < 0.05
    assert all(err < (out - o).abs().mean() / 4 for o in others)


def test_unknown_crop_mode_is_refused():
    with pytest.raises(TransferConfigError, match="crop_mode='letterbox'"):
        DataConfig(crop_mode="letterbox")


def test_decoded_cache_key_includes_crop_mode(tmp_path):
    images = [_image(40, 64)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [0]}).cast_column("image", datasets.Image())
    paths = {
        DecodedImages(ds, DataConfig(input_size=(3, 32, 32), crop_mode=m), "eval", cache_dir=tmp_path).path
        for m in CROP_MODES
    }
    assert len(paths) == 3


def _transformers_folder(tmp_path, kind: str) -> str:
    """A tiny transformers classifier with the processor of its family: ViT's (resize to height x width) or
    ConvNeXt's (shortest_edge divided by its own crop_pct)."""
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ConvNextImageProcessor,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    folder = str(tmp_path / kind)
    torch.manual_seed(0)
    if kind == "vit":
        config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
        config.image_size, config.patch_size, config.num_labels = 32, 8, 3
        ViTForImageClassification(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    else:
        config = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3)
        ConvNextForImageClassification(config).save_pretrained(folder)
        ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("kind", "crop_mode"), [("vit", "squash"), ("convnext", "center")])
def test_transformers_processors_serve_the_eval_pixels(tmp_path, kind, crop_mode):
    """ViT's processor squashes a non-square image (our eval center-cropped it: 1.3 apart); ConvNeXt's divides
    by its own crop_pct (the export resized twice: 2.0 apart). Now the served tensor is the eval tensor."""
    from transformers import pipeline

    from hf_transfer.models.backbones import load_backbone
    from hf_transfer.models.export import export_model

    backbone = load_backbone(_transformers_folder(tmp_path, kind), NAMES)
    cfg = backbone.data_config
    assert cfg.crop_mode == crop_mode
    folder = export_model(backbone, str(tmp_path / "export"))
    images = [_image(40, 64), _image(70, 30, 1)]
    stock = torch.stack([eval_transform(cfg)(im) for im in images])
    served = torch.cat([pipeline("image-classification", model=folder).preprocess(im)["pixel_values"] for im in images])
    torch.testing.assert_close(_fast(cfg, images, tmp_path), stock, atol=1e-5, rtol=0)
    assert served.shape == stock.shape and (served - stock).abs().max() < 0.05  # resampling rounding only


def test_border_cannot_be_served_by_a_transformers_processor(tmp_path):
    from hf_transfer.models.served_processor import served_processor

    cfg = DataConfig(input_size=(3, 32, 32), crop_mode="border")
    with pytest.raises(TransferConfigError, match="crop_mode='border'"):
        served_processor(_transformers_folder(tmp_path, "vit"), None, cfg)
