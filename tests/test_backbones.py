"""Backbones (timm and transformers-native, tiny configs) and the Hub-ready export round trip."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from hf_transfer.data.transforms import eval_transform
from hf_transfer.errors import TransferConfigError
from hf_transfer.models.backbones import load_backbone
from hf_transfer.models.export import export_model
from hf_transfer.runtime.cache import STAGING_PREFIX

NAMES = ["zero", "one", "two"]


def _images(n=4, size=40):
    rng = np.random.default_rng(0)
    return [PILImage.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_timm_architecture_random_init():
    bb = load_backbone("test_resnet", NAMES, image_size=32)
    assert bb.library == "timm" and not bb.pretrained and bb.base_model_id is None
    assert bb.num_labels == 3 and bb.label_names == NAMES
    assert bb.data_config.input_size == (3, 32, 32) and bb.data_config.mean == (0.5, 0.5, 0.5)
    x = torch.randn(2, 3, 32, 32)
    feats, logits = bb.features_and_logits(x)
    assert feats.shape == (2, bb.feature_dim) and logits.shape == (2, 3)
    # the head applied to the captured features gives the logits: features really are pre-logits
    torch.testing.assert_close(bb.head(feats), logits)
    groups = bb.param_groups()
    assert list(groups)[0] == "stem" and list(groups)[-1] == "head"
    assert any(k.startswith("stage_") for k in groups)
    all_params = {id(p) for _, p in bb.model.named_parameters()}
    grouped = [id(p) for params in groups.values() for _, p in params]
    assert sorted(grouped) == sorted(all_params)  # every parameter in exactly one group
    assert [n for n, _ in groups["head"]] == ["timm_model.fc.weight", "timm_model.fc.bias"]


def test_transformers_native_backbone(tiny_vit_dir):
    bb = load_backbone(tiny_vit_dir, NAMES)
    assert bb.library == "transformers" and bb.head_name == "classifier"
    assert bb.num_labels == 3 and bb.model.config.id2label == {0: "zero", 1: "one", 2: "two"}
    assert bb.data_config.size == 32 and bb.data_config.mean == (0.5, 0.5, 0.5)
    feats, logits = bb.features_and_logits(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 32) and logits.shape == (2, 3)
    groups = bb.param_groups()
    assert list(groups) == ["stem", "stage_0", "stage_1", "neck", "head"]
    assert all("embeddings" in n for n, _ in groups["stem"])


def test_backbone_errors():
    with pytest.raises(TransferConfigError, match="no-such-org/no-such-model"):
        load_backbone("no-such-org/no-such-model", NAMES)
    with pytest.raises(TransferConfigError, match="Unknown timm architecture"):
        load_backbone("timm:not_a_model_xyz", NAMES)
    with pytest.raises(TransferConfigError, match="at least one label"):
        load_backbone("test_resnet", [])


def _check_roundtrip(bb, folder):
    from transformers import AutoModelForImageClassification, pipeline

    bb.model.eval()
    images = _images()
    x = torch.stack([eval_transform(bb.data_config)(im) for im in images])
    with torch.no_grad():
        expected = bb.model(pixel_values=x).logits
    reloaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert reloaded.config.id2label == dict(enumerate(NAMES))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, expected)
    pipe = pipeline("image-classification", model=folder)
    out = pipe(images, top_k=3)
    assert all({o["label"] for o in preds} == set(NAMES) for preds in out)
    top = [max(preds, key=lambda o: o["score"])["label"] for preds in out]
    assert top == [NAMES[i] for i in expected.argmax(-1).tolist()]
    return x, expected


def test_export_timm_roundtrip(tmp_path):
    import timm

    torch.manual_seed(0)
    bb = load_backbone("test_resnet", NAMES, image_size=32, crop_pct=1.0)
    folder = export_model(bb, str(tmp_path / "out"), results={"mode": "export-test"})
    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "results.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert json.load(open(os.path.join(folder, "results.json"))) == {"mode": "export-test"}
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["label_names"] == NAMES and config["model_args"] == {}
    x, expected = _check_roundtrip(bb, folder)
    timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(timm_model(x), expected)


def test_export_transformers_roundtrip(tmp_path, tiny_vit_dir):
    torch.manual_seed(0)
    bb = load_backbone(tiny_vit_dir, NAMES)
    folder = export_model(bb, str(tmp_path / "out"))
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= set(os.listdir(folder))
    _check_roundtrip(bb, folder)


def test_export_keeps_previous_files_on_failure(tmp_path, monkeypatch):
    bb = load_backbone("test_resnet", NAMES, image_size=32)
    folder = export_model(bb, str(tmp_path / "out"), results={"run": 1})
    before = open(os.path.join(folder, "model.safetensors"), "rb").read()

    import hf_transfer.models.export as export

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(bb, folder, results={"run": 2})
    assert open(os.path.join(folder, "model.safetensors"), "rb").read() == before
    assert json.load(open(os.path.join(folder, "results.json"))) == {"run": 1}
    assert not [f for f in os.listdir(folder) if f.startswith(STAGING_PREFIX)]
