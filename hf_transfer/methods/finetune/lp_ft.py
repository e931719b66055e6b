"""LP-FT (Kumar et al., ICLR 2022, https://arxiv.org/abs/2202.10054): a linear probe first, then full fine-tuning,
two stages of one run. Fine-tuning from a random head distorts the pretrained features while the head is still
wrong; starting it from a probed head changes them less, which helps most out of distribution.

The stages are gradual unfreezing with one scheduled group, the whole backbone (:class:`ProbeThenFineTune` is a
:class:`~hf_transfer.methods.finetune.unfreeze.GradualUnfreezing`), so they inherit its resume safety: every
backbone parameter is in the optimizer from step 0 (no state, no momentum, no weight decay while it has no
gradient), and the stage is a pure function of ``state.global_step``. During the probe stage the backbone is in
eval mode (BatchNorm statistics, dropout, drop-path off: the features are fixed, as a probe's are) and the head
trains at ``probe_lr_scale`` times the scheduled rate; the head as it stands at the boundary is kept (WiSE-FT's head
at alpha=0) and saved into every later checkpoint.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.finetune.unfreeze import GradualUnfreezing
from hf_transfer.methods.registry import Needs, register_method

#: the probe head, saved into every checkpoint after the boundary
PROBE_HEAD_FILE = "lp_ft_probe_head.safetensors"


@dataclass(frozen=True)
class LpFtOptions:
    """The options of ``--method lp_ft`` (``--method_args``)."""

    probe_fraction: float = field(
        default=0.5, metadata={"help": "fraction of the run's optimizer steps in the probe stage, in (0, 1)"}
    )
    probe_steps: int | None = field(
        default=None, metadata={"help": "optimizer steps of the probe stage (overrides probe_fraction)"}
    )
    probe_lr_scale: float = field(
        default=10.0,
        metadata={
            "help": "the head's rate in the probe stage, times the scheduled learning_rate (10: the feature "
            "recipe's 1e-2 over the task recipe's 1e-3)"
        },
    )

    def __post_init__(self) -> None:
        check_options(self)


METHOD = register_method(
    "lp_ft",
    title="LP-FT, linear probe then fine-tuning",
    paper="https://arxiv.org/abs/2202.10054",
    modes=("task",),
    description="The head is trained on the frozen backbone first (probe stage), then every layer is fine-tuned "
    "from that head.",
    config=LpFtOptions,
    needs=Needs(target_labels=True, trainable_backbone=True),
    soft_targets=True,
    schedules_unfreezing=True,
)


def has_probe_head(method: str | None) -> bool:
    """Whether the method ``method`` ends with a probe head of its own (WiSE-FT's head at alpha=0)."""
    return method == METHOD.name


def check_options(options: LpFtOptions) -> None:
    """Refuse option values that leave no probe or no fine-tuning stage, naming them."""
    if options.probe_steps is None and not 0.0 < options.probe_fraction < 1.0:
        raise TransferConfigError(f"method=lp_ft: probe_fraction={options.probe_fraction} must be in (0, 1).")
    default_fraction = LpFtOptions.__dataclass_fields__["probe_fraction"].default
    if options.probe_steps is not None and options.probe_fraction != default_fraction:
        raise TransferConfigError(
            f"method=lp_ft: probe_steps={options.probe_steps} sets the probe stage's length, so "
            f"probe_fraction={options.probe_fraction} would do nothing; give one of them."
        )
    if options.probe_steps is not None and options.probe_steps < 1:
        raise TransferConfigError(f"method=lp_ft: probe_steps={options.probe_steps} must be >= 1.")
    if not options.probe_lr_scale > 0:
        raise TransferConfigError(f"method=lp_ft: probe_lr_scale={options.probe_lr_scale} must be > 0.")


class ProbeThenFineTune(GradualUnfreezing):
    """The two stages of LP-FT (see the module docstring): ``backbone`` unfreezes at the boundary step."""

    def __init__(
        self,
        backbone: list[tuple[str, torch.nn.Parameter]],
        head: torch.nn.Module,
        options: LpFtOptions,
        mask: bool = False,
    ) -> None:
        check_options(options)
        super().__init__(OrderedDict(backbone=backbone), every=float(options.probe_steps or 1), mask=mask)
        self.options = options
        self.head = head
        #: the head at the boundary, on the CPU (None until then)
        self.probe_head: dict[str, torch.Tensor] | None = None
        self._boundary: int | None = options.probe_steps
        self._scaled: list[float] | None = None

    def interval_steps(self) -> int:
        """The boundary step: ``probe_steps``, or ``probe_fraction`` of the run's steps once they are known."""
        if self._boundary is None:
            raise RuntimeError("lp_ft: the boundary is known once training begins (on_train_begin).")
        return self._boundary

    @property
    def boundary(self) -> int | None:
        """The first optimizer step of the fine-tuning stage (None before training begins)."""
        return self._boundary

    @property
    def in_probe_stage(self) -> bool:
        """Whether the step under way is in the probe stage (as last applied by the schedule)."""
        return self._count == 0

    def probing(self, step: int) -> bool:
        """Whether ``step`` is in the probe stage."""
        return self.unfrozen_count(step) == 0

    def restore_from(self, checkpoint: str | None) -> None:
        """The probe head saved in ``checkpoint`` (a resume after the boundary)."""
        path = os.path.join(checkpoint, PROBE_HEAD_FILE) if checkpoint else None
        if path and os.path.isfile(path):
            from safetensors.torch import load_file

            self.probe_head = load_file(path)

    # --- TrainerCallback events ------------------------------------------------------------------
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        train_dataloader: Sized | None = None,
        **kwargs: Any,
    ) -> None:
        if self.options.probe_steps is None:
            self._boundary = max(1, round(self.options.probe_fraction * state.max_steps))
        if self.interval_steps() >= state.max_steps:
            raise TransferConfigError(
                f"method=lp_ft: the probe stage ({self.interval_steps()} steps) leaves no fine-tuning step of the "
                f"run's {state.max_steps}; lower probe_steps or probe_fraction, or train longer."
            )
        super().on_train_begin(args, state, control, train_dataloader, **kwargs)
        if state.global_step > self.interval_steps() and self.probe_head is None:
            raise TransferConfigError(
                f"method=lp_ft: resumed at step {state.global_step}, after the probe stage, from a checkpoint "
                f"without {PROBE_HEAD_FILE}; resume from a checkpoint this run wrote."
            )

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        super().on_step_begin(args, state, control, **kwargs)
        if state.global_step == self.interval_steps() and self.probe_head is None:
            self.probe_head = {k: v.detach().to("cpu", copy=True) for k, v in self.head.state_dict().items()}
        scale = self.options.probe_lr_scale
        if optimizer is not None and scale != 1.0 and self.probing(state.global_step) and self._scaled is None:
            # only the head has gradients in this stage, so scaling every group scales the head's rate alone
            self._scaled = [group["lr"] for group in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * scale

    def on_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        if optimizer is not None and self._scaled is not None:  # the scheduler sees its own rates again
            for group, lr in zip(optimizer.param_groups, self._scaled, strict=True):
                group["lr"] = lr
            self._scaled = None

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.probe_head is None or not state.is_world_process_zero or args.output_dir is None:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.probe_head.items()}, os.path.join(folder, PROBE_HEAD_FILE))
