"""Recipe defaults (hf_transfer.training.defaults): what a run that sets no optimizer, rate, batch or length gets."""

import json

import pytest
import yaml

from hf_transfer.config import arguments_from_dict, parse_args
from hf_transfer.training.defaults import MODE_RECIPES

BASE = ["--backbone", "test_resnet", "--target", "builtin:digits-handwritten", "--output_dir", "unused"]


def _parse(*flags):
    return parse_args([*BASE, *flags])


def test_a_run_that_sets_nothing_gets_its_modes_recipe_and_records_it():
    args, training = _parse("--mode", "task")
    assert training.learning_rate == MODE_RECIPES["task"]["learning_rate"] == 1e-3
    assert training.optim.value == "adamw_torch_fused" and training.lr_scheduler_type.value == "cosine"
    assert training.per_device_train_batch_size == 32 and training.num_train_epochs == 30
    assert args.recipe_defaults == MODE_RECIPES["task"]


def test_every_given_value_wins_and_is_not_reported_as_a_default():
    args, training = _parse("--mode", "task", "--learning_rate", "3e-4", "--num_train_epochs", "2")
    assert training.learning_rate == 3e-4 and training.num_train_epochs == 2
    assert "learning_rate" not in args.recipe_defaults and "num_train_epochs" not in args.recipe_defaults
    assert training.optim.value == "adamw_torch_fused"  # the recipe's optimizer, which the rate was given for


def test_own_optimizer_takes_none_of_the_recipes_optimizer_settings():
    """A rate tuned for AdamW is wrong for SGD: with --optim, rate, decay and schedule stay the user's/Trainer's."""
    args, training = _parse("--mode", "task", "--optim", "sgd")
    assert training.learning_rate == 5e-5 and training.lr_scheduler_type.value == "linear"
    assert set(args.recipe_defaults) == {"per_device_train_batch_size", "num_train_epochs"}


def test_max_steps_governs_the_length():
    args, training = _parse("--mode", "task", "--max_steps", "7")
    assert "num_train_epochs" not in args.recipe_defaults and training.max_steps == 7


def test_method_recipe_on_top_of_the_modes():
    args, training = _parse("--mode", "task", "--method", "lora")
    assert training.learning_rate == 5e-3 and args.recipe_defaults["learning_rate"] == 5e-3


def test_lbfgs_head_gets_no_optimizer_recipe():
    args, training = _parse("--mode", "feature", "--head_solver", "lbfgs")
    assert args.recipe_defaults == {} and training.learning_rate == 5e-5


def test_domain_recipe_and_config_file_keys_count_as_given(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"mode": "domain", "source": "builtin:digits-printed", "learning_rate": 0.05}))
    args, training = parse_args(["--config", str(cfg), *BASE])
    assert training.learning_rate == 0.05 and training.optim.value == "sgd"
    assert "learning_rate" not in args.recipe_defaults and args.recipe_defaults["optim"] == "sgd"


@pytest.mark.parametrize("given", [{}, {"optim": "sgd", "learning_rate": 0.1, "max_steps": 3}])
def test_python_dict_api_applies_the_same_rule(given):
    args, training = arguments_from_dict(
        {"mode": "task", "backbone": "test_resnet", "target": "builtin:digits-handwritten", "output_dir": "x", **given}
    )
    expected = _parse("--mode", "task", *[p for k, v in given.items() for p in (f"--{k}", str(v))])
    assert args.recipe_defaults == expected[0].recipe_defaults
    assert training.learning_rate == expected[1].learning_rate


def test_train_help_is_short_grouped_names_the_subcommand_and_lists_no_removed_option(capsys):
    import dataclasses

    from hf_transfer.config import RETIRED_OPTIONS, TransferArguments
    from hf_transfer.help import GROUPS

    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(TransferArguments))  # each once
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: hf-transfer train") and len(text.splitlines()) < 250
    assert text.index("What to adapt:") < text.index("Trainer (transformers.TrainingArguments")
    assert not any(f"--{name}" in text for name in RETIRED_OPTIONS)
    with pytest.raises(SystemExit):
        parse_args(["--help-all"])
    full = capsys.readouterr().out
    assert full.startswith("usage: hf-transfer train") and "--gradient_accumulation_steps" in full
    assert not any(f"--{name}" in full for name in RETIRED_OPTIONS)


def test_a_removed_option_is_refused_naming_its_replacement(tmp_path):
    from hf_transfer.errors import TransferConfigError

    with pytest.raises(TransferConfigError, match="replaced by --publish"):
        _parse("--mode", "task", "--method", "lora", "--merge_adapter", "true")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("merge_adapter: true\n")
    with pytest.raises(TransferConfigError, match="replaced by --publish"):
        parse_args(["--config", str(cfg), *BASE, "--mode", "task"])


@pytest.mark.slow
def test_learning_rate_auto_picks_by_range_test_and_leaves_the_run_as_if_given(tmp_path):
    """--learning_rate auto: the range test records its curve and pick (results.json, lr_find.json, the card and
    lr_find.png), the identity says "auto", and the model trains from the same start: the run equals one given the
    picked rate explicitly."""
    from pathlib import Path

    from hf_transfer.training.run import run_transfer

    from conftest import tiny_args

    auto = run_transfer(*arguments_from_dict(tiny_args(tmp_path, mode="task", learning_rate="auto")))
    found = auto["lr_find"]
    assert found["steps_run"] > 10 and found["picked"] == max(found["min_loss_lr"] / 10, 1e-7)
    assert auto["hyperparameters"]["learning_rate"] == found["picked"]
    assert auto["arguments"]["learning_rate"] == "auto"
    folder = next(p.parent for p in Path(tmp_path).glob("out*/lr_find.json"))
    assert json.loads((folder / "run_identity.json").read_text())["learning_rate"] == "auto"
    assert (folder / "lr_find.png").is_file()
    assert "a range test (--learning_rate auto" in (folder / "README.md").read_text()
    given = run_transfer(*arguments_from_dict(tiny_args(tmp_path, mode="task", learning_rate=found["picked"])))
    assert given["metrics"]["target"]["confusion_matrix"] == auto["metrics"]["target"]["confusion_matrix"]
    assert given["train_loss"] == pytest.approx(auto["train_loss"], rel=1e-6)


def test_learning_rate_auto_is_refused_where_no_rate_applies():
    from hf_transfer.errors import TransferConfigError

    with pytest.raises(TransferConfigError, match="learning_rate=auto has no effect with head_solver=lbfgs"):
        _parse("--mode", "feature", "--head_solver", "lbfgs", "--learning_rate", "auto")
    args, training = _parse("--mode", "task", "--learning_rate", "auto")
    assert args.lr_find and "learning_rate" not in args.recipe_defaults and training.optim.value == "adamw_torch_fused"
    args, _ = _parse("--mode", "task", "--learning_rate", "0.01")
    assert not args.lr_find
