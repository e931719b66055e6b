"""The method registry is the one source the CLI, plan and README read (hf_transfer.methods.registry)."""

import ast
import json
import pathlib
import re
import subprocess
import sys

import pytest

from hf_transfer.config import arguments_from_dict, parse_args
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods import registry
from hf_transfer.methods.domain.step import SteppedLoss
from hf_transfer.methods.registry import OPTIONS, all_methods, default_method, get_method, modes
from hf_transfer.training.plan import plan_run

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BASE = {"backbone": "test_resnet", "target": "builtin:digits-handwritten", "output_dir": "unused", "use_cpu": True}
DOMAIN = {**BASE, "mode": "domain", "source": "builtin:digits-printed"}


def method_table() -> str:
    """The README's method table as the registry renders it."""
    lines = ["| method | modes | what it does | `method_args` (default) | paper |", "|---|---|---|---|---|"]
    for name, m in all_methods().items():
        options = ", ".join(f"`{k}={v}`" for k, v in m.option_defaults().items()) or "-"
        lr = "" if m.backbone_lr_scale == 1.0 else f" Backbone at {m.backbone_lr_scale}x the learning rate."
        lines.append(
            f"| `{name}` | {', '.join(m.modes)} | {m.title}: {m.description}{lr} | {options} | {m.paper or '-'} |"
        )
    return "\n".join(lines)


def test_readme_method_table_is_the_registry():
    text = README.read_text()
    found = re.search(r"^\| method \| modes \|.*?(?=\n\n)", text, flags=re.S | re.M)
    assert found, "README.md has no method table"
    assert found.group(0) == method_table(), (
        "README's method table differs from the registry; paste:\n" + method_table()
    )


def test_modes_and_default_methods_come_from_the_registry():
    assert set(modes()) == {"feature", "domain", "task", "tta"}
    for mode in set(modes()) - {"tta"}:  # tta: `hf-transfer tta`, refused by `train` (below)
        args, _ = arguments_from_dict({**DOMAIN, "mode": mode} if mode == "domain" else {**BASE, "mode": mode})
        assert args.method == default_method(mode) and mode in get_method(args.method).modes
    with pytest.raises(TransferConfigError, match=r"mode=tta: .*hf-transfer tta MODEL"):
        arguments_from_dict({**BASE, "mode": "tta"})
    with pytest.raises(TransferConfigError, match="mode='transfer'"):
        arguments_from_dict({**BASE, "mode": "transfer"})
    with pytest.raises(TransferConfigError, match="mode=task: unknown method 'dann'"):
        arguments_from_dict({**BASE, "mode": "task", "method": "dann"})


def test_method_args_are_checked_against_the_config_dataclass():
    with pytest.raises(
        TransferConfigError,
        match=r"unknown method_args \['hidden', 'hold_me'\]; accepted: alpha, "
        r"hi, hidden_size, hold",
    ):
        arguments_from_dict({**DOMAIN, "method": "dann", "method_args": {"hold_me": 1, "hidden": 2}})
    with pytest.raises(TransferConfigError, match="margin='4' must be of type float"):
        parse_args(
            [
                "--mode",
                "domain",
                "--source",
                "builtin:digits-printed",
                "--target",
                "builtin:digits-handwritten",
                "--backbone",
                "test_resnet",
                "--output_dir",
                "x",
                "--method",
                "mdd",
                "--method_args",
                json.dumps({"margin": "4"}),
            ]
        )
    with pytest.raises(TransferConfigError, match="method_args"):  # coral takes no options: refused, not ignored
        arguments_from_dict({**DOMAIN, "method": "coral", "method_args": {"x": 1}})
    args, training = arguments_from_dict({**DOMAIN, "method": "cdan", "method_args": {"entropy_conditioning": True}})
    options = plan_run(args, training)["method_plan"]["options"]
    assert options == {**get_method("cdan").option_defaults(), "entropy_conditioning": True}


def test_a_method_declares_its_backbone_learning_rate():
    mdd, _ = arguments_from_dict({**DOMAIN, "method": "mdd"})
    assert get_method("mdd").backbone_lr_scale == 0.1 and mdd.backbone_lr_scale == 0.1
    explicit, _ = arguments_from_dict({**DOMAIN, "method": "mdd", "backbone_lr_scale": 1.0})
    dann, _ = arguments_from_dict({**DOMAIN, "method": "dann"})
    feature, _ = arguments_from_dict({**BASE, "mode": "feature"})
    assert (explicit.backbone_lr_scale, dann.backbone_lr_scale, feature.backbone_lr_scale) == (1.0, 1.0, 1.0)
    with pytest.raises(TransferConfigError, match="backbone_lr_scale"):
        arguments_from_dict({**BASE, "mode": "feature", "backbone_lr_scale": 0.1})


