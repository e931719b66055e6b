"""Test-session environment: never reach the internet, never touch the user's caches.

Set before any Hugging Face library is imported, because huggingface_hub reads its
endpoint and cache locations at import time.
"""

import os
import tempfile

_SESSION_HOME = tempfile.mkdtemp(prefix="hf_transfer_tests_")
os.environ["HF_HOME"] = os.path.join(_SESSION_HOME, "hf_home")
os.environ.setdefault("HF_TRANSFER_CACHE", os.path.join(_SESSION_HOME, "hf_transfer_cache"))
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("HF_TOKEN", None)
# --report_to trackio logs into the session's folder (trackio reads TRACKIO_DIR at import), never to a Space or
# a server; gradio (the app's page) sends no analytics
os.environ["TRACKIO_DIR"] = os.path.join(_SESSION_HOME, "trackio")
for _remote in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_BUCKET_ID", "TRACKIO_DATASET_ID"):
    os.environ.pop(_remote, None)
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# Offline unless a test starts the local Hub test server (see hf_transfer.testing).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Hub test server fixtures (hub_server, run_with_hub, ...): importing the plugin imports no HF client.
pytest_plugins = ["hf_transfer.testing.pytest_plugin"]


import itertools  # noqa: E402

import pytest  # noqa: E402

TARGET = "builtin:digits-handwritten"
_RUN_NUMBER = itertools.count()  # one output folder per run: a folder holding another run is refused


def tiny_args(tmp_path, **overrides) -> dict:
    """Arguments of a tiny CPU run (timm ``test_resnet`` at 32 px, 4 SGD steps, 64 train / 32 test images of the
    built-in handwritten digits) in a new folder under ``tmp_path``; ``overrides`` win. ``augment`` is left out in
    feature mode and ``feature_cache_dir`` in the others (each is refused where it does not act).

    Test modules import it (``from conftest import tiny_args``) and pass what their runs need on top."""
    args = dict(
        backbone="test_resnet",
        target=TARGET,
        image_size=32,
        crop_pct=1.0,
        augment="light",
        output_dir=os.path.join(tmp_path, f"out{next(_RUN_NUMBER)}"),
        max_steps=4,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        max_train_samples=64,
        max_eval_samples=32,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        learning_rate=0.05,
        optim="sgd",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    args.update(overrides)
    args.pop("augment" if args.get("mode") == "feature" else "feature_cache_dir", None)
    return args


def two_process_launch(script: str, *args: str) -> list[str]:
    """``accelerate launch`` of a real 2-process DDP run on CPU (gloo); ``--cpu`` would start ONE process."""
    import sys

    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        script,
        *args,
    ]


def random_png_dataset(n: int, h: int, w: int, names: list[str], seed: int = 0):
    """``n`` random-noise RGB PNGs of ``h x w`` in a ``datasets.Dataset`` with labels ``k % len(names)``."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    labels = [k % len(names) for k in range(n)]
    return datasets.Dataset.from_dict({"image": cells, "label": labels}, features=features)


def pytest_unconfigure(config):
    """The session's HF_HOME / caches go with the session (they hold decoded images and datasets)."""
    import shutil

    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory):
    """A transformers-native ViT (5-class head) and its image processor, saved as a local 'Hub' folder."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("tiny_vit")
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )
    return str(folder)


@pytest.fixture(autouse=True)
def _cli_log_handler_removed_after_the_test():
    """The CLI's ``logging.basicConfig(force=True)`` gives the root logger a handler bound to the test's captured
    stderr, which is closed when the test ends; a later test that logs before calling the CLI itself then wrote
    "--- Logging error ---" tracebacks into its own stderr. Remove the handlers a test added to the root logger."""
    import logging

    root = logging.getLogger()
    before = set(map(id, root.handlers))
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and id(handler) not in before:
            root.removeHandler(handler)
