"""Launched by tests/test_ddp_domain_extras.py under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo): one
DANN run with PADA class weights (re-estimated every step), AdaBN at the end and the unsupervised validators,
trained and scored as `hf-transfer train` does it (prepare_run + train_run). Each process writes what it ended
with into ``<out>/rank<i>.json``: digests of the discriminator's weights and of the BatchNorm statistics after
AdaBN, PADA's class weights, the validators the Trainer computed on the gathered target predictions, and the
same validators computed by this process alone on every target row (no gather)."""

import hashlib
import json
import os
import sys

import torch

from hf_transfer.config import arguments_from_dict
from hf_transfer.data.paired import collate_images
from hf_transfer.evaluation.validators import VALIDATORS
from hf_transfer.methods.domain.adabn import batchnorm_layers
from hf_transfer.training.fit import train_run
from hf_transfer.training.run import prepare_run


def digest(tensors) -> str:
    """One hash of a sequence of tensors' bytes."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


out = sys.argv[1]
args, training_args = arguments_from_dict(
    {
        "mode": "domain",
        "method": "dann",
        "backbone": "test_resnet",
        "source": "builtin:digits-printed",
        "target": "builtin:digits-handwritten",
        "label_policy": "partial",
        "target_classes": "first:5",
        "partial_weighting": "pada",
        "pada_every": 1,
        "adabn": True,
        "image_size": 32,
        "crop_pct": 1.0,
        "augment": "light",
        "max_steps": 3,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "max_train_samples": 40,
        "max_eval_samples": 21,  # odd: the gather of the last eval batch must drop its padding
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
discriminator_before = digest(p for n, p in sorted(run.model.aux.named_parameters()))
train_run(run)
model, trainer = run.model, run.trainer
unlabelled = run.mode.unlabelled_eval_datasets()["target_unlabelled"]
gathered = trainer.evaluate(eval_dataset=unlabelled, metric_key_prefix="u")
model.eval()
with torch.no_grad():  # this process alone, every row
    batch = collate_images([unlabelled[i] for i in range(len(unlabelled))])
    logits = model(pixel_values=batch["pixel_values"])["logits"]
report = {
    "discriminator": digest(p for n, p in sorted(model.aux.named_parameters())),
    "discriminator_before": discriminator_before,
    "discriminator_params": sum(p.numel() for p in model.aux.parameters()),
    "pada_weights": model.aux["pada"].get_buffer("weights").tolist(),
    "pada_updates": int(model.aux["pada"].get_buffer("updates")),
    "batchnorm": digest(t for bn in batchnorm_layers(run.backbone.model) for t in (bn.running_mean, bn.running_var)),
    "batchnorm_batches": [int(bn.num_batches_tracked) for bn in batchnorm_layers(run.backbone.model)][:1],
    "validators_gathered": {k: v for k, v in gathered.items() if k.split("_", 1)[-1] in VALIDATORS},
    "validators_alone": {name: float(fn(logits)) for name, fn in VALIDATORS.items()},
    "rows": len(unlabelled),
}
with open(os.path.join(out, f"rank{trainer.args.process_index}.json"), "w") as f:
    json.dump(report, f)
