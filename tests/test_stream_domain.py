"""``--streaming true`` in domain mode: the source's and the target's training splits streamed and zipped, their
label spaces matched by name, the refusals of what needs a whole training split, resume."""

from __future__ import annotations

import io
import json
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_transfer.config import arguments_from_dict
from hf_transfer.data.stream_pair import PairedStreams
from hf_transfer.errors import TransferConfigError
from hf_transfer.training import run as run_module
from hf_transfer.training.run import prepare_run, run_transfer

from conftest import tiny_args

#: one solid colour per class name: a streamed image tells which class it was stored under
COLOURS = {"a": (250, 0, 0), "b": (0, 250, 0), "c": (0, 0, 250), "d": (250, 250, 0), "e": (0, 250, 250)}


def _solid_dataset(n: int, names: list[str], seed: int) -> datasets.Dataset:
    """``n`` PNGs of 20x28 px, each the colour of its class ``names[k % len(names)]`` plus a little noise."""
    rng = np.random.default_rng(seed)
    cells, labels = [], []
    for k in range(n):
        label = k % len(names)
        pixels = np.clip(np.array(COLOURS[names[label]]) + rng.integers(0, 5, (20, 28, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": None})
        labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": cells, "label": labels}, features=features)


def _parquet_domain(root, names: list[str], n_train: int = 24, n_shards: int = 2, seed: int = 0) -> str:
    """A folder of ``train-*.parquet`` shards and a ``test-*.parquet`` file of one domain."""
    folder = os.path.join(root, "data")
    os.makedirs(folder)
    train = _solid_dataset(n_train, names, seed)
    for k in range(n_shards):
        train.shard(n_shards, k, contiguous=True).to_parquet(
            os.path.join(folder, f"train-{k:05d}-of-{n_shards:05d}.parquet")
        )
    _solid_dataset(2 * len(names), names, seed + 100).to_parquet(os.path.join(folder, "test-00000-of-00001.parquet"))
    return str(root)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_domains")
    return {
        "source": _parquet_domain(root / "source", ["a", "b", "c", "d"], seed=1),
        # the shared classes in another order, and one the source lacks
        "target": _parquet_domain(root / "target", ["c", "e", "a", "b"], n_train=16, seed=2),
    }


def _args(tmp_path, domains, **overrides) -> dict:
    base = {
        "mode": "domain",
        "method": "dann",
        "source": domains["source"],
        "target": domains["target"],
        "streaming": True,
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
    }
    args = tiny_args(tmp_path, **{**base, **overrides})
    args.pop("max_train_samples")
    return args


def _colour_class(pixels: torch.Tensor) -> str:
    """The class whose colour a uint8 image [3, H, W] has."""
    mean = pixels.float().mean(dim=(1, 2)).numpy()
    return min(COLOURS, key=lambda name: float(np.abs(mean - np.array(COLOURS[name])).sum()))


def test_batches_carry_both_domains_with_labels_matched_by_name(tmp_path, domains):
    run = prepare_run(*arguments_from_dict(_args(tmp_path, domains, target_batch_ratio=2.0)))
    assert run.data.label_names == ["a", "b", "c"]  # the shared classes, in the source's order
    assert run.data.alignment.source_only == ["d"] and run.data.alignment.target_only == ["e"]
    test = run.data.target["test"]  # stored as c, e, a, b: re-encoded to the run's ids by name, "e" dropped
    assert test.features["label"].names == ["a", "b", "c"] and len(test) == 6
    assert all(
        _colour_class(torch.as_tensor(np.array(row["image"])).permute(2, 0, 1)) == ["a", "b", "c"][row["label"]]
        for row in test
    )
    assert isinstance(run.trainer.train_dataset, PairedStreams)
    loader = run.trainer.get_train_dataloader()
    source_classes, target_classes = set(), set()
    for _, batch in zip(range(12), loader, strict=False):  # 48 source rows: two passes over the 18 kept
        assert batch["pixel_values"].shape[0] == 4 and batch["target_pixel_values"].shape[0] == 8  # ratio 2
        assert batch["target_image_size"].shape == (8, 2) and batch["image_size"].tolist()[0] == [20, 28]
        for pixels, label in zip(batch["pixel_values"], batch["labels"].tolist(), strict=True):
            assert _colour_class(pixels) == run.data.label_names[label]  # source labels re-encoded by name
            source_classes.add(run.data.label_names[label])
        target_classes |= {_colour_class(p) for p in batch["target_pixel_values"]}
    assert source_classes == {"a", "b", "c"}  # "d" (not in the label space) never streamed
    assert target_classes == {"a", "b", "c"}  # "e" skipped; the target's labels never travel
    assert "labels" not in next(iter(run.trainer.train_dataset.target))
    assert len(run.data.target["train"]) == 12  # the unlabelled head: the 16 target rows without "e"'s 4
    assert run.data.train_stream.info["unlabelled_head"] == {"rows_read": 16, "rows_kept": 12}


def test_a_streaming_domain_run_trains_on_both_domains_and_scores(tmp_path, domains):
    args = _args(tmp_path, domains, max_eval_samples=6, eval_strategy="steps", eval_steps=3)
    results = run_transfer(*arguments_from_dict(args))
    with open(os.path.join(args["output_dir"], "results.json")) as f:
        written = json.load(f)
    streaming = written["streaming"]
    assert streaming["enabled"] is True and "resume" in streaming
    for role in ("source", "target"):
        assert streaming[role]["assignment"]["rule"] == "whole shards per process"
        assert streaming[role]["n_shards"] == 2
    head = streaming["target"]["unlabelled_head"]  # max_eval_samples bounds the head; "e" rows dropped from it
    assert head["rows_read"] == 6 and 0 < head["rows_kept"] <= 6
    train_logs = [e for e in written["log_history"] if "loss" in e]
    assert len(train_logs) == 3 and all(e["transfer_loss"] > 0 for e in train_logs)  # target images in every batch
    assert max(e.get("step", 0) for e in written["log_history"]) == 3
    unsupervised = [k for e in written["log_history"] for k in e if k.startswith("eval_target_unlabelled_")]
    assert unsupervised and not any("accuracy" in k for k in unsupervised)  # the head feeds the validators only
    assert results["metrics"]["target"]["num_samples"] == 6 and results["metrics"]["source"]["num_samples"] == 6


def test_the_source_only_baseline_streams_the_source_alone(tmp_path, domains):
    run = prepare_run(*arguments_from_dict(_args(tmp_path, domains, method="source_only")))
    batch = next(iter(run.trainer.get_train_dataloader()))
    assert "target_pixel_values" not in batch and batch["labels"].shape == (4,)


def _no_data(*_args, **_kwargs):
    raise AssertionError("the data was loaded before the refusal")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"adabn": True, "backbone": "test_resnet"}, "adabn=True does not work with --streaming"),
        (
            {"label_policy": "partial", "partial_weighting": "pada"},
            "partial_weighting='pada' does not work with --streaming",
        ),
        ({"method": "shot", "source": None}, "streaming=True .*target_pass"),
        ({"max_train_samples": 8}, "max_train_samples=8 does not work with --streaming"),
    ],
)
def test_what_needs_a_whole_split_is_refused_before_any_data_loads(tmp_path, monkeypatch, domains, overrides, match):
    monkeypatch.setattr(run_module, "load_transfer_data", _no_data)
    args = {k: v for k, v in {**_args(tmp_path, domains), **overrides}.items() if v is not None}
    with pytest.raises(TransferConfigError, match=match):
        prepare_run(*arguments_from_dict(args))


