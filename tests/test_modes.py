"""The three modes through the one Trainer: parameters, learning rates, losses, cache, paired data."""

import json
import os

import pytest
import torch

from hf_transfer.config import arguments_from_dict
from hf_transfer.data.paired import PairedDataset
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.domain import grl_coefficient
from hf_transfer.training.run import prepare_run, run_transfer

from conftest import tiny_args

SOURCE, TARGET = "builtin:digits-printed", "builtin:digits-handwritten"


def tiny(tmp_path, **overrides) -> dict:
    return tiny_args(tmp_path, **{"source": SOURCE, **overrides})


def prepared(tmp_path, **overrides):
    return prepare_run(*arguments_from_dict(tiny(tmp_path, **overrides)))


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_task_partial_freeze_and_discriminative_lr(tmp_path):
    run = prepared(tmp_path, mode="task", method="partial", freeze="stem,stage_0", backbone_lr_scale=0.1)
    groups = run.backbone.param_groups()
    frozen = {n for g in ("stem", "stage_0") for n, _ in groups[g]}
    bn_stats_before = {k: v.clone() for k, v in run.backbone.model.state_dict().items() if "running_mean" in k}
    before = _snapshot(run.backbone.model)
    run.trainer.train()
    after = _snapshot(run.backbone.model)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == (name not in frozen), name  # frozen: bit-identical; the rest trained
    # BatchNorm running statistics of frozen groups are frozen too
    frozen_modules = {n.rsplit(".", 1)[0] for n in frozen}
    for key, value in run.backbone.model.state_dict().items():
        if "running_mean" in key and key.rsplit(".", 1)[0] in frozen_modules:
            assert torch.equal(value, bn_stats_before[key]), key
    # learning rates per group: head at lr, backbone groups at lr * 0.1 (before scheduling)
    # (groups with equal rate and decay are merged: a group's name lists the named groups it holds)
    lrs = {part: g["initial_lr"] for g in run.trainer.optimizer.param_groups for part in g["name"].split("+")}
    assert lrs["head/decay"] == pytest.approx(0.05)
    assert all(v == pytest.approx(0.005) for k, v in lrs.items() if not k.startswith("head/"))
    assert not any(k.startswith(("stem/", "stage_0/")) for k in lrs)
    assert len(run.trainer.optimizer.param_groups) == 2  # head at lr, the trained backbone at lr * 0.1
    names = {id(p): n for n, p in run.model.named_parameters()}
    in_optimizer = {names[id(p)] for g in run.trainer.optimizer.param_groups for p in g["params"]}
    assert not {f"classifier.{n}" for n in frozen} & in_optimizer


def test_task_freeze_errors(tmp_path):
    with pytest.raises(TransferConfigError, match="group 'stage_9' matches no parameters"):
        prepared(tmp_path, mode="task", method="partial", freeze="stage_9")
    with pytest.raises(TransferConfigError, match="needs --freeze"):
        prepared(tmp_path, mode="task", method="partial")
    with pytest.raises(TransferConfigError, match="unknown method 'lora-ish'"):
        prepared(tmp_path, mode="task", method="lora-ish")


