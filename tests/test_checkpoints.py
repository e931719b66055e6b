"""Resuming picks the newest COMPLETE checkpoint: a run killed while writing one must still resume."""

import json
import logging
import os

import pytest

from hf_transfer.errors import TransferConfigError
from hf_transfer.training.checkpoints import checkpoint_problem, last_complete_checkpoint, resolve_resume


def _checkpoint(root, step, state="complete"):
    folder = root / f"checkpoint-{step}"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")
    if state in ("complete", "no-identity"):
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if state == "complete":
        (folder / "run_identity.json").write_text(json.dumps({"world_size": 1}))
    elif state == "truncated":
        (folder / "trainer_state.json").write_text('{"global_step": ' + str(step) + ', "log_hist')
    return str(folder)


def test_last_skips_checkpoints_killed_while_being_written(tmp_path, caplog):
    good = _checkpoint(tmp_path, 3)
    _checkpoint(tmp_path, 6, state="no-state")  # killed before trainer_state.json
    _checkpoint(tmp_path, 9, state="truncated")  # killed while writing it
    _checkpoint(tmp_path, 10, state="no-identity")  # killed before the run's identity was recorded
    _checkpoint(tmp_path, 12, state="complete")
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text(json.dumps({"global_step": 7}))  # not its own
    (tmp_path / "checkpoint-20").write_text("a file, not a folder")
    with caplog.at_level(logging.WARNING):
        assert last_complete_checkpoint(str(tmp_path)) == good
        assert resolve_resume("last", str(tmp_path)) == good
    assert all(f"checkpoint-{n}" in caplog.text for n in (6, 9, 10, 12))
    assert "run_identity.json is missing" in checkpoint_problem(str(tmp_path / "checkpoint-10"))
    assert "missing" in checkpoint_problem(str(tmp_path / "checkpoint-6"))
    assert "unreadable" in checkpoint_problem(str(tmp_path / "checkpoint-9"))


def test_explicit_incomplete_checkpoint_and_none_are_clear_errors(tmp_path):
    bad = _checkpoint(tmp_path, 6, state="truncated")
    with pytest.raises(TransferConfigError, match="trainer_state.json is unreadable.*resume_from_checkpoint=last"):
        resolve_resume(bad, str(tmp_path))
    with pytest.raises(TransferConfigError, match="no complete checkpoint"):
        resolve_resume("true", str(tmp_path))
    with pytest.raises(TransferConfigError, match="not a checkpoint folder"):
        resolve_resume(str(tmp_path / "nope"), str(tmp_path))
    assert resolve_resume(None, str(tmp_path)) is None
    assert resolve_resume(_checkpoint(tmp_path, 2), str(tmp_path)).endswith("checkpoint-2")
    assert os.path.isdir(bad)  # nothing is deleted
