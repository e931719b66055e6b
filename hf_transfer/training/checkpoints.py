"""Which Trainer checkpoint to resume from.

``transformers.trainer_utils.get_last_checkpoint`` returns the newest ``checkpoint-N`` folder even
when the run was killed while writing it (the folder appears first; model, optimizer, RNG and
``trainer_state.json`` follow, the state last and not atomically), and resuming from it then fails.
A checkpoint counts as complete here when its ``trainer_state.json`` parses and names step ``N`` and
the run's ``run_identity.json`` (written after the Trainer's files) is there;
``last`` means the newest complete one, and incomplete newer ones are named in a warning.

A checkpoint is written into its own new ``checkpoint-N`` folder, so a save that fails (a full disk:
see :meth:`~hf_transfer.training.trainer.TransferTrainer._save_checkpoint`) leaves the earlier ones as
they were, and the Trainer removes old ones (``save_total_limit``) only after a save succeeded.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import TYPE_CHECKING

from hf_transfer.errors import TransferConfigError
from hf_transfer.runtime.disk import tensors_bytes

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
IDENTITY_FILE = "run_identity.json"  # written after the Trainer's files (hf_transfer.training.run_folder)
#: room asked for besides the weights and the optimizer state: scheduler, RNG, trainer state, configs
CHECKPOINT_OVERHEAD_BYTES = 256 * 2**10


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """About what one checkpoint of ``model`` (and ``optimizer``'s state) takes on disk."""
    import torch  # here: resolving a checkpoint folder needs no torch

    tensors = list(model.state_dict().values())
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return tensors_bytes(tensors) + CHECKPOINT_OVERHEAD_BYTES


def checkpoint_problem(folder: str) -> str | None:
    """Why ``folder`` cannot be resumed from (None: it can)."""
    state_path = os.path.join(folder, TRAINER_STATE)
    if not os.path.isfile(state_path):
        return f"{TRAINER_STATE} is missing (the run stopped while writing this checkpoint)"
    try:
        with open(state_path) as f:
            step = json.load(f).get("global_step")
    except (OSError, ValueError) as err:
        return f"{TRAINER_STATE} is unreadable ({type(err).__name__}: the run stopped while writing it)"
    match = _CHECKPOINT.match(os.path.basename(os.path.normpath(folder)))
    if match and step != int(match.group(1)):
        return f"{TRAINER_STATE} says global_step={step}, not {match.group(1)}"
    if not os.path.isfile(os.path.join(folder, IDENTITY_FILE)):
        return f"{IDENTITY_FILE} is missing (the run stopped before recording it, or no hf_transfer run wrote it)"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir`` (None when there is none)."""
    if not os.path.isdir(output_dir):
        return None
    found = sorted(
        (
            (int(m.group(1)), name)
            for name in os.listdir(output_dir)
            if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
        ),
        reverse=True,
    )
    for _, name in found:
        folder = os.path.join(output_dir, name)
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("Skipping incomplete checkpoint %s: %s.", folder, problem)
    return None


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """``resume_from_checkpoint`` (a folder, or true/last/latest) -> the folder to resume from."""
    if value is None or str(value).lower() in ("false", ""):
        return None
    if str(value).lower() in ("true", "last", "latest"):
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise TransferConfigError(f"resume_from_checkpoint={value!r}: no complete checkpoint in {output_dir!r}.")
        return last
    if not os.path.isdir(value):
        raise TransferConfigError(f"resume_from_checkpoint: {value!r} is not a checkpoint folder.")
    problem = checkpoint_problem(value)
    if problem is not None:
        raise TransferConfigError(
            f"resume_from_checkpoint: cannot resume from {value!r}: {problem}. "
            "Use resume_from_checkpoint=last for the newest complete checkpoint."
        )
    return value
