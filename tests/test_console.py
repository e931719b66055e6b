"""The console shows the project's own lines and progress; warnings a user cannot act on are gone."""

from __future__ import annotations

import logging
import os
import subprocess
import sys


def test_train_console_has_no_unactionable_warnings(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "hf_transfer.cli",
        "train",
        "--mode",
        "task",
        "--backbone",
        "test_resnet",
        "--target",
        "builtin:digits-handwritten",
        "--image_size",
        "32",
        "--crop_pct",
        "1.0",
        "--max_steps",
        "3",
        "--max_train_samples",
        "48",
        "--max_eval_samples",
        "16",
        "--per_device_train_batch_size",
        "8",
        "--input_path",
        "stock",
        "--dataloader_num_workers",
        "2",
        "--output_dir",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "pin_memory" not in console and "UserWarning" not in console, console[-3000:]
    assert "target acc" in proc.stdout and "100%" in proc.stderr  # the result line and a progress bar


def test_unactionable_library_lines_are_dropped(caplog):
    from hf_transfer.runtime.logs import quiet_unactionable_logs

    quiet_unactionable_logs()
    auto = logging.getLogger("transformers.models.auto.image_processing_auto")
    with caplog.at_level(logging.INFO):
        auto.warning("Requested torchvision backend is not available. Falling back to pil backend.")
        auto.warning("something else")
        logging.getLogger("httpx").info("HTTP Request: POST http://localhost/api/repos/create")
    assert "something else" in caplog.text
    assert "torchvision backend" not in caplog.text and "HTTP Request" not in caplog.text


def test_errors_end_in_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    import datasets
    import numpy as np
    import pytest
    from PIL import Image

    from hf_transfer.cli import main as cli

    folder = tmp_path / "empty_test"
    folder.mkdir()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = [Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)) for i in range(6)]
    train = datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 3}, features=features)
    train.to_parquet(str(folder / "train.parquet"))
    train.select([]).to_parquet(str(folder / "test.parquet"))
    capsys.readouterr()
    argv = [
        "train",
        "--mode",
        "task",
        "--backbone",
        "test_resnet",
        "--target",
        str(folder),
        "--max_steps",
        "2",
        "--output_dir",
        str(tmp_path / "out"),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("hf-transfer: error: ") and "dataset 'empty_test'" in err and "Traceback" not in err

    def boom(argv):
        raise RuntimeError("server down\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "train", boom)
    assert cli.main(["train"]) == 1
    err = capsys.readouterr().err
    assert err == "hf-transfer: error: RuntimeError: server down (run again with --debug for the traceback)\n"
    with pytest.raises(RuntimeError, match="server down"):
        cli.main(["train", "--debug"])


def test_bare_debug_is_ours_and_debug_with_a_value_is_the_trainers():
    from hf_transfer.cli.main import _take_debug_flag

    assert _take_debug_flag(["train", "--debug", "--max_steps", "2"]) == (["train", "--max_steps", "2"], True)
    assert _take_debug_flag(["train", "--max_steps", "2", "--debug"]) == (["train", "--max_steps", "2"], True)
    kept = ["train", "--debug", "underflow_overflow"]
    assert _take_debug_flag(kept) == (kept, False)


def _load_new_head(tmp_path, monkeypatch, caplog, capfd, verbose: bool) -> str:
    from hf_transfer.models.backbones import load_backbone
    from hf_transfer.testing.tiny_models import convnext_folder

    folder = convnext_folder(tmp_path / f"base{int(verbose)}", num_labels=10)
    monkeypatch.setenv("HF_TRANSFER_VERBOSE", "1" if verbose else "0")
    with caplog.at_level(logging.INFO):
        load_backbone(folder, ["a", "b", "c"])
    out, err = capfd.readouterr()  # transformers' own handler writes to stderr (its loggers do not propagate)
    return caplog.text + out + err


def test_a_head_replaced_on_purpose_is_one_line_not_a_load_report(tmp_path, monkeypatch, caplog, capfd):
    """transformers' LOAD REPORT table (MISMATCH | Reinit due to size mismatch) on every new-head load is replaced
    by one line; --verbose (HF_TRANSFER_VERBOSE=1) keeps the table."""
    quiet = _load_new_head(tmp_path, monkeypatch, caplog, capfd, verbose=False)
    assert "LOAD REPORT" not in quiet and "a new 3-class head replaces the checkpoint's classifier" in quiet
    caplog.clear()
    assert "LOAD REPORT" in _load_new_head(tmp_path, monkeypatch, caplog, capfd, verbose=True)
