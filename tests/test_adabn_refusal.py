"""``--adabn true`` on a backbone without BatchNorm is refused, naming the backbone and why, before data
loading when its config tells, else right after the model is built (before training). Before: accepted, it
did nothing, and the card reported AdaBN as applied."""

from __future__ import annotations

import pytest

from hf_transfer.config import arguments_from_dict
from hf_transfer.errors import TransferConfigError
from hf_transfer.training import run as run_module
from hf_transfer.training.run import prepare_run

from conftest import tiny_args

SOURCE = "builtin:digits-printed"


def _args(tmp_path, **overrides):
    return arguments_from_dict(
        tiny_args(tmp_path, mode="domain", method="dann", source=SOURCE, adabn=True, **overrides)
    )


def _no_data(*_args, **_kwargs):
    raise AssertionError("the data was loaded before the refusal")


@pytest.mark.parametrize("backbone", ["test_vit", "timm:test_convnext"])
def test_timm_backbone_without_batchnorm_is_refused_before_data_loading(tmp_path, monkeypatch, backbone):
    monkeypatch.setattr(run_module, "load_transfer_data", _no_data)
    with pytest.raises(TransferConfigError, match=rf"adabn=True does nothing with backbone '{backbone}'.*LayerNorm"):
        prepare_run(*_args(tmp_path, backbone=backbone))


def test_transformers_folder_without_batchnorm_is_refused_before_data_loading(tmp_path, monkeypatch, tiny_vit_dir):
    monkeypatch.setattr(run_module, "load_transfer_data", _no_data)
    with pytest.raises(TransferConfigError, match=r"no BatchNorm layer.*LayerNorm"):
        prepare_run(*_args(tmp_path, backbone=tiny_vit_dir))


def test_when_the_config_cannot_tell_the_built_model_is_checked_before_training(tmp_path, monkeypatch):
    from hf_transfer.models import norm_layers

    monkeypatch.setattr(norm_layers, "architecture_without_weights", lambda *a, **k: None)  # e.g. offline Hub id
    with pytest.raises(TransferConfigError, match=r"adabn=True does nothing with backbone 'test_vit'"):
        prepare_run(*_args(tmp_path, backbone="test_vit", image_size=None))


def test_batchnorm_backbone_or_a_bottleneck_keeps_adabn(tmp_path):
    run = prepare_run(*_args(tmp_path))  # test_resnet: BatchNorm
    assert run.args.adabn
    run = prepare_run(*_args(tmp_path, backbone="test_vit", image_size=None, bottleneck_dim=16))
    assert run.args.adabn and run.mode.bottleneck is not None  # the bottleneck's BatchNorm1d is re-estimated
