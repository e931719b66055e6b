"""The console shows the project's own lines and progress; warnings a user cannot act on are gone
(issue "Nothing silent", item 14)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys


def test_train_console_has_no_unactionable_warnings(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hf_transfer.cli", "train", "--mode", "task", "--backbone", "test_resnet",
           "--target", "builtin:digits-handwritten", "--image_size", "32", "--crop_pct", "1.0", "--max_steps", "3",
           "--max_train_samples", "48", "--max_eval_samples", "16", "--per_device_train_batch_size", "8",
           "--input_path", "stock", "--dataloader_num_workers", "2", "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "pin_memory" not in console and "UserWarning" not in console, console[-3000:]
    assert "target acc" in proc.stdout and "100%" in proc.stderr  # the result line and a progress bar


def test_unactionable_library_lines_are_dropped(caplog):
    from hf_transfer.logs import quiet_unactionable_logs

    quiet_unactionable_logs()
    auto = logging.getLogger("transformers.models.auto.image_processing_auto")
    with caplog.at_level(logging.INFO):
        auto.warning("Requested torchvision backend is not available. Falling back to pil backend.")
        auto.warning("something else")
        logging.getLogger("httpx").info("HTTP Request: POST http://localhost/api/repos/create")
    assert "something else" in caplog.text
    assert "torchvision backend" not in caplog.text and "HTTP Request" not in caplog.text