def test_a_resumed_streaming_domain_run_ends_where_the_uninterrupted_one_does(tmp_path, domains):
    args = _args(tmp_path, domains, max_steps=4, per_device_train_batch_size=5, save_strategy="steps", save_steps=2)
    whole = prepare_run(*arguments_from_dict(args))
    whole.trainer.train()
    expected = {k: v.clone() for k, v in whole.model.state_dict().items()}
    resumed = prepare_run(*arguments_from_dict({**args, "resume_from_checkpoint": True}))
    resumed.trainer.train(resume_from_checkpoint=os.path.join(args["output_dir"], "checkpoint-2"))
    assert resumed.trainer.state.global_step == 4
    got = resumed.model.state_dict()
    assert any(k.startswith("aux.transfer") for k in got)  # the discriminator is compared too
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_loader_workers_read_both_streams_or_are_refused(tmp_path, domains):
    run = prepare_run(*arguments_from_dict(_args(tmp_path, domains, dataloader_num_workers=2)))
    for _, batch in zip(range(3), run.trainer.get_train_dataloader(), strict=False):
        assert batch["pixel_values"].shape[0] == 4 and batch["target_pixel_values"].shape[0] == 4
    one_shard = _parquet_domain(tmp_path / "one_shard", ["a", "b", "c"], n_shards=1, seed=3)
    args = _args(tmp_path, {**domains, "target": one_shard}, dataloader_num_workers=2)
    with pytest.raises(TransferConfigError, match="dataloader_num_workers=2: .* 2 source and 1 target shard"):
        prepare_run(*arguments_from_dict(args))


def test_partial_weighting_exclude_skips_the_excluded_source_classes_as_streamed():
    from hf_transfer.training.modes.domain_parts import SourceClasses

    excluded = SourceClasses("exclude", ["d"])
    lookup = excluded.stream_label_map(["d", "B", "a", "x"], ["a", "b", "d"])  # matched by name, "x" unknown
    assert lookup[:4].tolist() == [-1, 1, 0, -1]
    assert excluded.summary(["a", "b", "d"])["excluded_source_rows"] is None  # not counted: no pass
    assert SourceClasses("none", []).stream_label_map(["d", "a"], ["a", "b", "d"])[:2].tolist() == [2, 0]
