"""Task adaptation strategies: each changes exactly what it says (freezing, LRs, unfreezing schedule
incl. resume, L2-SP / BSS, k-shot)."""

import pytest
import torch
from transformers import TrainerCallback

from hf_transfer.config import arguments_from_dict
from hf_transfer.data.kshot import kshot, kshot_indices
from hf_transfer.data.transforms import DataConfig
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.finetune import GradualUnfreezing, group_learning_rates, select_parameters
from hf_transfer.methods.finetune.regularizers import BSS, L2SP
from hf_transfer.models.backbones import Backbone
from hf_transfer.training.run import prepare_run

from conftest import tiny_args


def tiny(tmp_path, **overrides) -> dict:
    return tiny_args(tmp_path, **{"mode": "task", "weight_decay": 1e-3, **overrides})


def prepared(tmp_path, callbacks=None, **overrides):
    return prepare_run(*arguments_from_dict(tiny(tmp_path, **overrides)), callbacks=callbacks)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_freeze_groups_and_patterns_bit_identical(tmp_path):
    run = prepared(tmp_path, method="partial", freeze="stem,*layer2.*", max_steps=3)
    groups = run.backbone.param_groups()
    frozen = {n for n, _ in groups["stem"]} | {n for n, _ in run.backbone.model.named_parameters() if ".layer2." in n}
    assert run.mode.frozen_groups == ["stem", "*layer2.*"]
    before = snapshot(run.backbone.model)
    run.trainer.train()
    after = snapshot(run.backbone.model)
    for name in before:
        assert torch.equal(before[name], after[name]) == (name in frozen), name


def test_freeze_errors_name_the_entry(tmp_path):
    groups = prepared(tmp_path, method="full").backbone.param_groups()
    with pytest.raises(TransferConfigError, match="pattern 're:nothing_like_this' matches no parameter"):
        select_parameters("re:nothing_like_this", groups)
    with pytest.raises(TransferConfigError, match="group 'stage_9' matches no parameters"):
        select_parameters("stage_9", groups)
    with pytest.raises(TransferConfigError, match="head is always trained"):
        select_parameters("*fc.*", groups)
    # timm names match with or without the wrapper's "timm_model." prefix
    assert select_parameters("re:^layer1\\.", groups)["re:^layer1\\."]


def test_transformers_module_name_patterns():
    from transformers import ViTConfig, ViTForImageClassification

    model = ViTForImageClassification(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=16,
            image_size=16,
            patch_size=8,
            num_labels=3,
        )
    )
    bb = Backbone(model=model, model_id="tiny-vit", library="transformers", data_config=DataConfig())
    groups = bb.param_groups()
    assert list(groups)[:2] == ["stem", "stage_0"] and list(groups)[-1] == "head"
    sel = select_parameters("stem,vit.layers.[01].attention.*", groups)
    names = [n for n, _ in sel["vit.layers.[01].attention.*"]]
    assert names and all(n.startswith(("vit.layers.0.attention.", "vit.layers.1.attention.")) for n in names)
    assert any(".q_proj." in n for n in names)
    with pytest.raises(TransferConfigError, match="matches no parameter name"):
        select_parameters("vit.layers.7.*", groups)


def test_layer_decay_and_discriminative_lrs(tmp_path):
    run = prepared(tmp_path, method="full", layer_decay=0.5, backbone_lr_scale=0.1)
    names = list(run.backbone.param_groups())
    assert names == ["stem", "stage_0", "stage_1", "stage_2", "stage_3", "head"]
    opt = run.trainer.create_optimizer()
    lrs = {g["name"].split("/")[0]: g["lr"] for g in opt.param_groups}
    n = len(names)
    for i, name in enumerate(names):
        expected = 0.05 * (1.0 if name == "head" else 0.1) * 0.5 ** (n - 1 - i)
        assert lrs[name] == pytest.approx(expected), name
    assert group_learning_rates(["a", "head"], 1.0) == {"a": 1.0, "head": 1.0}
    with pytest.raises(TransferConfigError, match="layer_decay"):
        group_learning_rates(["a", "head"], 1.0, layer_decay=1.5)


class Recorder(TrainerCallback):
    """Which scheduled groups train at each step (runs after the unfreezing callback)."""

    def __init__(self, mode):
        self.mode, self.seen = mode, {}

    def on_step_begin(self, args, state, control, **kwargs):
        sched = self.mode.unfreezing
        self.seen[state.global_step] = [g for g, ps in sched.groups.items() if all(p.requires_grad for _, p in ps)]


