"""``--streaming true``: the training split read as a stream (local parquet shards), the refusals, the per-process
assignment of its shards."""

from __future__ import annotations

import json
import os

import datasets
import pytest
import torch

from hf_transfer.config import arguments_from_dict
from hf_transfer.data.stream import StreamedImages, load_train_stream, rank_stream
from hf_transfer.data.transforms import DataConfig
from hf_transfer.errors import TransferConfigError
from hf_transfer.training import run as run_module
from hf_transfer.training.run import prepare_run, run_transfer

from conftest import random_png_dataset, tiny_args

NAMES = ["a", "b", "c"]


def _parquet_folder(root, n_train_shards: int = 3, n: int = 24) -> str:
    """A folder of ``train-*.parquet`` shards and one ``test-*.parquet`` (random PNGs, ClassLabel labels)."""
    folder = os.path.join(root, "data")
    os.makedirs(folder)
    train = random_png_dataset(n, 20, 28, NAMES, seed=1)  # not square: the stream carries the original size
    for k in range(n_train_shards):
        train.shard(n_train_shards, k, contiguous=True).to_parquet(
            os.path.join(folder, f"train-{k:05d}-of-{n_train_shards:05d}.parquet")
        )
    random_png_dataset(9, 20, 28, NAMES, seed=2).to_parquet(os.path.join(folder, "test-00000-of-00001.parquet"))
    return str(root)


@pytest.fixture
def parquet_folder(tmp_path):
    return _parquet_folder(tmp_path / "ds")


def _no_data(*_args, **_kwargs):
    raise AssertionError("the data was loaded before the refusal")


def test_stream_keeps_shards_names_and_loads_the_test_split(tmp_path, parquet_folder):
    stream = load_train_stream(parquet_folder)
    assert stream.dataset.n_shards == 3 and stream.label_names == NAMES
    assert len(stream.test) == 9 and stream.test.features["label"].names == NAMES
    assert stream.info == {"train_split": "train", "test_split": "test", "n_shards": 3, "class_names": "features"}
    again = load_train_stream(parquet_folder).test
    assert again._fingerprint == stream.test._fingerprint  # cached once per content (image check, decoded images)
    other = load_train_stream(_parquet_folder(tmp_path / "other", n=6)).test  # the same test file, other train rows
    assert other._fingerprint == stream.test._fingerprint
    third = tmp_path / "third"
    _parquet_folder(third)
    random_png_dataset(9, 20, 28, NAMES, seed=3).to_parquet(str(third / "data" / "test-00000-of-00001.parquet"))
    assert load_train_stream(str(third)).test._fingerprint != stream.test._fingerprint


def test_streamed_items_are_uint8_storage_with_the_original_size(parquet_folder):
    stream = load_train_stream(parquet_folder)
    cfg = DataConfig(input_size=(3, 16, 16), crop_pct=0.8)
    images = StreamedImages(stream.dataset, cfg, "train", stream.image_column, stream.label_column, seed=0)
    items = []
    for item in images:  # endless: take two passes' worth
        items.append(item)
        if len(items) == 48:
            break
    first = items[0]
    assert first["pixel_values"].dtype == torch.uint8 and tuple(first["pixel_values"].shape) == (3, 20, 20)
    assert first["image_size"].tolist() == [20, 28]
    labels = [it["labels"] for it in items]
    assert sorted(labels[:24]) == sorted(labels[24:]) == sorted(k % 3 for k in range(24))  # every row once a pass
    pixels = [it["pixel_values"] for it in items]
    assert not all(torch.equal(a, b) for a, b in zip(pixels[:24], pixels[24:], strict=True))  # each pass reshuffled


def test_loader_workers_beyond_the_shard_count_stay_idle(tmp_path):
    stream = load_train_stream(_parquet_folder(tmp_path / "ds", n_train_shards=1, n=8))
    cfg = DataConfig(input_size=(3, 16, 16), crop_pct=0.8)
    images = StreamedImages(stream.dataset, cfg, "train", stream.image_column, stream.label_column, seed=0)
    loader = torch.utils.data.DataLoader(images, batch_size=4, num_workers=2)  # the second worker gets no shard
    labels = [label for _, batch in zip(range(4), loader, strict=False) for label in batch["labels"].tolist()]
    assert sorted(labels) == sorted(2 * [k % 3 for k in range(8)])  # two passes of the one worker with the shard


def test_unlabelled_label_feature_is_refused_naming_the_fix(tmp_path):
    folder = tmp_path / "ds" / "data"
    os.makedirs(folder)
    ds = random_png_dataset(6, 8, 8, NAMES).cast_column("label", datasets.Value("int64"))
    ds.to_parquet(str(folder / "train-00000-of-00001.parquet"))
    ds.to_parquet(str(folder / "test-00000-of-00001.parquet"))
    with pytest.raises(TransferConfigError, match="not a ClassLabel.*ClassLabel\\(names"):
        load_train_stream(str(tmp_path / "ds"))


