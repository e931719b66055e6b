"""The method registry is the one source the CLI, plan and README read (hf_transfer.methods.registry)."""

import json
import pathlib
import re

import pytest

from hf_transfer.config import arguments_from_dict, parse_args
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.registry import all_methods, default_method, get_method, modes
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
    assert set(modes()) == {"feature", "domain", "task"}
    for mode in modes():
        args, _ = arguments_from_dict({**DOMAIN, "mode": mode} if mode == "domain" else {**BASE, "mode": mode})
        assert args.method == default_method(mode) and mode in get_method(args.method).modes
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