def _unfreeze_run(tmp_path, out, **overrides):
    # augment="none": with random augmentation a mid-epoch resume is not bit-exact in this stack (the RNG state
    # is saved after accelerate's loader has prefetched the next batch), independent of unfreezing
    run = prepared(
        tmp_path,
        method="full",
        unfreeze_every=2,
        max_steps=6,
        augment="none",
        output_dir=str(out),
        **overrides,
    )
    rec = Recorder(run.mode)
    run.trainer.add_callback(rec)
    return run, rec


def test_gradual_unfreezing_schedule_and_resume(tmp_path):
    full, rec = _unfreeze_run(tmp_path, tmp_path / "a", save_strategy="steps", save_steps=3)
    assert list(full.mode.unfreezing.groups) == ["stage_3", "stage_2", "stage_1", "stage_0", "stem"]
    groups = full.backbone.param_groups()
    before = snapshot(full.backbone.model)
    # every scheduled parameter is in the optimizer from the start (same groups and LRs before/after unfreezing)
    opt = full.trainer.create_optimizer()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for ps in groups.values() for _, p in ps)
    full.trainer.train()
    assert rec.seen == {
        0: [],
        1: [],
        2: ["stage_3"],
        3: ["stage_3"],
        4: ["stage_3", "stage_2"],
        5: ["stage_3", "stage_2"],
    }
    after = snapshot(full.backbone.model)
    for g, ps in groups.items():
        changed = any(not torch.equal(before[n], after[n]) for n, _ in ps)
        assert changed == (g in ("head", "stage_3", "stage_2")), g
        if g not in ("head", "stage_3", "stage_2"):  # never unfrozen: bit-identical
            assert all(torch.equal(before[n], after[n]) for n, _ in ps), g

    # resume from step 3: same trainable groups from there on, same optimizer groups/LRs, same weights
    resumed, rec2 = _unfreeze_run(tmp_path, tmp_path / "b", resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    resumed.trainer.train(resume_from_checkpoint=resumed.resume)
    assert rec2.seen == {3: ["stage_3"], 4: ["stage_3", "stage_2"], 5: ["stage_3", "stage_2"]}
    lr_a = [(g["name"], g["lr"]) for g in full.trainer.optimizer.param_groups]
    lr_b = [(g["name"], g["lr"]) for g in resumed.trainer.optimizer.param_groups]
    assert lr_a == lr_b
    for n, p in resumed.backbone.model.named_parameters():
        torch.testing.assert_close(p, after[n], rtol=1e-5, atol=1e-6, msg=n)


def test_unfreezing_epochs_and_missing_callback(tmp_path):
    p = torch.nn.Parameter(torch.zeros(2))
    cb = GradualUnfreezing({"stage_1": [("a", p)], "stage_0": [("b", p)]}, every=0.5, unit="epochs")
    cb.steps_per_epoch = 10
    assert cb.unfreeze_steps() == {"stage_1": 5, "stage_0": 10}
    assert [cb.unfrozen_count(s) for s in (0, 4, 5, 9, 10, 100)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(TransferConfigError, match="unfreeze_unit"):
        GradualUnfreezing({"x": [("a", p)]}, every=1, unit="hours")
    # prepare_run attaches the mode's callbacks itself (hf-transfer train needs nothing extra)
    run = prepared(tmp_path, method="full", unfreeze_every=2, max_steps=1)
    assert any(isinstance(c, GradualUnfreezing) for c in run.trainer.callback_handler.callbacks)


def test_unfreezing_mask_mode_keeps_frozen_identical(tmp_path):
    """The DDP variant (requires_grad untouched, gradients masked) freezes exactly as well."""
    run = prepared(tmp_path, method="full", unfreeze_every=100, max_steps=2)
    sched = run.mode.unfreezing
    for ps in sched.groups.values():
        for _, p in ps:
            p.requires_grad_(True)
    run.mode.unfreezing = GradualUnfreezing(sched.groups, every=100, mask=True)
    run.trainer.add_callback(run.mode.unfreezing)
    before = snapshot(run.backbone.model)
    run.trainer.train()
    head = {n for n, _ in run.backbone.param_groups()["head"]}
    for n, p in run.backbone.model.named_parameters():
        assert torch.equal(before[n], p) == (n not in head), n


def test_l2sp_penalty_and_no_weight_decay(tmp_path):
    w = torch.nn.Parameter(torch.ones(3))
    head = torch.nn.Parameter(torch.full((2, 2), 2.0))
    reg = L2SP([("w", w)], [("head.weight", head)], alpha=0.1, beta=0.01)
    assert float(reg().detach()) == pytest.approx(0.5 * 0.01 * 16)  # at the pretrained point only the head term
    with torch.no_grad():
        w.add_(1.0)
    reg().backward()
    torch.testing.assert_close(w.grad, 0.1 * torch.ones(3))  # d/dw alpha/2 ||w - w0||^2 = alpha (w - w0)

    run = prepared(tmp_path, method="full", regularizer="l2sp", l2sp_alpha=0.1, max_steps=2)
    opt = run.trainer.create_optimizer()
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    run.trainer.train()
    logs = run.trainer.step_metrics
    assert logs["reg_loss"] > 0 and "cls_loss" in logs


def test_bss_penalty(tmp_path):
    f = torch.randn(8, 5)
    sigma = torch.linalg.svdvals(f)
    assert float(BSS(eta=0.5, k=2)(f)) == pytest.approx(0.5 * float(sigma[-2:].pow(2).sum()), rel=1e-5)
    run = prepared(tmp_path, method="full", regularizer="bss", bss_eta=0.1, max_steps=1)
    model = run.model.train()
    batch = next(iter(run.trainer.get_train_dataloader()))
    seen = {}
    hook = run.backbone.head.register_forward_hook(lambda m, inp, out: seen.update(f=inp[0].detach(), z=out.detach()))
    out = model(**batch)  # one forward: the penalty is on this very batch's features
    hook.remove()
    ce = torch.nn.functional.cross_entropy(seen["z"], batch["labels"])
    expected = ce + 0.1 * torch.linalg.svdvals(seen["f"])[-1] ** 2
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(out["loss"]) > float(ce)


def test_kshot_seeded_nested(tmp_path):
    labels = [i % 4 for i in range(40)]
    a = kshot_indices(labels, 3, seed=1)
    assert len(a) == 12 and a == kshot_indices(labels, 3, seed=1)
    assert sorted(labels[i] for i in a) == sorted([0, 1, 2, 3] * 3)
    assert set(kshot_indices(labels, 2, seed=1)) <= set(a)  # a k-sweep adds labels
    assert a != kshot_indices(labels, 3, seed=2)
    with pytest.raises(TransferConfigError, match="k_shot"):
        kshot_indices(labels, 0, seed=0)
    run = prepared(tmp_path, method="full", k_shot=2, max_train_samples=None)
    ds = run.trainer.train_dataset
    assert len(ds) == 20
    assert sorted(int(ds[i]["labels"]) for i in range(len(ds))) == sorted(list(range(10)) * 2)
    assert kshot(run.data.target["train"], 2, seed=0)["label"] == kshot(run.data.target["train"], 2, seed=0)["label"]


def test_groups_with_equal_rates_merge_and_train_bit_identically():
    """One optimizer group per (rate, decay): the fused AdamW kernel runs once per group, and the update of
    every parameter is the same as with one group per named group."""
    from hf_transfer.methods.finetune.lr import merge_equal_groups

    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    split = [
        {"params": list(m.parameters()), "lr": lr, "weight_decay": wd, "name": f"g{i}"}
        for i, (m, lr, wd) in enumerate(zip(nets[0], (0.1, 0.1, 0.01), (0.0, 0.0, 0.0), strict=True))
    ]
    merged = merge_equal_groups(
        [
            {"params": list(m.parameters()), "lr": lr, "weight_decay": 0.0, "name": f"g{i}"}
            for i, (m, lr) in enumerate(zip(nets[1], (0.1, 0.1, 0.01), strict=True))
        ]
    )
    assert [(g["name"], g["lr"], len(g["params"])) for g in merged] == [("g0+g1", 0.1, 4), ("g2", 0.01, 2)]
    optimizers = [torch.optim.AdamW(split, fused=True), torch.optim.AdamW(merged, fused=True)]
    x = torch.randn(16, 4)
    for _ in range(3):
        for net, opt in zip(nets, optimizers, strict=True):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)