def test_a_stream_without_a_test_split_is_refused(tmp_path):
    folder = tmp_path / "ds" / "data"
    os.makedirs(folder)
    random_png_dataset(6, 8, 8, NAMES).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    with pytest.raises(TransferConfigError, match="needs a stored test split"):
        load_train_stream(str(tmp_path / "ds"))


@pytest.mark.parametrize(
    "n_shards, world_size, rule", [(4, 2, "whole shards per process"), (3, 2, "every process reads all shards")]
)
def test_rank_assignment_covers_every_row_once(tmp_path, n_shards, world_size, rule, caplog):
    stream = load_train_stream(_parquet_folder(tmp_path / "ds", n_train_shards=n_shards)).dataset
    parts = []
    for rank in range(world_size):
        part, assignment = rank_stream(stream, rank, world_size)
        assert assignment["rule"].startswith(rule) and assignment["n_shards"] == n_shards
        parts.append([row["image"].tobytes() for row in part])
    assert sum(len(p) for p in parts) == 24
    assert len({b for p in parts for b in p}) == 24  # the processes' parts are disjoint and cover the split
    warned = "do not divide among" in caplog.text
    assert warned == (n_shards % world_size != 0)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"k_shot": 2}, "k_shot=2 does not work with --streaming"),
        ({"max_train_samples": 8}, "max_train_samples=8 does not work with --streaming"),
        ({"input_path": "stock"}, "input_path='stock' does not work with --streaming"),
        ({"mode": "feature", "method": "linear"}, "streaming applies to mode=task or domain only"),
    ],
)
def test_refusals_name_the_option_before_any_data_loads(tmp_path, monkeypatch, parquet_folder, overrides, match):
    monkeypatch.setattr(run_module, "load_transfer_data", _no_data)
    args = tiny_args(tmp_path, **{"mode": "task", "target": parquet_folder, "streaming": True, **overrides})
    if "max_train_samples" not in overrides:
        args.pop("max_train_samples")
    with pytest.raises(TransferConfigError, match=match):
        prepare_run(*arguments_from_dict(args))


def test_streaming_needs_max_steps(tmp_path, monkeypatch, parquet_folder):
    monkeypatch.setattr(run_module, "load_transfer_data", _no_data)
    args = tiny_args(tmp_path, mode="task", target=parquet_folder, streaming=True, num_train_epochs=1)
    args.pop("max_train_samples")
    args.pop("max_steps")
    with pytest.raises(TransferConfigError, match="streaming=true needs --max_steps > 0"):
        prepare_run(*arguments_from_dict(args))


@pytest.mark.parametrize("workers", [0, 2])  # 2: the loader's worker processes split the shards between them
def test_a_streaming_task_run_trains_and_scores(tmp_path, parquet_folder, workers):
    args = tiny_args(
        tmp_path,
        mode="task",
        target=parquet_folder,
        streaming=True,
        max_steps=3,
        per_device_train_batch_size=8,
        dataloader_num_workers=workers,
    )
    args.pop("max_train_samples")
    results = run_transfer(*arguments_from_dict(args))
    assert results["streaming"]["enabled"] is True
    assert results["streaming"]["assignment"] == {
        "world_size": 1,
        "n_shards": 3,
        "rule": "whole shards per process",
        "shards_per_process": 3,
    }
    with open(os.path.join(args["output_dir"], "results.json")) as f:
        written = json.load(f)
    assert written["streaming"]["n_shards"] == 3 and "resume" in written["streaming"]
    assert max(entry.get("step", 0) for entry in written["log_history"]) == 3  # max_steps ended the stream
    assert written["metrics"]["target"]["num_samples"] == 9  # the whole test split, scored as without streaming


def _ids_without_names(root, labels_test=None) -> str:
    """A parquet folder whose label column holds plain integer ids (no ClassLabel names)."""
    folder = os.path.join(root, "data")
    os.makedirs(folder)
    for split, n, seed in (("train", 12, 1), ("test", 6, 2)):
        ds = random_png_dataset(n, 20, 28, NAMES, seed=seed).cast_column("label", datasets.Value("int64"))
        if split == "test" and labels_test is not None:
            ds = ds.remove_columns("label").add_column("label", labels_test)
        ds.to_parquet(os.path.join(folder, f"{split}-00000-of-00001.parquet"))
    return str(root)


def test_integer_labels_without_names_take_the_declared_class_names(tmp_path):
    root = _ids_without_names(tmp_path / "ids")
    with pytest.raises(TransferConfigError, match="--class_names NAME0,NAME1"):
        load_train_stream(root)
    stream = load_train_stream(root, class_names=["x", "y", "z"])
    assert stream.label_names == ["x", "y", "z"] and stream.info["class_names"] == "declared"
    assert stream.test.features["label"].names == ["x", "y", "z"]
    row = next(iter(stream.dataset))
    assert row["label"] in (0, 1, 2)
    args = tiny_args(tmp_path, mode="task", target=root, streaming=True, max_steps=2, class_names="x,y,z")
    args.pop("max_train_samples")
    results = run_transfer(*arguments_from_dict(args))
    assert results["label_names"] == ["x", "y", "z"] and results["streaming"]["class_names"] == "declared"
    # ids past the declared names, and names where the stream declares its own, are refused naming the option
    with pytest.raises(TransferConfigError, match="label id 2 does not fit --class_names"):
        load_train_stream(_ids_without_names(tmp_path / "big", labels_test=[0, 1, 2, 3, 4, 5]), class_names=["x", "y"])
    with pytest.raises(TransferConfigError, match="class_names='x,y,z' has no effect"):
        named = _parquet_folder(tmp_path / "named")
        prepare_run(*arguments_from_dict({**args, "target": named, "output_dir": str(tmp_path / "named_run")}))
    with pytest.raises(TransferConfigError, match="class_names"):
        arguments_from_dict({**args, "streaming": False})


