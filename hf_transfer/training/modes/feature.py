"""Feature transfer: frozen backbone, features computed once and cached, a linear head trained on them.

The Trainer trains only the head, on cached feature tensors read row by row from the cache's
memmap (no image decoding, no backbone pass per epoch, never the whole matrix in RAM), or, with
``features_on_device`` (default on CUDA when they fit), on rows gathered from one copy of the train
features on the training device: a batch is then only its row indices, so an epoch costs a few
kernel launches instead of host reads, collation and a host-to-device copy per step. After
training the head's weights go back into the backbone's classifier, so the output is still a full
model that ``from_pretrained`` and ``pipeline`` load.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from transformers import TrainingArguments
from transformers.trainer_utils import TrainOutput

from hf_transfer.config import TransferArguments
from hf_transfer.data.kshot import subset
from hf_transfer.methods.feature.cache import FeatureCache, body_fingerprint
from hf_transfer.methods.feature.lbfgs_head import fit_linear_head
from hf_transfer.methods.registry import get_method
from hf_transfer.models.backbones import Backbone
from hf_transfer.models.speed import compile_options, use_channels_last, use_features_on_device
from hf_transfer.training.modes.base import TransferData, TransferMode, TransferModel, register_mode
from hf_transfer.training.modes.common import classification_loss, eval_splits

#: L-BFGS iterations when max_steps is not given (scikit-learn's LogisticRegression default)
LBFGS_MAX_ITER = 100


def nonfinite_rows(features: torch.Tensor | np.ndarray, chunk_rows: int = 65536) -> int:
    """How many rows of a feature matrix (a memmap: read in chunks) hold a NaN or an infinity."""
    return sum(
        int((~np.isfinite(np.asarray(features[i : i + chunk_rows]))).any(axis=1).sum())
        for i in range(0, len(features), chunk_rows)
    )


class FeatureDataset(torch.utils.data.Dataset):
    """Rows of cached features.

    From :meth:`from_cache` the tensors are views of the cache's ``np.memmap`` (kept as ``memmap``): a batch
    reads only its rows, never the whole matrix."""

    def __init__(
        self, features: torch.Tensor, labels: torch.Tensor, path: str | None = None, memmap: np.ndarray | None = None
    ) -> None:
        self.features, self.labels, self.path, self.memmap = features, labels, path, memmap

    @classmethod
    def from_cache(cls, path: str) -> FeatureDataset:
        """The rows of the cache entry at ``path``, memory-mapped (nothing read until a batch needs it)."""
        features, labels = FeatureCache.load(path)
        return cls(torch.from_numpy(features), torch.from_numpy(labels), path, memmap=features)

    def __getstate__(self) -> dict[str, Any]:  # spawned loader workers reopen the memmap instead of pickling its bytes
        if self.path is None:
            return dict(self.__dict__)
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if set(state) == {"path"}:
            state = FeatureDataset.from_cache(state["path"]).__dict__
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "labels": self.labels[i]}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """One gather per batch (the DataLoader's auto-collation calls this)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        feats, labels = self.features[idx], self.labels[idx]
        return [{"features": f, "labels": y} for f, y in zip(feats, labels, strict=True)]


class RowIndexDataset(torch.utils.data.Dataset):
    """Row numbers only: the features are gathered on the device from :attr:`FeatureMode.device_table`."""

    def __init__(self, num_rows: int) -> None:
        self.num_rows = num_rows

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, i: int) -> dict:
        return {"row_index": i}