# --- the declarations are the one source of every method check ----------------------------------------
#: a value away from the default for every declared shared option, and what makes its other conditions hold
OPTION_VALUES = {
    "trade_off": (0.5, {}),
    "checkpoint_selection": ("last", {}),
    "trade_off_schedule": ("dann", {}),
    "trade_off_warmup": (0.5, {"trade_off_schedule": "linear"}),
    "target_batch_ratio": (2.0, {}),
    "bottleneck_dim": (8, {}),
    "partial_weighting": ("none", {}),
    "partial_weighting=pada": ("pada", {}),
    "pada_every": (7, {"partial_weighting": "pada"}),
    "adabn": (True, {}),
    "backbone_lr_scale": (0.5, {}),
    "layer_decay": (0.5, {}),
    "freeze": ("stem", {}),
    "unfreeze_every": (1.0, {}),
    "unfreeze_unit": ("epochs", {"unfreeze_every": 1.0}),
    "regularizer": ("l2sp", {}),
    "regularizer=bss": ("bss", {}),
    "l2sp_alpha": (1.0, {"regularizer": "l2sp"}),
    "l2sp_beta": (1.0, {"regularizer": "l2sp"}),
    "bss_eta": (1.0, {"regularizer": "bss"}),
    "bss_k": (2, {"regularizer": "bss"}),
    "k_shot": (1, {}),
    "streaming": (True, {}),
    "lora_r": (4, {}),
    "lora_alpha": (16.0, {}),
    "lora_dropout": (0.1, {}),
    "lora_target_modules": ("qkv", {}),
    "publish": ("merged", {}),
    "augment": ("light", {}),
    "feature_cache_dir": ("features", {}),
    "features_on_device": ("true", {}),
    "head_solver": ("lbfgs", {}),
    "feature_batch_size": (4, {}),
    "feature_dtype": ("float16", {}),
    "aa": ("rand-m9-mstd0.5-inc1", {}),
    "reprob": (0.25, {}),
    "remode": ("const", {"reprob": 0.25}),
    "drop_path": (0.1, {}),
    "mixup": (0.8, {}),
    "cutmix": (1.0, {}),
    "mixup_prob": (0.5, {"mixup": 0.8}),
    "mixup_switch_prob": (0.3, {"mixup": 0.8, "cutmix": 1.0}),
    "mixup_mode": ("elem", {"mixup": 0.8}),
    "model_ema": (True, {}),
    "model_ema_decay": (0.5, {"model_ema": True}),
    "model_ema_warmup": (True, {"model_ema": True}),
    "validation_fraction": (0.25, {"model_ema": True}),
    "wise_ft_alpha": ("0.5", {}),
}


def _run_args(method, mode: str) -> dict:
    args = {**BASE, "mode": mode, "method": method.name}
    if method.needs.source_data:
        args["source"] = DOMAIN["source"]
    args.update({name: OPTION_VALUES[name][0] for name in method.required_options})  # partial: freeze
    return args


def _cases():
    for name, method in all_methods().items():
        for mode in set(method.modes) - {"tta"}:  # `hf-transfer tta` takes none of train's options (own parser)
            for option in OPTIONS:
                yield pytest.param(name, mode, option, id=f"{mode}-{name}-{option}")


def test_every_declared_option_has_a_probe_value():
    assert set(OPTIONS) == set(OPTION_VALUES)


@pytest.mark.parametrize("name, mode, option", list(_cases()))
def test_an_option_is_accepted_exactly_where_its_declaration_says(name, mode, option):
    method = get_method(name)
    value, context = OPTION_VALUES[option]
    field = option.split("=")[0]
    acts = OPTIONS[option].applies_to(method, mode) and all(
        registry.option_scope(k, v).applies_to(method, mode) for k, v in context.items()
    )
    args = {**_run_args(method, mode), **context, field: value}
    if acts:
        parsed, _ = arguments_from_dict(args)
        assert getattr(parsed, field) == value
        assert option in method.shared_options(mode) and mode in registry.methods_for_option(field, value)[name]
        return
    with pytest.raises(TransferConfigError) as refused:
        arguments_from_dict(args)
    assert any(f"{k}=" in str(refused.value) for k in (field, *context)), str(refused.value)
    assert option not in method.shared_options(mode) or not all(
        registry.option_scope(k, v).applies_to(method, mode) for k, v in context.items()
    )


