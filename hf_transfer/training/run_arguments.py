"""The run's TrainingArguments: a copy of the caller's, with what hf_transfer does itself taken out of the
Trainer's hands (the push, the dropping of "unused" columns, per-checkpoint Hub commits)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from transformers import TrainingArguments

from hf_transfer.config import TransferArguments, push_repo_id
from hf_transfer.data.decoded import jpeg_decoder


@dataclass
class PushRequest:
    """``--push_to_hub`` and its settings, taken OUT of the TrainingArguments before the Trainer sees them.

    The Trainer pickles its TrainingArguments into every ``checkpoint-*/training_args.bin``, so a
    ``--hub_token`` left there is written to disk in plaintext; and with ``push_to_hub`` set it creates
    the Hub repo when training STARTS (an empty repo if the run then fails). hf_transfer pushes the
    finished folder itself (:func:`hf_transfer.hub.push.push_run`), so the Trainer gets neither."""

    repo_id: str
    private: bool | None
    revision: str | None
    create_pr: bool
    token: str | None

    @classmethod
    def take_from(cls, args: TransferArguments, training_args: TrainingArguments) -> PushRequest | None:
        """The push settings of ``training_args``, taken out of it (None when the run pushes nothing)."""
        token, training_args.hub_token = training_args.hub_token, None
        repo_id = push_repo_id(args, training_args)  # checked by plan_run already, with the same function
        if repo_id is None:
            return None
        training_args.push_to_hub = False
        return cls(repo_id, training_args.hub_private_repo, training_args.hub_revision, args.hub_create_pr, token)


def run_training_args(
    args: TransferArguments, training_args: TrainingArguments
) -> tuple[TrainingArguments, PushRequest | None]:
    """The run's own copy of ``training_args``, with the push settings taken out and those every mode needs.

    The caller's object is never changed; the push settings become a :class:`PushRequest`."""
    training_args = copy.deepcopy(training_args)
    push = PushRequest.take_from(args, training_args)
    # the mode's datasets are tensors already; the Trainer must not drop "unused" columns
    training_args.remove_unused_columns = False
    training_args.label_names = ["labels"]
    # hf_transfer pushes the finished folder in one commit (hub.push_run); the Trainer's own
    # per-checkpoint pushes would add "Training in progress" commits and checkpoint litter
    training_args.hub_strategy = "end"
    if training_args.device.type == "cpu":  # pinned memory needs an accelerator; torch warns on every loader
        training_args.dataloader_pin_memory = False
    if run_jpeg_decoder(args, training_args) == "nvjpeg":  # batches decoded onto the GPU: torch refuses to pin them
        training_args.dataloader_pin_memory = False
    return training_args, push


def run_jpeg_decoder(args: TransferArguments, training_args: TrainingArguments) -> str | None:
    """Which decoder reads the run's compact decode-cache entries back (``"cpu"``, ``"nvjpeg"``), None without any.

    nvjpeg when the model is on CUDA and the main process gathers the batches
    (:func:`~hf_transfer.data.decoded.jpeg_decode_device`): for results.json and the loaders' pinning."""
    if args.input_path != "fast":
        return None
    return jpeg_decoder(args.decode_cache_format, training_args.device, training_args.dataloader_num_workers)


def run_output_dir(training_args: TrainingArguments) -> str:
    """The run's output folder, which TrainingArguments always has once built."""
    assert training_args.output_dir is not None, "TrainingArguments.__post_init__ fills in a default output_dir"
    return training_args.output_dir


def non_default_arguments(args: TransferArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """The arguments that differ from their defaults: a config that reproduces the run.

    Compared against default instances built the same way, so values normalised in
    ``__post_init__`` (enums, ``report_to``, ...) compare equal when the user did not set them."""
    skip = {
        "output_dir",
        "resume_from_checkpoint",
        "push_to_hub",
        "hub_model_id",
        "label_names",
        "remove_unused_columns",
        "hub_strategy",
        "logging_dir",
        "ranking",  # a path on this machine; what it says is in results["ranking"]
    }
    default_transfer = TransferArguments(
        mode=args.mode, backbone=args.backbone, target=args.target, source=args.source, method=args.method
    )
    default_training = TrainingArguments(output_dir=training_args.output_dir, use_cpu=training_args.use_cpu)
    out = {}
    for obj, default in ((args, default_transfer), (training_args, default_training)):
        for f in dataclasses.fields(obj):
            if not f.init or f.name in skip or "token" in f.name:
                continue
            value, base = getattr(obj, f.name), getattr(default, f.name, None)
            if f.name in ("mode", "backbone", "target", "source", "method") or repr(value) != repr(base):
                value = getattr(value, "value", value)
                out[f.name] = (
                    value if isinstance(value, (int, float, str, bool, list, dict, type(None))) else str(value)
                )
    if args.lr_find:  # the range test's pick is a result, not an argument: "auto" reproduces (and identifies) it
        out["learning_rate"] = "auto"
    return out
