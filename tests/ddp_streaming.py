"""Launched by tests/test_streaming.py under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo): one
streaming task run on a parquet folder (``argv[2]``), or with a source parquet folder (``argv[3]``) a streaming domain
run (dann) from it to ``argv[2]``, trained and scored as `hf-transfer train` does it. Each process writes into
``<out>/rank<i>.json`` a digest of its parameters after training, the shard assignment(s) it recorded and the digests
of the (source) images of its first pass over its part of the stream (from the run's own training loader)."""

import hashlib
import json
import os
import sys

from hf_transfer.config import arguments_from_dict
from hf_transfer.training.fit import train_run
from hf_transfer.training.run import prepare_run

out, folder = sys.argv[1], sys.argv[2]
source = sys.argv[3] if len(sys.argv) > 3 else None
args, training_args = arguments_from_dict(
    {
        **({"mode": "domain", "method": "dann", "source": source} if source else {"mode": "task"}),
        "backbone": "test_resnet",
        "target": folder,
        "streaming": True,
        "image_size": 32,
        "crop_pct": 1.0,
        "augment": "light",
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 16,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "learning_rate": 0.05,
        "optim": "sgd",
        "disable_tqdm": True,
        "output_dir": os.path.join(out, "run"),
        "seed": 0,
    }
)
run = prepare_run(args, training_args)
seen = []
for batch in run.trainer.get_train_dataloader():  # two passes over this process's part: 12 of the 24 rows each
    seen += [hashlib.sha1(p.numpy().tobytes()).hexdigest() for p in batch["pixel_values"]]
    if len(seen) >= 24:
        break
train_run(run)
h = hashlib.sha1()
for _, p in sorted(run.backbone.model.named_parameters()):  # BatchNorm statistics are per process
    h.update(p.detach().float().contiguous().reshape(-1).numpy().tobytes())
rank = int(os.environ.get("RANK", "0"))
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(
        {"weights": h.hexdigest(), "streaming": run.mode.describe()["streaming"], "passes": [seen[:12], seen[12:24]]}, f
    )
