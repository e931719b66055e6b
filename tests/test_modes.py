"""The three modes through the one Trainer: parameters, learning rates, losses, cache, paired data."""

import json
import os

import pytest
import torch

from hf_transfer.config import arguments_from_dict
from hf_transfer.data.paired import PairedDataset
from hf_transfer.errors import TransferConfigError
from hf_transfer.losses import grl_coefficient
from hf_transfer.run import prepare_run, run_transfer

SOURCE, TARGET = "builtin:digits-printed", "builtin:digits-handwritten"


def tiny(tmp_path, **overrides) -> dict:
    args = dict(backbone="test_resnet", source=SOURCE, target=TARGET, image_size=32, crop_pct=1.0,
                augment="light", output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=16,
                per_device_eval_batch_size=64, max_train_samples=64, max_eval_samples=32, use_cpu=True,
                report_to="none", save_strategy="no", eval_strategy="no", learning_rate=0.05, optim="sgd",
                seed=0, disable_tqdm=True)
    args.update(overrides)
    return args


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
    lrs = {g["name"]: g["initial_lr"] for g in run.trainer.optimizer.param_groups}
    assert lrs["head/decay"] == pytest.approx(0.05)
    assert all(v == pytest.approx(0.005) for k, v in lrs.items() if not k.startswith("head/"))
    assert not any(k.startswith(("stem/", "stage_0/")) for k in lrs)
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
    assert run.mode.transfer_loss.coefficient == pytest.approx(grl_coefficient(0.75, hold=0.25))
    # the discriminator is part of the trained model (optimizer + checkpoints)
    disc = {id(p) for p in run.model.aux["transfer"].parameters()}
    in_opt = {id(p) for g in run.trainer.optimizer.param_groups for p in g["params"]}
    assert disc and disc <= in_opt
    assert {"cls_loss", "transfer_loss", "grl_coeff"} <= set(run.mode.last_metrics)


def test_domain_gradient_reversal_reaches_backbone(tmp_path):
    """With the coefficient > 0 the backbone receives the NEGATED discriminator gradient."""
    run = prepared(tmp_path, mode="domain", method="dann", method_args={"hold": 0.0})
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

    again = prepared(tmp_path, mode="feature", feature_cache_dir=cache)
    assert (again.mode.cache.hits, again.mode.cache.misses) == (3, 0)
    for split, path in first.mode.cache_files.items():
        assert again.mode.cache_files[split] == path

    # any key change is a miss: data subset, transform, backbone weights
    assert prepared(tmp_path, mode="feature", feature_cache_dir=cache, max_train_samples=48).mode.cache.misses == 1
    assert prepared(tmp_path, mode="feature", feature_cache_dir=cache, crop_pct=0.9).mode.cache.misses == 3
    assert prepared(tmp_path, mode="feature", feature_cache_dir=cache, seed=1).mode.cache.misses == 3


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


@pytest.mark.parametrize("mode, method", [("feature", "linear"), ("domain", "dann"), ("task", "full")])
def test_transformers_native_backbone_in_every_mode(tmp_path, tiny_vit_dir, mode, method):
    from transformers import pipeline

    args = tiny(tmp_path, mode=mode, method=method, backbone=tiny_vit_dir, max_steps=2,
                feature_cache_dir=str(tmp_path / "cache"))
    results = run_transfer(*arguments_from_dict(args))
    assert results["mode"] == mode and set(results["metrics"]) == {"source", "target"}
    out = args["output_dir"]
    preds = pipeline("image-classification", model=out)(os.path.join(out, "examples", "0_eight.png"), top_k=3)
    assert {p["label"] for p in preds} <= set(results["label_names"]) and len(preds) == 3


def test_unsupervised_model_selection_and_domain_gap(tmp_path):
    args = tiny(tmp_path, mode="domain", method="dann", max_steps=4, eval_strategy="steps", eval_steps=2,
                save_strategy="steps", save_steps=2, metric_for_best_model="target_unlabelled_im",
                greater_is_better=True, load_best_model_at_end=True)
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