def test_the_test_split_is_checked_and_decoded_at_the_first_evaluation(tmp_path, monkeypatch):
    """Training starts without a pass over the test split (only its head is decoded before); the first evaluation
    checks every row, and a bad image past the head stops the run there, naming the row."""
    from hf_transfer.data.deferred import DeferredDataset
    from hf_transfer.training import run_data

    monkeypatch.setattr(run_data, "STREAM_TEST_CHECK_ROWS", 4)
    root = _parquet_folder(tmp_path / "ds")
    test_file = os.path.join(root, "data", "test-00000-of-00001.parquet")
    test = datasets.Dataset.from_parquet(test_file)
    rows = test.to_dict()
    rows["image"][6] = {"bytes": b"not an image", "path": None}
    datasets.Dataset.from_dict(rows, features=test.features).to_parquet(test_file)
    args = tiny_args(tmp_path, mode="task", target=root, streaming=True, max_steps=2, per_device_train_batch_size=8)
    args.pop("max_train_samples")
    run = prepare_run(*arguments_from_dict(args))
    target = run.eval_sets["target"]
    assert isinstance(target, DeferredDataset) and not target.is_built
    run.trainer.train()  # no evaluation during training: nothing of the test split decoded past its head
    assert not target.is_built
    with pytest.raises(TransferConfigError, match=r"target evaluation rows, checked at the first evaluation.*row 6"):
        run.trainer.evaluate()


def test_a_resumed_streaming_run_ends_where_the_uninterrupted_one_does(tmp_path, parquet_folder):
    args = tiny_args(
        tmp_path,
        mode="task",
        target=parquet_folder,
        streaming=True,
        max_steps=4,
        per_device_train_batch_size=5,  # 24 rows: the passes and the batches do not line up
        save_strategy="steps",
        save_steps=2,
    )
    args.pop("max_train_samples")
    whole = prepare_run(*arguments_from_dict(args))
    whole.trainer.train()
    expected = {k: v.clone() for k, v in whole.backbone.model.state_dict().items()}
    resumed = prepare_run(*arguments_from_dict({**args, "resume_from_checkpoint": True}))
    resumed.trainer.train(resume_from_checkpoint=os.path.join(args["output_dir"], "checkpoint-2"))
    assert resumed.trainer.state.global_step == 4
    got = resumed.backbone.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.ddp
def test_two_processes_read_disjoint_shards_and_train_the_same_weights(tmp_path):
    import subprocess

    from conftest import two_process_launch

    folder = _parquet_folder(tmp_path / "ds", n_train_shards=4)
    cmd = two_process_launch(os.path.join(os.path.dirname(__file__), "ddp_streaming.py"), str(tmp_path), folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    first, second = (json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1))
    assert first["streaming"]["assignment"]["rule"] == "whole shards per process"
    assert first["streaming"]["assignment"]["world_size"] == 2
    assert first["streaming"]["assignment"]["shards_per_process"] == 2
    for report in (first, second):  # each pass is this process's whole part, once (not re-sharded by accelerate)
        one, two = report["passes"]
        assert len(set(one)) == 12 and set(one) == set(two) and one != two  # the same rows, reshuffled
    assert not set(first["passes"][0]) & set(second["passes"][0])  # the processes' parts are disjoint
    assert first["weights"] == second["weights"]  # DDP kept them in step


@pytest.mark.ddp
def test_two_processes_stream_both_domains_of_a_domain_run(tmp_path):
    import subprocess

    from conftest import two_process_launch

    source = _parquet_folder(tmp_path / "source", n_train_shards=4)
    target = _parquet_folder(tmp_path / "target", n_train_shards=2, n=16)
    script = os.path.join(os.path.dirname(__file__), "ddp_streaming.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        two_process_launch(script, str(tmp_path), target, source), env=env, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-4000:]
    first, second = (json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1))
    for role, shards in (("source", 2), ("target", 1)):  # each process reads whole shards of both streams
        assignment = first["streaming"][role]["assignment"]
        assert assignment["rule"] == "whole shards per process" and assignment["shards_per_process"] == shards
    for report in (first, second):  # each source pass is this process's whole part, once, reshuffled
        one, two = report["passes"]
        assert len(set(one)) == 12 and set(one) == set(two) and one != two
    assert not set(first["passes"][0]) & set(second["passes"][0])  # the processes' source parts are disjoint
    assert first["weights"] == second["weights"]  # DDP kept them in step