def test_refusals_name_the_option_and_what_it_needs():
    with pytest.raises(
        TransferConfigError,
        match=r"regularizer='bss' has no effect with mode=task method=linear: "
        r"it acts only with mode=task, a method with trainable_backbone",
    ):
        arguments_from_dict({**BASE, "mode": "task", "method": "linear", "regularizer": "bss"})
    with pytest.raises(TransferConfigError, match=r"l2sp_alpha=1.0 has no effect .* trainable_backbone"):
        arguments_from_dict({**BASE, "mode": "task", "method": "linear", "regularizer": "l2sp", "l2sp_alpha": 1.0})
    # L2-SP's beta term is an L2 on the new head: it acts on a linear probe too (in place of weight decay)
    probe, _ = arguments_from_dict(
        {**BASE, "mode": "task", "method": "linear", "regularizer": "l2sp", "l2sp_beta": 1.0}
    )
    assert (probe.regularizer, probe.l2sp_beta) == ("l2sp", 1.0)
    with pytest.raises(TransferConfigError, match=r"partial_weighting='pada' has no effect .*method=source_only"):
        arguments_from_dict({**DOMAIN, "method": "source_only", "partial_weighting": "pada"})
    with pytest.raises(TransferConfigError, match="mode=task method=partial needs --freeze"):
        arguments_from_dict({**BASE, "mode": "task", "method": "partial"})


def test_the_baseline_is_known_by_its_declaration():
    baselines = [n for n, m in all_methods().items() if m.is_baseline]
    assert baselines == ["source_only"] and not get_method("source_only").needs.target_images
    assert registry.is_baseline("source_only") and not registry.is_baseline("dann")
    assert not registry.is_baseline("a-method-from-an-old-results-file") and not registry.is_baseline(None)
    assert all(m.needs.trainable_backbone for m in all_methods("domain").values())
    # every domain method trains on a labelled source, but the source-free ones (they start from a classifier)
    source_free = {n for n, m in all_methods("domain").items() if not m.needs.source_data}
    assert source_free == {"shot", "nrc", "aad"}
    assert [n for n, m in all_methods().items() if m.adapters] == ["lora"]
    # a one-loss step reaches every trainable weight; a stepped method's pass may not (MCD's step B, SDAT's pass 1)
    for name, method in all_methods().items():
        stepped = isinstance(method.implementation, type) and issubclass(method.implementation, SteppedLoss)
        assert method.owns_step == stepped and method.find_unused_parameters == stepped, name


ROOT = pathlib.Path(registry.__file__).resolve().parents[2]


def method_name_checks(source: str, names: set[str]) -> list[str]:
    """Comparisons of something named like a method with a registered method's name (``args.method ==
    "source_only"``, ``method in ("full", "partial")``), and constants named ``*METHOD*`` holding names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            named = [c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant) and c.value in names]
            if named and any("method" in ast.unparse(o).lower() for o in operands):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Assign) and any("METHOD" in ast.unparse(t) for t in node.targets):
            if any(isinstance(c, ast.Constant) and c.value in names for c in ast.walk(node.value)):
                found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_no_code_outside_the_methods_checks_a_method_by_its_name():
    names = set(all_methods())
    example = 'if args.method == "source_only" or method in ("full", "partial"):\n    pass\nTASK_METHODS = ("lora",)'
    assert len(method_name_checks(example, names)) == 3  # the check finds what it looks for
    offenders = {}
    for path in sorted((ROOT / "hf_transfer").rglob("*.py")):
        if path.is_relative_to(ROOT / "hf_transfer" / "methods"):
            continue  # the registrations themselves
        if found := method_name_checks(path.read_text(), names):
            offenders[str(path.relative_to(ROOT))] = found
    assert not offenders, f"read the method's declaration (hf_transfer.methods.registry) instead: {offenders}"


def test_the_registry_imports_no_registration_and_still_sees_every_method():
    tree = ast.parse((ROOT / "hf_transfer" / "methods" / "registry.py").read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert [m for m in imported if m and m.startswith("hf_transfer")] == ["hf_transfer.errors"]
    code = "from hf_transfer.methods.registry import all_methods; print(' '.join(all_methods()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == list(all_methods())


def test_declared_needs_are_what_the_validation_helpers_read(monkeypatch):
    import dataclasses

    import torch

    from hf_transfer.config.checks import check_backbone_needs, check_soft_targets

    check_soft_targets(get_method("dann"), "mixup")  # every method today takes probability targets
    hard = dataclasses.replace(get_method("full"), soft_targets=False)
    with pytest.raises(TransferConfigError, match=r"mixup makes probability \(soft\) targets, but method=full"):
        check_soft_targets(hard, "mixup")
    # a method that declares BatchNorm layers is refused on a backbone without them, as adabn is
    args, _ = arguments_from_dict({**DOMAIN, "method": "dann"})
    layer_norm = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    check_backbone_needs(args, layer_norm, "ln")  # dann declares no such need
    dann = get_method("dann")
    monkeypatch.setitem(
        registry.METHODS, "dann", dataclasses.replace(dann, needs=dataclasses.replace(dann.needs, batchnorm=True))
    )
    with pytest.raises(TransferConfigError, match=r"method='dann' needs a backbone with batchnorm layers; 'ln'"):
        check_backbone_needs(args, layer_norm, "ln")
    check_backbone_needs(args, torch.nn.Sequential(torch.nn.BatchNorm1d(2)), "bn")
