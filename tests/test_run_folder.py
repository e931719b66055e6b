"""An output folder holds one run: another run's folder is refused before any work, resume only continues
the run that wrote the checkpoint, --overwrite_output_dir clears the old outputs, and no secret is ever
written to disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hf_transfer.config import arguments_from_dict, parse_args
from hf_transfer.errors import TransferConfigError
from hf_transfer.training.run import run_transfer
from hf_transfer.training.run_folder import IDENTITY_FILE

TINY = dict(
    mode="task",
    method="full",
    backbone="test_resnet",
    target="builtin:digits-handwritten",
    image_size=32,
    crop_pct=1.0,
    augment="light",
    max_steps=4,
    per_device_train_batch_size=8,
    max_train_samples=32,
    max_eval_samples=16,
    use_cpu=True,
    report_to="none",
    save_strategy="steps",
    save_steps=2,
    eval_strategy="no",
    learning_rate=0.01,
    logging_steps=1,
    disable_tqdm=True,
    dataloader_num_workers=0,
)


def _run(out, **overrides):
    a, t = arguments_from_dict({**TINY, "output_dir": str(out), **overrides})
    return run_transfer(a, t)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("run_folder") / "a"
    _run(out)
    return out


def test_every_checkpoint_records_the_run(run_a):
    recorded = json.loads((run_a / IDENTITY_FILE).read_text())
    assert recorded["learning_rate"] == 0.01 and recorded["mode"] == "task" and recorded["world_size"] == 1
    for step in (2, 4):
        assert json.loads((run_a / f"checkpoint-{step}" / IDENTITY_FILE).read_text()) == recorded
    # what does not change the result is not part of the identity
    assert "save_steps" not in recorded and "output_dir" not in recorded and "logging_steps" not in recorded


def test_another_runs_folder_is_refused_before_any_work(run_a, monkeypatch):
    before = _tree(run_a)
    import hf_transfer.training.run as run_module

    monkeypatch.setattr(run_module, "load_transfer_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(
        TransferConfigError, match=r"different run.*learning_rate: 0\.01 -> 0\.05.*overwrite_output_dir"
    ):
        _run(run_a, learning_rate=0.05)
    # resuming the other run's checkpoint names the argument that differs
    with pytest.raises(TransferConfigError, match=r"checkpoint-4.*different run.*learning_rate: 0\.01 -> 0\.05"):
        _run(run_a, learning_rate=0.05, resume_from_checkpoint="last")
    # the same run again, without resume, is refused too (its checkpoints would mix with the new ones)
    with pytest.raises(TransferConfigError, match="this same run.*resume_from_checkpoint last"):
        _run(run_a)
    assert _tree(run_a) == before  # nothing touched


def test_resume_continues_only_the_same_run(run_a, tmp_path):
    import shutil

    out = tmp_path / "same"
    shutil.copytree(run_a, out)
    results = _run(out, resume_from_checkpoint="last")
    assert results["hyperparameters"]["max_steps"] == 4
    # a checkpoint copied from elsewhere with another identity is refused even when named explicitly
    other = json.loads((out / "checkpoint-2" / IDENTITY_FILE).read_text())
    other["seed"] = 7
    (out / "checkpoint-2" / IDENTITY_FILE).write_text(json.dumps(other))
    with pytest.raises(TransferConfigError, match=r"checkpoint-2.*seed: 7 -> '<default>'"):
        _run(out, resume_from_checkpoint=str(out / "checkpoint-2"))


def test_a_run_stopped_before_its_first_output_starts_again(tmp_path):
    from hf_transfer.training.run import prepare_run

    out = tmp_path / "claimed"
    prepare_run(*arguments_from_dict({**TINY, "output_dir": str(out)}))  # claims the folder, trains nothing
    assert [p.name for p in out.iterdir()] == [IDENTITY_FILE]
    assert _run(out)["hyperparameters"]["max_steps"] == 4
    with pytest.raises(TransferConfigError, match="different run"):
        _run(tmp_path / "claimed", learning_rate=0.5)


def test_overwrite_clears_every_previous_output(run_a, tmp_path):
    import shutil

    out = tmp_path / "over"
    shutil.copytree(run_a, out)
    (out / "examples" / "9_stale.png").write_bytes(b"old run")
    (out / "README.md").write_text("old card")
    (out / "training_curves.png").write_bytes(b"old plot")
    _run(out, learning_rate=0.05, max_steps=2, save_strategy="no", overwrite_output_dir=True)
    names = {p.name for p in out.iterdir()}
    assert not any(n.startswith("checkpoint-") for n in names)  # run A's checkpoints are gone
    # the previous card and plot are gone; the new run wrote its own
    assert (out / "README.md").read_text() != "old card" and (out / "training_curves.png").read_bytes() != b"old plot"
    assert not (out / "examples" / "9_stale.png").exists()
    assert json.loads((out / "results.json").read_text())["hyperparameters"]["learning_rate"] == 0.05
    assert json.loads((out / IDENTITY_FILE).read_text())["learning_rate"] == 0.05


def test_output_dir_problems_are_caught_before_loading(tmp_path, monkeypatch):
    import hf_transfer.training.run as run_module

    monkeypatch.setattr(run_module, "load_transfer_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    with pytest.raises(TransferConfigError, match="is a file, not a folder"):
        _run(a_file)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my notes")
    for overwrite in (False, True):  # never deleted, even with overwrite
        with pytest.raises(TransferConfigError, match="did not write.*notes.txt"):
            _run(foreign, overwrite_output_dir=overwrite)
    assert (foreign / "notes.txt").read_text() == "my notes"
    with pytest.raises(TransferConfigError, match="unknown method 'dnn'"):
        _run(tmp_path / "new", mode="domain", method="dnn", source="builtin:digits-printed")
    with pytest.raises(TransferConfigError, match="hub_model_id 'bad id!!' is not a valid Hub repo id"):
        _run(tmp_path / "new", push_to_hub=True, hub_model_id="bad id!!")
    assert not (tmp_path / "new").exists()


def test_command_line_is_strict(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "mode: task\nbackbone: test_resnet\ntarget: builtin:digits-handwritten\n"
        f"output_dir: {tmp_path / 'out'}\nmax_steps: 3\n"
    )
    args, training_args = parse_args([f"--config={config}", "--learning_rate", "0.5"])
    assert args.mode == "task" and training_args.max_steps == 3 and training_args.learning_rate == 0.5
    with pytest.raises(TransferConfigError, match="--max_step"):  # no argparse abbreviations
        parse_args(["--config", str(config), "--max_step", "20"])
    with pytest.raises(TransferConfigError, match="more than once"):
        parse_args(["--config", str(config), f"--config={config}"])


@pytest.mark.parametrize("source", ["HF_TOKEN", "--hub_token", "config file"])
def test_no_token_in_any_written_file(source, hub_server, tmp_path, caplog, capfd, monkeypatch):
    """The token reaches the push, and no file written (folder, checkpoints, caches) nor log holds it."""
    from hf_transfer.testing.hub_common import USER_TOKEN

    out = tmp_path / "out"
    argv = [
        f"--{k}={v}"
        for k, v in {
            **TINY,
            "output_dir": out,
            "push_to_hub": True,
            "hub_model_id": f"user/token-{source.strip('-').replace(' ', '-')}",
        }.items()
    ]
    if source != "HF_TOKEN":
        monkeypatch.delenv("HF_TOKEN", raising=False)
    if source == "--hub_token":
        argv.append(f"--hub_token={USER_TOKEN}")
    elif source == "config file":
        config = tmp_path / "secret.yaml"
        config.write_text(f"hub_token: {USER_TOKEN}\n")
        argv = ["--config", str(config), *argv]
    a, t = parse_args(argv)
    with caplog.at_level("DEBUG"):
        run_transfer(a, t)
    assert hub_server.files(t.hub_model_id), "the push did not happen"
    written = [p for root in (out, Path(os.environ["HF_TRANSFER_CACHE"])) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written)
    leaks = [str(p) for p in written if USER_TOKEN.encode() in p.read_bytes()]
    assert not leaks
    captured = capfd.readouterr()
    assert USER_TOKEN not in caplog.text + captured.out + captured.err


def test_a_run_leaves_the_callers_training_arguments_unchanged(tmp_path):
    """The run sets its own fields (the push taken out, the token cleared, columns kept, ...) on a copy."""
    import dataclasses

    from conftest import tiny_args

    args, training_args = arguments_from_dict(tiny_args(tmp_path, mode="task", method="linear", max_steps=1))
    training_args.hub_token = "not-a-real-token"  # the run takes it out of its own TrainingArguments

    def fields(t):
        return {f.name: repr(getattr(t, f.name)) for f in dataclasses.fields(t) if f.init}

    before = fields(training_args)
    results = run_transfer(args, training_args)
    assert results["hyperparameters"]["max_steps"] == 1  # the run did run
    after = fields(training_args)
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert training_args.remove_unused_columns and training_args.hub_token == "not-a-real-token"