@register_mode("feature")
class FeatureMode(TransferMode):
    def __init__(
        self, args: TransferArguments, backbone: Backbone, data: TransferData, training_args: TrainingArguments
    ) -> None:
        super().__init__(args, backbone, data, training_args)
        get_method(self.method_name, "feature")  # an unknown method is refused naming the known ones
        self.frozen_groups = [g for g in backbone.param_groups() if g != "head"]
        self.cache = FeatureCache(
            args.feature_cache_dir,
            input_path=args.input_path,
            decoded_cache_dir=args.decoded_cache_dir,
            num_workers=training_args.dataloader_num_workers,
            amp_dtype=torch.bfloat16 if training_args.bf16 else None,
            channels_last=use_channels_last(args.channels_last, backbone.model, training_args.device),
            compile_options=compile_options(training_args),
            feature_dtype=args.feature_dtype,
            decode_format=(args.decode_cache_format, args.decode_cache_quality),
        )
        self.cache_files: dict[str, str] = {}
        #: head_solver=lbfgs: TransferTrainer.train calls :meth:`fit` instead of its loop
        self.fits_in_one_solve = args.head_solver == "lbfgs"
        #: what the L-BFGS fit reported, else None
        self.solver_info: dict | None = None
        self._features: dict[str, FeatureDataset] = {}
        #: (features, labels) of the train split on the training device, when features_on_device
        self.device_table: tuple[torch.Tensor, torch.Tensor] | None = None

    def _compute_features(self) -> None:
        """Every split once; under DDP each process extracts its shard, then all read the whole
        cache entry, memory-mapped (see :mod:`hf_transfer.methods.feature.cache`)."""
        if self._features:
            return
        splits = {"train": subset(self.data.target["train"], self.args.max_train_samples, self.training_args.seed)}
        splits.update(eval_splits(self))
        weights = body_fingerprint(self.backbone)
        for name, ds in splits.items():
            _, _, path = self.cache.get_or_compute(
                self.backbone, ds, name, self.args.feature_batch_size, self.training_args.device, weights
            )
            self._features[name] = FeatureDataset.from_cache(path)
            self.cache_files[name] = path

    def build_model(self) -> TransferModel:
        """A copy of the backbone's head, trained on the cached features (the backbone is frozen)."""
        self._compute_features()
        for p in self.backbone.model.parameters():
            p.requires_grad_(False)
        head = copy.deepcopy(self.backbone.head)
        for p in head.parameters():
            p.requires_grad_(True)
        return TransferModel(self, head)

    def train_dataset(self) -> FeatureDataset | RowIndexDataset:
        """The cached train features, or only their row numbers when the features sit on the device."""
        self._compute_features()
        train = self._features["train"]
        nbytes = train.features.element_size() * train.features.nelement()
        if use_features_on_device(self.args.features_on_device, nbytes, self.training_args.device):
            device = self.training_args.device
            self.device_table = (train.features.to(device), train.labels.to(device))
            return RowIndexDataset(len(train))
        return train

    def eval_datasets(self) -> dict[str, torch.utils.data.Dataset]:
        """The cached features of each domain's test split."""
        self._compute_features()
        return {k: v for k, v in self._features.items() if k != "train"}

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """A batch of feature rows, or of row numbers for the device-resident train features."""
        if "row_index" in examples[0]:
            return {"row_index": torch.tensor([e["row_index"] for e in examples], dtype=torch.long)}
        return {
            "features": torch.stack([e["features"] for e in examples]),
            "labels": torch.stack([e["labels"] for e in examples]).long(),
        }

    def fit(self, trainer: Any) -> TrainOutput:
        """Fit the head full-batch by L-BFGS on the cached train features (``head_solver=lbfgs``).

        See :mod:`hf_transfer.methods.feature.lbfgs_head`; in place of the Trainer's epochs of SGD; logged
        like a training step (loss, iterations) so the card and trackers see it."""
        train = self._features["train"]
        weight_decay = self.training_args.weight_decay
        max_iter = self.training_args.max_steps if self.training_args.max_steps > 0 else LBFGS_MAX_ITER
        trainer.callback_handler.on_train_begin(trainer.args, trainer.state, trainer.control)
        if bad := nonfinite_rows(train.features):  # L-BFGS would fail deep in its line search, or fit NaN
            trainer.health.stop(
                "non-finite input",
                0,
                float("nan"),
                f"before the L-BFGS solve: {bad} of the {len(train.features)} cached train feature rows hold NaN/inf "
                f"({self.cache_files.get('train')})",
                advice="the backbone's features overflow: delete that cache entry, check the images, try without bf16,",
            )
        info = fit_linear_head(
            trainer.model.classifier,
            train.features,
            train.labels,
            l2=weight_decay if weight_decay > 0 else None,
            max_iter=max_iter,
            label_smoothing=self.label_smoothing,
        )
        self.solver_info = info
        trainer.state.global_step = trainer.state.max_steps = info["iterations"]
        trainer.state.epoch = float(info["iterations"])  # one full-batch pass per iteration
        # the solve's loss and head through the same health check as a step of the Trainer's loop (a feature
        # cache holding inf/NaN gives NaN weights): stopped here, before it is logged or exported
        trainer.health.observe(trainer.state.global_step, torch.tensor(info["loss"]))
        trainer.health.check(trainer.state, trainer.model)
        trainer.health.note = f"the final objective of the L-BFGS solve ({info['iterations']} iterations)"
        trainer.log(
            {
                "loss": round(info["loss"], 6),
                "lbfgs_iterations": info["iterations"],
                "lbfgs_converged": float(info["converged"]),
                "grad_norm": info["grad_norm"],
            }
        )
        trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
        return TrainOutput(info["iterations"], info["loss"], {"train_loss": info["loss"]})

    def solver_hyperparameters(self, trainer_hyperparameters: dict) -> dict:
        """The card's hyper-parameters of an L-BFGS head: the solve's own, not the Trainer optimizer's."""
        info = self.solver_info
        assert info is not None, "called once the L-BFGS fit has reported (collect_results checks solver_info)"
        return {
            "head_solver": "lbfgs (full batch, strong-Wolfe line search)",
            "l2": info["l2"],
            "max_iterations": info["max_iterations"],
            "iterations": info["iterations"],
            "converged": info["converged"],
            "label_smoothing": self.label_smoothing or None,
            "world_size": trainer_hyperparameters.get("world_size"),
        }

    def forward(
        self,
        model: TransferModel,
        features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        row_index: torch.Tensor | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        """The head's loss and logits on a batch of features (gathered on the device from row numbers)."""
        if row_index is not None:  # a batch of the device-resident train features
            assert self.device_table is not None, "row numbers come only from the device-resident train set"
            table, table_labels = self.device_table
            row_index = row_index.to(table.device)
            features, labels = table[row_index], table_labels[row_index].long()
        assert features is not None, "a batch holds features or row numbers"
        logits = model.classifier(features.float())  # float16-stored features: the head still runs in float32
        return {"loss": classification_loss(logits, labels, self.label_smoothing), "logits": logits}

    def finish(self, model: TransferModel, trainer: Any) -> None:
        """The trained head goes back into the full model."""
        with torch.no_grad():
            self.backbone.head.load_state_dict(
                {k: v.to(self.backbone.head.weight.device) for k, v in model.classifier.state_dict().items()}
            )

    def describe(self) -> dict:
        """What the run used, with the head solver, the feature cache's hits and where the features sat."""
        return {
            **super().describe(),
            "head_solver": {"name": self.args.head_solver, **(self.solver_info or {})},
            "feature_cache": {"hits": self.cache.hits, "misses": self.cache.misses},
            "feature_dtype": self.cache.feature_dtype,
            "features_on_device": self.device_table is not None,
        }