def test_domain_dann_paired_batches_and_schedule(tmp_path):
    run = prepared(tmp_path, mode="domain", method="dann", method_args={"hold": 0.25}, max_steps=4)
    train = run.trainer.train_dataset
    assert isinstance(train, PairedDataset)
    assert len(train) == max(len(train.source), len(train.target)) == 64
    batch = next(iter(run.trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape == batch["target_pixel_values"].shape == (16, 3, 32, 32)
    assert "target_labels" not in batch  # target labels never reach training
    seen = []
    original = run.mode.set_progress
    run.mode.set_progress = lambda p: (seen.append(p), original(p))
    run.trainer.train()
    assert seen == [0.0, 0.25, 0.5, 0.75]  # progress = global_step / max_steps, from the Trainer's state
    loss = run.mode.transfer_loss
    assert loss.coefficient == pytest.approx(grl_coefficient(0.75, hi=loss.hi, hold=0.25))
    # the discriminator is part of the trained model (optimizer + checkpoints)
    disc = {id(p) for p in run.model.aux["transfer"].parameters()}
    in_opt = {id(p) for g in run.trainer.optimizer.param_groups for p in g["params"]}
    assert disc and disc <= in_opt
    assert {"cls_loss", "transfer_loss", "grl_coeff"} <= set(run.trainer.step_metrics)


def test_domain_gradient_reversal_reaches_backbone(tmp_path):
    """With the coefficient > 0 the backbone receives the NEGATED discriminator gradient."""
    run = prepared(tmp_path, mode="domain", method="dann", method_args={"hold": 0.0, "hi": 1.0})
    model, mode = run.model, run.mode
    model.train()
    batch = next(iter(run.trainer.get_train_dataloader()))
    x = torch.cat([batch["pixel_values"], batch["target_pixel_values"]])
    mode.set_progress(1.0)
    feats, _ = run.backbone.features_and_logits(x, model=model.classifier)
    feats.retain_grad()
    loss_fn = model.aux["transfer"]
    loss_fn(feats[:16], feats[16:]).backward()
    reversed_grad = feats.grad.clone()
    # same loss without reversal: discriminator on the plain features
    feats2 = feats.detach().clone().requires_grad_(True)
    logits = loss_fn.discriminator(feats2)
    domain = torch.cat([torch.ones(16, 1), torch.zeros(16, 1)])
    torch.nn.functional.binary_cross_entropy_with_logits(logits, domain).backward()
    coeff = loss_fn.coefficient
    assert coeff > 0.99
    torch.testing.assert_close(reversed_grad, -coeff * feats2.grad, rtol=1e-4, atol=1e-7)


def test_source_only_sees_no_target_images(tmp_path):
    run = prepared(tmp_path, mode="domain", method="source_only")
    batch = next(iter(run.trainer.get_train_dataloader()))
    assert "target_pixel_values" not in batch


def test_domain_method_errors(tmp_path):
    with pytest.raises(TransferConfigError, match="unknown method 'nope'"):
        prepared(tmp_path, mode="domain", method="nope")
    with pytest.raises(TransferConfigError, match="hold_me"):
        prepared(tmp_path, mode="domain", method="dann", method_args={"hold_me": 1})
    with pytest.raises(TransferConfigError, match="needs --source"):
        arguments_from_dict({"mode": "domain", "backbone": "x", "target": TARGET, "output_dir": str(tmp_path)})


def test_feature_cache_hit_and_misses(tmp_path):
    cache = str(tmp_path / "cache")
    first = prepared(tmp_path, mode="feature", feature_cache_dir=cache)
    assert (first.mode.cache.hits, first.mode.cache.misses) == (0, 3)  # train + target test + source test
    frozen_before = _snapshot(first.backbone.model)
    first.trainer.train()
    # only the head copy trained; the backbone (and its own head) untouched until finish()
    assert all(torch.equal(frozen_before[n], p) for n, p in first.backbone.model.named_parameters())
    first.mode.finish(first.model, first.trainer)
    torch.testing.assert_close(first.backbone.head.weight, first.model.classifier.weight)

    again = prepared(tmp_path, mode="feature", feature_cache_dir=cache, output_dir=str(tmp_path / "again"))
    assert (again.mode.cache.hits, again.mode.cache.misses) == (3, 0)
    for split, path in first.mode.cache_files.items():
        assert again.mode.cache_files[split] == path

    # any key change is a miss: data subset, transform, backbone weights
    for i, (change, misses) in enumerate((({"max_train_samples": 48}, 1), ({"crop_pct": 0.9}, 3), ({"seed": 1}, 3))):
        run = prepared(
            tmp_path, mode="feature", feature_cache_dir=cache, output_dir=str(tmp_path / f"miss{i}"), **change
        )
        assert run.mode.cache.misses == misses, change


def test_cached_features_match_full_model(tmp_path):
    """Head-on-cached-features predictions equal the exported full model's predictions."""
    args = tiny(tmp_path, mode="feature", feature_cache_dir=str(tmp_path / "cache"))
    results = run_transfer(*arguments_from_dict(args))
    run = prepared(tmp_path, mode="feature", feature_cache_dir=str(tmp_path / "cache"))
    feats = run.mode.eval_datasets()["target"].features
    from transformers import AutoModelForImageClassification

    from hf_transfer.data.transforms import eval_transform

    full = AutoModelForImageClassification.from_pretrained(args["output_dir"]).eval()
    test = run.mode.data.target["test"].shuffle(seed=0).select(range(32))
    x = torch.stack([eval_transform(run.backbone.data_config)(im.convert("RGB")) for im in test["image"]])
    head_w = full.timm_model.fc
    with torch.no_grad():
        torch.testing.assert_close(head_w(feats), full(pixel_values=x).logits, rtol=1e-4, atol=1e-4)
    assert results["feature_cache"] == {"hits": 0, "misses": 3}
    saved = json.load(open(os.path.join(args["output_dir"], "results.json")))
    assert saved["metrics"]["target"]["num_samples"] == 32


@pytest.mark.parametrize("on_device", ["false", "true"])
def test_float16_feature_cache_trains_the_float32_head(tmp_path, on_device):
    """float16-stored features (from the memmap or the device table) train the head in float32."""
    cache = str(tmp_path / "cache")
    run = prepared(
        tmp_path, mode="feature", feature_cache_dir=cache, feature_dtype="float16", features_on_device=on_device
    )
    assert run.mode.describe()["feature_dtype"] == "float16"
    before = run.model.classifier.weight.detach().clone()
    run.trainer.train()
    assert run.model.classifier.weight.dtype == torch.float32
    assert not torch.equal(before, run.model.classifier.weight)
    assert all(
        json.load(open(os.path.join(p, "meta.json")))["feature_dtype"] == "float16"
        for p in run.mode.cache_files.values()
    )


@pytest.mark.parametrize("mode, method", [("feature", "linear"), ("domain", "dann"), ("task", "full")])
def test_transformers_native_backbone_in_every_mode(tmp_path, tiny_vit_dir, mode, method):
    from transformers import pipeline

    args = tiny(
        tmp_path,
        mode=mode,
        method=method,
        backbone=tiny_vit_dir,
        max_steps=2,
        **({"feature_cache_dir": str(tmp_path / "cache")} if mode == "feature" else {}),
    )
    results = run_transfer(*arguments_from_dict(args))
    assert results["mode"] == mode and set(results["metrics"]) == {"source", "target"}
    out = args["output_dir"]
    preds = pipeline("image-classification", model=out)(os.path.join(out, "examples", "0_eight.png"), top_k=3)
    assert {p["label"] for p in preds} <= set(results["label_names"]) and len(preds) == 3


def test_unsupervised_model_selection_and_domain_gap(tmp_path):
    args = tiny(
        tmp_path,
        mode="domain",
        method="dann",
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        metric_for_best_model="target_unlabelled_im",
        greater_is_better=True,
        load_best_model_at_end=True,
    )
    results = run_transfer(*arguments_from_dict(args))
    selection = results["model_selection"]
    evals = {}
    for entry in results["log_history"]:
        if any(k.startswith("eval_") for k in entry):
            evals.setdefault(entry["step"], {}).update(entry)
    assert sorted(evals) == [2, 4]
    unlabelled = [e for e in results["log_history"] if "eval_target_unlabelled_im" in e]
    assert unlabelled and all("eval_target_unlabelled_accuracy" not in e for e in unlabelled)  # no labels used
    best_im_step = max(evals, key=lambda s: evals[s]["eval_target_unlabelled_im"])
    assert selection["im"]["step"] == best_im_step
    assert selection["im"]["target_accuracy"] == evals[best_im_step]["eval_target_accuracy"]
    assert selection["oracle"]["target_accuracy"] == max(e["eval_target_accuracy"] for e in evals.values())
    assert {"entropy", "snd", "last"} <= set(selection)
    gap = results["domain_gap"]
    for stage in ("before", "after"):
        assert 0.0 <= gap[stage]["proxy_a_distance"] <= 2.0 and gap[stage]["mmd"] >= 0.0
        assert gap[stage]["num_samples"] == {"source": 32, "target": 32}


# --- options every domain method shares ------------------------------------------------------------


def test_trade_off_schedule_is_logged_and_follows_progress(tmp_path):
    from hf_transfer.methods.domain import trade_off_weight

    run = prepared(
        tmp_path,
        mode="domain",
        method="dan",
        trade_off=2.0,
        trade_off_schedule="linear",
        trade_off_warmup=0.5,
        logging_steps=1,
    )
    run.trainer.train()
    logged = [e["trade_off"] for e in run.trainer.state.log_history if "trade_off" in e]
    assert logged == [pytest.approx(trade_off_weight(s / 4, 2.0, "linear", 0.5), abs=1e-5) for s in range(4)]
    assert logged == [0.0, 1.0, 2.0, 2.0]


def test_target_batch_ratio_through_the_trainer(tmp_path):
    run = prepared(tmp_path, mode="domain", method="coral", target_batch_ratio=1.5)
    batch = next(iter(run.trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape[0] == 16 and batch["target_pixel_values"].shape[0] == 24
    run.trainer.train()  # the losses take unequal source/target batches
    with pytest.raises(TransferConfigError, match="target_batch_ratio"):
        prepared(tmp_path, mode="domain", method="dan", target_batch_ratio=0)


def test_bottleneck_trains_d_dim_features_and_exports_one_exact_linear(tmp_path):
    from transformers import AutoModelForImageClassification, pipeline

    from hf_transfer.models.export import export_model

    run = prepared(tmp_path, mode="domain", method="dann", bottleneck_dim=8, method_args={"hold": 0.0})
    loss = run.model.aux["transfer"]
    assert loss.discriminator[0].in_features == 8  # the alignment loss sees the bottleneck features
    head_before = run.backbone.head.weight.detach().clone()
    run.trainer.train()
    in_opt = {id(p) for g in run.trainer.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in run.model.aux["bottleneck"].parameters()} <= in_opt
    assert not {id(p) for p in run.backbone.head.parameters()} & in_opt  # bypassed during training
    assert torch.equal(run.backbone.head.weight, head_before)
    batch = next(iter(run.trainer.get_train_dataloader()))
    x = run.model._prepare(batch["pixel_values"])
    run.model.eval()
    with torch.no_grad():
        trained = run.model(pixel_values=x)["logits"]
    run.mode.finish(run.model, run.trainer)  # folds Linear + BN + Linear into the backbone's classifier
    out = str(tmp_path / "export")
    export_model(run.backbone, out)
    reloaded = AutoModelForImageClassification.from_pretrained(out).eval()
    assert isinstance(reloaded.get_submodule(run.backbone.head_name), torch.nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, trained, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run.model(pixel_values=x)["logits"], trained, atol=1e-5, rtol=1e-5)
    from PIL import Image

    preds = pipeline("image-classification", model=out)(Image.new("RGB", (32, 32), "white"), top_k=2)
    assert len(preds) == 2 and preds[0]["label"] in run.data.label_names
    with pytest.raises(TransferConfigError, match="bottleneck_dim applies to mode=domain only"):
        prepared(tmp_path, mode="task", bottleneck_dim=8)


def _partial_target(tmp_path, keep: int = 5) -> str:
    """The built-in handwritten digits, declaring (and holding) only the first ``keep`` classes."""
    from datasets import ClassLabel, DatasetDict

    from hf_transfer.data.load import load_domain

    full = load_domain(TARGET)
    names = full["train"].features["label"].names[:keep]
    part = DatasetDict(
        {
            k: v.filter(lambda y: y < keep, input_columns="label").cast_column("label", ClassLabel(names=names))
            for k, v in full.items()
        }
    )
    path = tmp_path / "target_partial"
    part.save_to_disk(str(path))
    return str(path)


def test_partial_exclude_drops_source_rows_of_undeclared_classes(tmp_path):
    target = _partial_target(tmp_path)
    run = prepared(tmp_path, mode="domain", method="dan", target=target, label_policy="partial")
    assert run.data.alignment.setting == "partial" and len(run.data.label_names) == 10
    source_labels = {
        int(run.trainer.train_dataset.source[i]["labels"]) for i in range(len(run.trainer.train_dataset.source))
    }
    assert source_labels <= set(range(5))
    info = run.mode.label_space_weighting()
    assert info["method"] == "exclude" and info["excluded_classes"] == run.data.label_names[5:]
    assert info["excluded_source_rows"] > 0
    none = prepared(
        tmp_path, mode="domain", method="dan", target=target, label_policy="partial", partial_weighting="none"
    )
    assert {
        int(none.trainer.train_dataset.source[i]["labels"]) for i in range(len(none.trainer.train_dataset.source))
    } - set(range(5))


def test_partial_pada_weights_estimated_on_schedule_and_recorded(tmp_path):
    from hf_transfer.hub import card_domain

    target = _partial_target(tmp_path)
    args = tiny(
        tmp_path,
        mode="domain",
        method="dann",
        target=target,
        label_policy="partial",
        partial_weighting="pada",
        pada_every=2,
        max_steps=5,
    )
    run = prepare_run(*arguments_from_dict(args))
    calls = []
    original = run.mode.weighting.estimate_class_weights
    run.mode.weighting.estimate_class_weights = lambda m: (calls.append(run.trainer.state.global_step), original(m))
    run.trainer.train()
    assert calls == [2, 4]  # every pada_every steps from the Trainer's checkpointed step count, never at 0
    w = run.model.aux["pada"].weights
    assert float(w.max()) == pytest.approx(1.0) and int(run.model.aux["pada"].updates) == 2
    # the weights are the mean target softmax over the target train images, divided by its max
    run.mode.weighting.estimate_class_weights(run.model)
    images = run.mode.weighting._pada_images
    run.model.eval()
    with torch.no_grad():
        from hf_transfer.data.paired import collate_images

        probs = run.model(pixel_values=collate_images([images[i] for i in range(len(images))])["pixel_values"])[
            "logits"
        ].softmax(-1)
    torch.testing.assert_close(w, probs.mean(0) / probs.mean(0).max(), atol=1e-5, rtol=1e-4)
    info = run.mode.label_space_weighting()
    assert info["method"] == "pada" and set(info["class_weights"]) == set(run.data.label_names)
    assert info["down_weighted"] == [n for n, v in info["class_weights"].items() if v < 0.5]
    text = card_domain.label_space_text({"partial_weighting": info})
    assert "PADA" in text and "every 2 steps" in text
    with pytest.raises(TransferConfigError, match="partial_weighting='pada'"):
        prepared(tmp_path, mode="domain", method="source_only", partial_weighting="pada")


def test_pada_weights_scale_the_source_cross_entropy(tmp_path):
    run = prepared(tmp_path, mode="domain", method="dan", partial_weighting="pada")
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 10), torch.arange(16) % 10
    weights = torch.rand(10)
    weights[3] = 0.0
    run.model.aux["pada"].weights.copy_(weights)
    got = run.mode._source_loss(run.model, logits, labels)
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none") * weights[labels]
    torch.testing.assert_close(got, per_row.sum() / weights[labels].sum())  # a class-weighted mean
    run.model.aux["pada"].weights.fill_(1.0)
    torch.testing.assert_close(
        run.mode._source_loss(run.model, logits, labels), torch.nn.functional.cross_entropy(logits, labels)
    )


def test_adabn_adapts_the_bottleneck_batchnorm_before_the_fold(tmp_path):
    from hf_transfer.models.bottleneck import fold_bottleneck

    run = prepared(tmp_path, mode="domain", method="dan", bottleneck_dim=8, adabn=True)
    bn = run.model.aux["bottleneck"].bn
    before = bn.running_mean.clone()
    run.mode.finish(run.model, run.trainer)
    assert not torch.allclose(bn.running_mean, before) and int(bn.num_batches_tracked) > 0
    weight, bias = fold_bottleneck(run.model.aux["bottleneck"])  # the fold used the target statistics
    torch.testing.assert_close(run.backbone.head.weight, weight.float())
    torch.testing.assert_close(run.backbone.head.bias, bias.float())


def test_target_classes_make_a_partial_task_from_a_full_target(tmp_path):
    """--target_classes first:5 on a 10-class target + label_policy=partial: the standard way the
    Office partial tasks are built; exclude then drops the source rows of the five other classes."""
    run = prepared(
        tmp_path,
        mode="domain",
        method="dan",
        target="builtin:digits-handwritten",
        target_classes="first:5",
        label_policy="partial",
    )
    assert run.data.alignment.setting == "partial" and len(run.data.label_names) == 10
    assert run.data.alignment.source_only == run.data.label_names[5:]
    assert run.mode.label_space_weighting()["excluded_classes"] == run.data.label_names[5:]
    with pytest.raises(TransferConfigError, match="target_classes"):
        prepared(
            tmp_path,
            mode="domain",
            method="dan",
            target="builtin:digits-handwritten",
            target_classes="zero, eleven",
            label_policy="partial",
        )


def _labelled_folder(path, labels_by_split: dict, class_label: list[str] | None = None) -> str:
    """A save_to_disk dataset of random 32 px images with the given labels (None: no label)."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    label_feature = datasets.ClassLabel(names=class_label) if class_label else datasets.Value("string")
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"image": [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in labels], "label": labels},
                features=features,
            )
            for split, labels in labels_by_split.items()
        }
    ).save_to_disk(str(path))
    return str(path)


def test_rows_without_a_label_are_never_scored_and_reported(tmp_path, caplog):
    """None labels (string column; the FIRST test row among them) are dropped from training and scoring
    with one warning; results.json says how many; the confusion matrix counts exactly the scored rows."""
    from hf_transfer.evaluation.metrics import classification_report

    names = ["cat", "dog"]
    test = [None, "cat", "dog", None, "cat", "dog", "dog", None]
    target = _labelled_folder(
        tmp_path / "data", {"train": [names[i % 2] for i in range(15)] + [None] * 5, "test": test}
    )
    args = tiny(
        tmp_path,
        mode="task",
        method="full",
        target=target,
        source=None,
        max_steps=2,
        max_train_samples=None,
        max_eval_samples=None,
        per_device_train_batch_size=8,
    )
    with caplog.at_level("WARNING", logger="hf_transfer.training.modes.base"):
        results = run_transfer(*arguments_from_dict(args))
    assert results["dropped_unlabelled"] == {"target/train": 5, "target/test": 3}
    warnings = [r for r in caplog.records if "without a label" in r.getMessage()]
    assert len(warnings) == 1 and "8 dropped" in warnings[0].getMessage()
    metrics = results["metrics"]["target"]
    assert metrics["num_samples"] == 5 and sum(map(sum, metrics["confusion_matrix"])) == 5
    out = args["output_dir"]
    rows = json.load(open(os.path.join(out, "reference_predictions.json")))
    assert rows and all(r["label"] in names for r in rows)
    # the metric itself never scores a -1 row, whoever calls it
    report = classification_report([0, 1, 1, 0], [0, -1, 1, -1], num_classes=2)
    assert report["accuracy"] == 1.0 and report["num_samples"] == 2


def test_domain_mode_keeps_unlabelled_target_train_rows_as_target_images(tmp_path):
    """A ClassLabel column holding None: target TRAIN rows without a label are unlabelled target images
    in domain mode (kept); the target TEST rows without one are dropped (never scored)."""
    names = ["zero", "one"]
    target = _labelled_folder(
        tmp_path / "data", {"train": [0, 1, None, 0, 1, None, 0, 1], "test": [0, None, 1, 0, 1, 0]}, class_label=names
    )
    run = prepared(tmp_path, mode="domain", method="dann", target=target)
    assert run.data.kept_unlabelled == {"target/train": 2}
    assert run.data.dropped_unlabelled["target/test"] == 1 and len(run.eval_sets["target"]) == 5
    assert len(run.trainer.train_dataset.target) == 8


def test_label_names_never_become_paths(tmp_path):
    """Labels such as 'a/b', '..' and 'c:\\d' are data: the example files stay in examples/ with safe names."""
    from hf_transfer.models.examples import example_file_name

    labels = ["a/b", "..", "c:\\d"]
    target = _labelled_folder(tmp_path / "data", {"train": labels * 6, "test": labels * 2})
    args = tiny(
        tmp_path,
        mode="task",
        method="full",
        target=target,
        source=None,
        max_steps=1,
        max_train_samples=None,
        max_eval_samples=None,
    )
    run_transfer(*arguments_from_dict(args))
    out = args["output_dir"]
    rows = json.load(open(os.path.join(out, "reference_predictions.json")))
    assert sorted({r["label"] for r in rows}) == sorted(labels)
    examples = sorted(os.listdir(os.path.join(out, "examples")))
    assert examples == sorted(os.path.basename(r["file"]) for r in rows) and len(examples) == 4
    for row in rows:
        assert os.path.dirname(row["file"]) == "examples" and os.path.isfile(os.path.join(out, row["file"]))
    assert example_file_name(0, "../../etc/passwd") == "examples/0_etc_passwd.png"
    assert example_file_name(1, "..") == "examples/1_label.png"
