"""Launched by tests/test_recipes.py under `accelerate launch --multi_gpu --num_processes 2` (CPU,
gloo): every registered domain-adaptation method (and DANN with the shared options, the methods that own
their training step with gradient accumulation, and the source-free methods from the source_only run's folder) trains
a few steps in ONE
launch (imports and process-group setup are paid once), each writing its results.json from the main process."""

import sys

from hf_transfer.config import arguments_from_dict
from hf_transfer.methods.domain import LOSSES
from hf_transfer.methods.domain.step import SteppedLoss
from hf_transfer.methods.registry import all_methods
from hf_transfer.training.run import run_transfer

out = sys.argv[1]
# every method, plus one run with the options all methods share (bottleneck, batch ratio, schedule, PADA)
SHARED = {
    "bottleneck_dim": 16,
    "target_batch_ratio": 1.5,
    "trade_off_schedule": "dann",
    "partial_weighting": "pada",
    "pada_every": 1,
}
# the methods that own their step, once more with gradient accumulation (their passes hold the micro-batches)
ACCUMULATED = {"gradient_accumulation_steps": 2}
stepped = [(m, ACCUMULATED) for m in sorted(LOSSES) if issubclass(LOSSES[m], SteppedLoss)]
# the source-free methods last: they start from the source_only run's folder (its classifier), with no source
with_source = sorted(m for m in LOSSES if all_methods()[m].needs.source_data)
SOURCE_FREE = {"source": None, "backbone": f"{out}/source_only"}
source_free = [(m, SOURCE_FREE) for m in sorted(LOSSES) if not all_methods()[m].needs.source_data]
for method, extra in [(m, {}) for m in with_source] + [("dann", SHARED)] + stepped + source_free:
    name = method + ("_shared_options" if extra is SHARED else "_accumulated" if extra is ACCUMULATED else "")
    config = {
        "mode": "domain",
        "method": method,
        "backbone": "test_resnet",
        "source": "builtin:digits-printed",
        "target": "builtin:digits-handwritten",
        "image_size": 32,
        "crop_pct": 1.0,
        "augment": "light",
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 32,
        "max_train_samples": 32,
        "max_eval_samples": 16,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "learning_rate": 0.01,
        "disable_tqdm": True,
        "output_dir": f"{out}/{name}",
        "seed": 0,
    }
    run_transfer(*arguments_from_dict({k: v for k, v in {**config, **extra}.items() if v is not None}))
