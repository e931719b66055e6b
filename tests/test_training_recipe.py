"""timm's training recipe: the augmentation policy, random erasing, mixup/cutmix with soft targets, drop-path and
label smoothing; the same draws on both input paths, the refusals, and what a run records."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from test_fast_input import _photo

from hf_transfer.config import arguments_from_dict
from hf_transfer.data.augment import BatchAugment
from hf_transfer.data.mixing import BatchMixing
from hf_transfer.data.policies import policy_transform, random_erasing, stock_train_transform
from hf_transfer.data.transforms import DataConfig
from hf_transfer.errors import TransferConfigError
from hf_transfer.training.modes.common import classification_loss

from conftest import tiny_args

POLICY = "rand-m9-mstd0.5-inc1"


def _stats_stock(img: Image.Image, cfg: DataConfig, n: int, **recipe) -> tuple[torch.Tensor, torch.Tensor]:
    tf = stock_train_transform(cfg, "standard", **recipe)
    random.seed(0)
    torch.manual_seed(0)
    stack = torch.stack([tf(img) for _ in range(n)])
    return stack.mean(0), stack.std(0)


def _stats_fast(img: Image.Image, cfg: DataConfig, n: int, aa=None, reprob=0.0, remode="pixel"):
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())
    aug = BatchAugment(
        cfg,
        "standard",
        policy=policy_transform(aa, cfg) if aa else None,
        erasing=random_erasing(reprob, remode) if reprob else None,
    ).train()
    random.seed(1)
    torch.manual_seed(1)
    stack = aug(x[None].repeat(n, 1, 1, 1))
    return stack.mean(0), stack.std(0)


def _close(m, s, m_ref, s_ref) -> bool:
    return bool(
        (m - m_ref).abs().mean() < 0.04
        and (m - m_ref).abs().max() < 0.25
        and (s - s_ref).abs().mean() < 0.04
        and (s - s_ref).abs().max() < 0.25
    )


def test_fast_path_policy_and_erasing_match_timms_create_transform():
    """Per-pixel mean/std over 2000 draws of the fast path (crop loop + the policy per crop + erasing on the batch)
    match timm's ``create_transform(is_training=True, auto_augment=..., re_prob=...)``; the same tolerances reject
    the crop alone, and a much weaker policy."""
    cfg = DataConfig(input_size=(3, 48, 48))
    img = _photo(40, 52, seed=2)
    recipe = {"aa": POLICY, "reprob": 0.5, "remode": "const"}
    ref = _stats_stock(img, cfg, 2000, **recipe)
    assert _close(*_stats_fast(img, cfg, 2000, **recipe), *ref)
    assert not _close(*_stats_fast(img, cfg, 2000), *ref)  # the policy and erasing do show
    assert not _close(*_stats_fast(img, cfg, 2000, aa="rand-m1-n1-mstd0", reprob=0.5, remode="const"), *ref)


def test_every_policy_string_builds_on_both_paths():
    cfg = DataConfig(input_size=(3, 32, 32))
    img = _photo(36, 40)
    x = torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy())[None].repeat(4, 1, 1, 1)
    for aa in (POLICY, "original", "v0", "3a", "augmix-m5-w3", "trivial"):
        out = stock_train_transform(cfg, "light", aa=aa, reprob=0.25)(img)
        assert out.shape == (3, 32, 32)
        batch = BatchAugment(cfg, "light", policy=policy_transform(aa, cfg)).train()(x)
        assert batch.shape == (4, 3, 32, 32) and torch.isfinite(batch).all()
    with pytest.raises(TransferConfigError, match="aa='rand-x9'.*timm"):
        policy_transform("rand-x9", cfg)


def test_batch_mixing_is_timms_mixup_and_keeps_an_odd_rows_label():
    from timm.data import Mixup

    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    np.random.seed(3)
    ref_x, ref_y = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=5, label_smoothing=0.0)(x.clone(), y)
    np.random.seed(3)
    out_x, out_y = BatchMixing(5, mixup=0.8, cutmix=1.0)(x.clone(), y)
    torch.testing.assert_close(out_x, ref_x)
    torch.testing.assert_close(out_y, ref_y)
    odd_x = torch.randn(7, 3, 8, 8)
    np.random.seed(4)
    mixed, targets = BatchMixing(5, mixup=0.8)(odd_x.clone(), y[:7])
    assert torch.equal(mixed[3], odd_x[3]) and torch.equal(targets[3], torch.nn.functional.one_hot(y[3], 5).float())
    torch.testing.assert_close(targets.sum(1), torch.ones(7))
    assert not torch.equal(mixed[0], odd_x[0])  # mixup_prob 1: the others are mixed
    with pytest.raises(ValueError, match="unlabelled"):
        BatchMixing(5, mixup=0.8)(x, torch.tensor([0, 1, -1, 2, 3, 4, 0, 1]))


def test_label_smoothing_on_soft_targets_is_timms_smoothed_mixup_target():
    from timm.data.mixup import mixup_target
    from timm.loss import SoftTargetCrossEntropy

    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    soft = mixup_target(y, 4, lam=0.7, smoothing=0.0)
    ours = classification_loss(logits, soft, label_smoothing=0.1)
    timms = SoftTargetCrossEntropy()(logits, mixup_target(y, 4, lam=0.7, smoothing=0.1))
    torch.testing.assert_close(ours, timms)
    # one-hot probabilities give the hard-label loss
    hard = classification_loss(logits, y, label_smoothing=0.1)
    torch.testing.assert_close(classification_loss(logits, torch.nn.functional.one_hot(y, 4).float(), 0.1), hard)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mode": "feature", "aa": POLICY}, "aa='rand-m9-mstd0.5-inc1': aa applies to mode=domain or task only"),
        ({"mode": "feature", "mixup": 0.8}, "mixup applies to mode=domain or task only"),
        ({"mode": "task", "mixup_prob": 0.5}, "mixup_prob=0.5 has no effect .* mixup > 0 or cutmix > 0"),
        ({"mode": "task", "mixup": 0.8, "mixup_switch_prob": 0.3}, "both mixup > 0 and cutmix > 0"),
        ({"mode": "task", "remode": "const"}, "remode='const' has no effect .* reprob > 0"),
        ({"mode": "task", "aa": POLICY, "augment": "none"}, "aa=.* acts only with augment=standard or light"),
        ({"mode": "task", "aa": "rand-q9"}, "aa='rand-q9' is not an augmentation policy timm can parse"),
        ({"mode": "task", "reprob": 1.5}, r"reprob=1.5: must be a probability in \[0, 1\]"),
        ({"mode": "task", "mixup": -1.0}, "mixup=-1.0: must be >= 0"),
        ({"mode": "task", "mixup": 0.8, "mixup_mode": "row"}, "mixup_mode='row': choose one of"),
        ({"mode": "task", "drop_path": 1.0}, r"drop_path=1.0: must be a rate in \[0, 1\)"),
    ],
)
def test_recipe_options_are_refused_where_they_cannot_act(tmp_path, overrides, message):
    with pytest.raises(TransferConfigError, match=message):
        arguments_from_dict(tiny_args(tmp_path, **overrides))


def test_mixup_is_refused_with_a_method_that_trains_on_hard_labels(tmp_path, monkeypatch):
    import dataclasses

    from hf_transfer.methods import registry

    full = registry.get_method("full")
    monkeypatch.setitem(registry.METHODS, "full", dataclasses.replace(full, soft_targets=False))
    with pytest.raises(TransferConfigError, match=r"cutmix=1.0 makes probability \(soft\) targets, but method=full"):
        arguments_from_dict(tiny_args(tmp_path, mode="task", method="full", cutmix=1.0))


def test_drop_path_reaches_the_blocks_and_is_refused_where_the_backbone_has_none(tmp_path):
    from timm.layers import DropPath
    from transformers import ViTConfig, ViTForImageClassification

    from hf_transfer.models.backbones import check_drop_path, load_backbone

    backbone = load_backbone("test_resnet", ["a", "b"], drop_path=0.2)
    rates = [m.drop_prob for m in backbone.model.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.2)
    assert "drop_path_rate" not in (backbone.model.config.model_args or {})  # training only: not exported
    assert not any(isinstance(m, DropPath) for m in load_backbone("test_resnet", ["a", "b"]).model.modules())
    vit = tmp_path / "vit"
    ViTForImageClassification(
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32)
    ).save_pretrained(vit)
    with pytest.raises(TransferConfigError, match=r"drop_path=0.0: backbone .*vit' \(ViTConfig\) has no drop-path"):
        check_drop_path(str(vit))


@pytest.mark.slow
@pytest.mark.parametrize("input_path", ["fast", "stock"])
def test_a_run_with_the_whole_recipe_records_it_and_trains_on_soft_targets(tmp_path, monkeypatch, input_path):
    from hf_transfer.training.modes.task import TaskMode
    from hf_transfer.training.run import run_transfer

    seen: list[torch.Tensor] = []
    forward = TaskMode.forward

    def spy(self, model, pixel_values=None, labels=None, **kw):
        if model.training:
            seen.append(labels)
        return forward(self, model, pixel_values=pixel_values, labels=labels, **kw)

    monkeypatch.setattr(TaskMode, "forward", spy)
    recipe = dict(aa=POLICY, reprob=0.25, mixup=0.8, cutmix=1.0, drop_path=0.1, label_smoothing_factor=0.1)
    args = tiny_args(tmp_path, mode="task", augment="standard", input_path=input_path, **recipe)
    results = run_transfer(*arguments_from_dict(args))
    assert seen and all(t.dim() == 2 and t.shape[1] == 10 for t in seen)  # probability targets reached the loss
    assert results["training_recipe"] == {
        "aa": POLICY,
        "reprob": 0.25,
        "remode": "pixel",
        "mixup": 0.8,
        "cutmix": 1.0,
        "mixup_prob": 1.0,
        "mixup_mode": "batch",
        "mixup_switch_prob": 0.5,
        "soft_targets": True,
        "drop_path": 0.1,
        "label_smoothing": 0.1,
    }
    assert len(results["metrics"]["target"]["confusion_matrix"]) == 10  # scored on the hard labels
    with open(os.path.join(args["output_dir"], "README.md")) as f:
        card = f.read()
    assert "Training recipe (timm's option names): `aa=rand-m9-mstd0.5-inc1`" in card
    assert "soft) targets; accuracy is scored on the hard labels" in card
    with open(os.path.join(args["output_dir"], "config.json")) as f:
        assert "drop_path_rate" not in json.dumps(json.load(f))
