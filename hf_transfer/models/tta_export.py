"""What ``hf-transfer tta --handler`` adds to the adapted model's folder: the Endpoints ``handler.py`` that keeps
adapting on what it serves (:mod:`hf_transfer.models.tta_handler`), the settings it reads and its requirements."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hf_transfer.models.adapters import HANDLER_FILE, REQUIREMENTS_FILE
from hf_transfer.models.tta_handler import TTA_INFO


def write_tta_handler(output_dir: str, settings: dict[str, Any]) -> list[str]:
    """Write ``handler.py``, ``hf_transfer_tta.json`` (method, learning rate) and ``requirements.txt``; their paths."""
    source = Path(__file__).with_name("tta_handler.py").read_text(encoding="utf-8")
    paths = [os.path.join(output_dir, name) for name in (HANDLER_FILE, TTA_INFO, REQUIREMENTS_FILE)]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(source)
    with open(paths[1], "w") as f:
        info = {"method": settings["method"], "learning_rate": settings["learning_rate"], "served_step": "tent"}
        json.dump(info, f, indent=1)
    if not os.path.exists(paths[2]):
        config = json.load(open(os.path.join(output_dir, "config.json")))
        with open(paths[2], "w") as f:
            f.write("timm\n" if config.get("model_type") == "timm_wrapper" else "")
    return paths
