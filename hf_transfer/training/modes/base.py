"""The transfer-mode strategy and its registry.

A mode decides *what* is trained and *how the loss is computed*; the one training loop is
:class:`hf_transfer.training.trainer.TransferTrainer`, which delegates to the mode for the loss (through
:class:`TransferModel`'s forward) and for the optimizer's parameter groups. A new mode is a small
subclass of :class:`TransferMode` plus one :func:`register_mode` call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from timm.optim import param_groups_weight_decay
from torch import nn
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import TrainOutput

from hf_transfer.config import TransferArguments
from hf_transfer.data.align import AlignmentReport
from hf_transfer.data.columns import LABEL_COLUMN
from hf_transfer.data.stream import TrainStream
from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.metrics import UNLABELLED
from hf_transfer.methods.domain.step import SteppedLoss
from hf_transfer.models.backbones import Backbone

logger = logging.getLogger(__name__)

MODES: dict[str, type[TransferMode]] = {}


def register_mode(name: str) -> Callable[[type[TransferMode]], type[TransferMode]]:
    """Class decorator: make a mode known to the runs by ``name``."""

    def wrap(cls: type[TransferMode]) -> type[TransferMode]:
        if name in MODES:
            raise ValueError(f"Transfer mode {name!r} is already registered by {MODES[name].__name__}.")
        cls.name = name
        MODES[name] = cls
        return cls

    return wrap


def get_mode(name: str) -> type[TransferMode]:
    """The registered mode ``name``; an error listing the known ones."""
    if name not in MODES:
        raise TransferConfigError(f"Unknown transfer mode {name!r}; available: {sorted(MODES)}.")
    return MODES[name]


@dataclass
class TransferData:
    """What a mode trains and evaluates on. ``source`` is None when no source domain was given."""

    target: datasets.DatasetDict
    label_names: list[str]
    source: datasets.DatasetDict | None = None
    alignment: AlignmentReport | None = None
    source_name: str | None = None
    target_name: str | None = None
    #: rows without a label dropped per ``domain/split`` (never trained on, never scored)
    dropped_unlabelled: dict[str, int] = field(default_factory=dict)
    #: rows without a label kept per ``domain/split``: the domain mode's unlabelled target images
    kept_unlabelled: dict[str, int] = field(default_factory=dict)
    #: rows whose image cannot be decoded, dropped per ``domain/split`` (``--skip_bad_images``)
    skipped_images: dict[str, int] = field(default_factory=dict)
    #: ``--streaming``: the target's training split as a stream (``target`` then holds its test split only; in domain
    #: mode also ``train``: a head of the stream, the unlabelled target images the unsupervised validators score)
    train_stream: TrainStream | None = None
    #: ``--streaming`` in domain mode: the source's training split as a stream (``source`` holds its test split)
    source_stream: TrainStream | None = None

    def drop_unlabelled(self, keep_target_train: bool = False) -> None:
        """Remove the rows without a label from every split that is trained on or scored.

        ONE warning gives the counts. ``keep_target_train``: the domain mode's target training images are
        unlabelled by design, so those rows stay (as unlabelled target images)."""
        if self.dropped_unlabelled or self.kept_unlabelled:
            return
        for domain in ("source", "target"):
            dsd = getattr(self, domain)
            if dsd is None:
                continue
            kept = {}
            for split, ds in dsd.items():
                key = f"{domain}/{split}"
                labelled = np.flatnonzero(np.asarray(ds[LABEL_COLUMN], dtype=np.int64) != UNLABELLED)
                missing = len(ds) - len(labelled)
                if keep_target_train and key == "target/train":
                    self.kept_unlabelled[key] = missing
                    kept[split] = ds
                    continue
                self.dropped_unlabelled[key] = missing
                if missing == len(ds):
                    raise TransferConfigError(
                        f"The {domain} dataset's {split!r} split: none of its {len(ds)} rows "
                        "has a label, so nothing in it can be trained on or scored."
                    )
                kept[split] = ds.select(labelled) if missing else ds
            setattr(self, domain, datasets.DatasetDict(kept))
        self._warn_unlabelled()

    def _warn_unlabelled(self) -> None:
        dropped = {k: v for k, v in self.dropped_unlabelled.items() if v}
        kept = {k: v for k, v in self.kept_unlabelled.items() if v}
        if dropped or kept:
            logger.warning(
                "Rows without a label: %d dropped %s (never trained on or scored)%s.",
                sum(dropped.values()),
                dropped,
                f"; kept as unlabelled target images: {kept}" if kept else "",
            )


class TransferModel(nn.Module):
    """What the Trainer trains: the classifier plus the mode's auxiliary modules.

    Everything with gradients runs inside this module's ``forward`` so that one DDP-wrapped forward
    covers the classifier and e.g. a domain discriminator, and Trainer checkpoints carry both.
    """

    def __init__(
        self,
        mode: TransferMode,
        classifier: nn.Module,
        aux: dict[str, nn.Module] | None = None,
        input_transform: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.aux = nn.ModuleDict(aux or {})
        # fast input path: uint8 batches are augmented + normalised here, on the model's device and
        # inside the training step (so the Trainer's RNG checkpoint covers the augmentation draws)
        self.input_transform = input_transform
        # set by prepare_run (TransferArguments.channels_last): image batches enter the model NHWC
        self.channels_last = False
        # set by prepare_run (--mixup/--cutmix): mixes the labelled training rows into probability targets
        self.mixing: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
        object.__setattr__(self, "_mode", mode)  # not a submodule: no recursion, not in state_dict
        self.config = getattr(classifier, "config", None)

    def _prepare(self, pixels: torch.Tensor | None, image_size: torch.Tensor | None = None) -> torch.Tensor | None:
        if pixels is not None and pixels.dtype == torch.uint8 and isinstance(self.input_transform, nn.Module):
            pixels = self.input_transform(pixels, image_size)
        if self.channels_last and pixels is not None and pixels.dim() == 4:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        target_pixel_values: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        target_labels: torch.Tensor | None = None,
        row_index: torch.Tensor | None = None,
        image_size: torch.Tensor | None = None,
        target_image_size: torch.Tensor | None = None,
        phase: str | None = None,
    ) -> dict[str, Any]:
        """The mode's forward (loss and logits) on a batch prepared for the model (see :meth:`_prepare`)."""
        # image_size: the original (H, W) of each image when a split mixes sizes (fast input path)
        pixel_values = self._prepare(pixel_values, image_size)
        pixel_values, labels = self._mix(pixel_values, labels)
        target_pixel_values = self._prepare(target_pixel_values, target_image_size)
        extra: dict[str, Any] = {} if row_index is None else {"row_index": row_index}  # feature mode, on device
        if phase is not None:  # one pass of a method that owns its training step
            extra["phase"] = phase
        return self.mode.forward(
            self,
            pixel_values=pixel_values,
            labels=labels,
            target_pixel_values=target_pixel_values,
            features=features,
            **extra,
        )

    def prepare_batch(self, inputs: dict) -> dict:
        """Augment and normalise the image batches of ``inputs`` once (fast input path).

        For a method whose passes must all see the same augmented batch; the sizes the augmentation read are
        dropped."""
        out = dict(inputs)
        for pixels, sizes in (("pixel_values", "image_size"), ("target_pixel_values", "target_image_size")):
            if out.get(pixels) is not None:
                out[pixels] = self._prepare(out[pixels], out.pop(sizes, None))
        if out.get("pixel_values") is not None:
            out["pixel_values"], out["labels"] = self._mix(out["pixel_values"], out.get("labels"))
        return out

    def _mix(
        self, pixels: torch.Tensor | None, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Mixup/CutMix of a labelled training batch (once: probability targets are not mixed again)."""
        if (
            self.mixing is None
            or not self.training
            or pixels is None
            or labels is None
            or labels.dim() != 1
            or pixels.dim() != 4
        ):
            return pixels, labels
        return self.mixing(pixels, labels)

    @property
    def mode(self) -> TransferMode:
        """The mode this model trains under (kept off the module tree: not a submodule, not in the state)."""
        mode: TransferMode = self.__dict__["_mode"]
        return mode

    def train(self, mode: bool = True) -> TransferModel:
        """``nn.Module.train``, then the mode's own switch (e.g. frozen BatchNorm stays in eval mode)."""
        super().train(mode)
        if mode:
            self.mode.on_train_mode(self)
        return self


class TransferMode:
    """Base class. Subclasses set up the model, the datasets, the parameter groups and the loss."""

    name: str = "base"
    #: True when the target's training images are used without their labels (then rows that lack one stay)
    uses_unlabelled_target: bool = False
    #: True when the mode trains in one solve (its ``fit(trainer)``) instead of the Trainer's loop
    fits_in_one_solve: bool = False

    def __init__(
        self, args: TransferArguments, backbone: Backbone, data: TransferData, training_args: TrainingArguments
    ) -> None:
        self.args = args
        self.backbone = backbone
        self.data = data
        self.training_args = training_args
        self.frozen_groups: list[str] = []
        data.drop_unlabelled(keep_target_train=self.uses_unlabelled_target)

    @property
    def method_name(self) -> str:
        """The registered method the mode trains."""
        assert self.args.method is not None, "TransferArguments.__post_init__ fills in the mode's default method"
        return self.args.method

    @property
    def backbone_lr_scale(self) -> float:
        """The backbone groups' learning rate as a fraction of the head's (discriminative learning rates)."""
        scale = self.args.backbone_lr_scale
        assert scale is not None, "TransferArguments.__post_init__ fills in the method's default scale"
        return scale

    @property
    def label_smoothing(self) -> float:
        """``label_smoothing_factor`` of the classification loss (every mode applies it itself)."""
        return float(getattr(self.training_args, "label_smoothing_factor", 0.0) or 0.0)

    # --- hooks a mode writes ----------------------------------------------------------------
    def build_model(self) -> TransferModel:
        """The model the Trainer trains: the classifier plus the mode's auxiliary modules."""
        raise NotImplementedError

    def train_dataset(self) -> torch.utils.data.Dataset:
        """The rows the Trainer trains on."""
        raise NotImplementedError

    def eval_datasets(self) -> dict[str, torch.utils.data.Dataset]:
        """The labelled evaluation sets by domain name (``target``, and ``source`` when given)."""
        raise NotImplementedError

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """One batch of the Trainer's loaders from its rows."""
        raise NotImplementedError

    def forward(self, model: TransferModel, **inputs: Any) -> dict[str, Any]:
        """The loss and logits of one batch: ``{"loss", "logits"}``.

        A training step may add ``"metrics"``: floats the Trainer logs with the loss (e.g. DANN's coefficient),
        returned rather than kept on the mode."""
        raise NotImplementedError

    # --- hooks with defaults --------------------------------------------------------------------
    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] from the Trainer's global step (restored on resume)."""

    def stepped_method(self, model: TransferModel) -> SteppedLoss | None:
        """The method's own training step, or None when the Trainer's one-loss step trains the mode.

        The step is a :class:`~hf_transfer.methods.domain.step.SteppedLoss`."""
        return None

    def parameter_parts(self, model: TransferModel) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters by part (``features``, ``classifier``, ``method``), for a stepped method."""
        raise NotImplementedError(f"mode {self.name!r} trains no method that owns its step")

    def optimizer_groups(self, model: TransferModel, lr: float, weight_decay: float) -> list[dict]:
        """Every trainable parameter at ``lr``, no weight decay on biases and norms.

        timm's ``param_groups_weight_decay`` (with ``weight_decay=0`` one group holds them all)."""
        return [
            {**g, "lr": lr, "name": "decay" if g["weight_decay"] else "no_decay"}
            for g in param_groups_weight_decay(model, weight_decay)
        ]

    def callbacks(self) -> list[TrainerCallback]:
        """TrainerCallbacks the mode needs (e.g. gradual unfreezing: *when*, beside the mode's *what*)."""
        return []

    def on_train_mode(self, model: TransferModel) -> None:
        """Called after ``model.train()``: e.g. keep BatchNorm of frozen groups in eval mode."""

    def unlabelled_eval_datasets(self) -> dict[str, torch.utils.data.Dataset]:
        """Eval sets whose labels are all -1: only unsupervised validators are computed on them."""
        return {}

    def domain_gap(self) -> dict | None:
        """Distance between source and target features of the current model (None: not applicable)."""
        return None

    def fit(self, trainer: Any) -> TrainOutput:  # trainer: the TransferTrainer (a higher module: no import)
        """Train in one solve instead of the Trainer's loop (only a mode with ``fits_in_one_solve``)."""
        raise NotImplementedError(f"mode {self.name!r} trains in the Trainer's loop")

    def finish(self, model: TransferModel, trainer: Any) -> None:
        """After training, before the final evaluation (e.g. copy a trained head, AdaBN)."""

    def describe(self) -> dict:
        """What the run used (mode, method, frozen groups), for results.json and the card."""
        return {"mode": self.name, "method": self.args.method, "frozen_groups": self.frozen_groups}
