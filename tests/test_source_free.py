"""Source-free domain adaptation end to end: a tiny source-only run folder is the classifier that SHOT adapts to
the target with no source data; what is refused before any work, naming the fix."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hf_transfer.config import arguments_from_dict
from hf_transfer.errors import TransferConfigError
from hf_transfer.training.plan import plan_run
from hf_transfer.training.run import run_transfer

from conftest import tiny_args

SOURCE = "builtin:digits-printed"


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny source-only classifier (trained on printed digits only): what a source-free run starts from."""
    tmp = tmp_path_factory.mktemp("source")
    results = run_transfer(
        *arguments_from_dict(tiny_args(tmp, mode="domain", method="source_only", source=SOURCE, max_steps=12))
    )
    (folder,) = [p for p in tmp.iterdir() if p.is_dir()]
    return str(folder), results


def test_shot_adapts_the_classifier_without_source_data(source_run, tmp_path):
    folder, source_results = source_run
    args = tiny_args(tmp_path, mode="domain", method="shot", backbone=folder, max_steps=6, max_train_samples=32)
    results = run_transfer(*arguments_from_dict(args))
    out = args["output_dir"]
    assert results["source"] is None and results["source_free"]["starting_model"] == folder
    assert results["label_names"] == source_results["label_names"]  # the classifier's own label space
    assert results["label_alignment"]["policy"] == "classifier"
    # the baseline row: the starting model on the same target test rows, what its own run scored there
    before = json.load(open(os.path.join(out, "results.json")))["base_model_evaluation"]
    assert before["metrics"]["accuracy"] == pytest.approx(source_results["metrics"]["target"]["accuracy"])
    # SHOT freezes the source hypothesis: the exported head is the starting model's, the features moved
    start, adapted = (
        load_file(os.path.join(folder, "model.safetensors")),
        load_file(os.path.join(out, "model.safetensors")),
    )
    head = [k for k in start if k.startswith(("fc.", "head.")) or ".fc." in k]
    assert head and all(torch.equal(start[k], adapted[k]) for k in head)
    assert any(not torch.equal(start[k], adapted[k]) for k in start if k not in head and start[k].is_floating_point())
    gap = results["domain_gap"]["after"]
    assert gap["mmd"] > 0 and "source" not in gap["num_samples"]  # target features before vs after: no source
    card = open(os.path.join(out, "README.md")).read()
    assert "source-free" in card and "the source-free baseline" in card


def test_source_free_refusals_name_the_fix(source_run, tmp_path):
    folder, _ = source_run
    with pytest.raises(TransferConfigError, match=r"source=.*method=nrc is source-free.*Remove --source"):
        arguments_from_dict(tiny_args(tmp_path, mode="domain", method="nrc", backbone=folder, source=SOURCE))
    with pytest.raises(TransferConfigError, match=r"bottleneck_dim=16 has no effect with mode=domain method=shot"):
        arguments_from_dict(tiny_args(tmp_path, mode="domain", method="shot", backbone=folder, bottleneck_dim=16))
    auto = arguments_from_dict(tiny_args(tmp_path, mode="domain", method="shot", backbone=folder, learning_rate="auto"))
    with pytest.raises(TransferConfigError, match=r"learning_rate=auto: .*method=shot's pass over the target"):
        plan_run(*auto)
    random_init = arguments_from_dict(tiny_args(tmp_path, mode="domain", method="aad"))  # test_resnet: random init
    with pytest.raises(TransferConfigError, match=r"random init: it has no trained classifier.*source_only"):
        plan_run(*random_init)
    placeholders = tmp_path / "placeholders"
    shutil.copytree(folder, placeholders, ignore=shutil.ignore_patterns("checkpoint-*", "*.lock"))
    config = json.load(open(placeholders / "config.json"))
    config["label_names"] = [f"LABEL_{i}" for i in range(len(config["label_names"]))]  # timm: its id2label
    json.dump(config, open(placeholders / "config.json", "w"))
    no_names = arguments_from_dict(tiny_args(tmp_path, mode="domain", method="shot", backbone=str(placeholders)))
    with pytest.raises(TransferConfigError, match=r"no classifier with class names.*--backbone"):
        plan_run(*no_names)
