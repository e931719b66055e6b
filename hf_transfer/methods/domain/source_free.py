"""Source-free domain adaptation: the contract of a method that adapts a trained classifier to the target with
no source data (SHOT, NRC, AaD).

Such a method sees the target training images alone: its term is computed on the target batch's features and
logits, with each row's index in the target training set (``rows``), because these methods keep something per
target image: SHOT a pseudo-label, NRC and AaD a memory bank of features and predictions. That state is filled
by a pass of the current model over every target training image (eval mode, eval preprocessing) that the
Trainer runs when :meth:`SourceFreeLoss.needs_refresh` says so (SHOT: at the start of every epoch; NRC, AaD:
once, before the first step), then handed to :meth:`SourceFreeLoss.refresh`.

Everything such a method keeps lives in persistent buffers of its module (sized by :meth:`allocate` before the
Trainer restores a checkpoint), so a resumed run continues with exactly the state it was killed with. Under
DDP, every process sees other rows: a memory bank is updated with the rows of every process
(:func:`gather_rows`), so the banks stay identical everywhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hf_transfer.methods.domain.base import TransferLoss, _atleast_float32


def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The rows of ``tensors`` from every DDP process, concatenated in rank order (themselves when not distributed).

    Detached: only memory-bank updates are gathered, never what the loss back-propagates through."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tuple(t.detach() for t in tensors)
    world = dist.get_world_size()
    n = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    most = int(max(int(s) for s in sizes))
    out = []
    for t in tensors:
        t = t.detach()
        padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: t.shape[0]] = t
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)]))
    return tuple(out)


class SourceFreeLoss(TransferLoss):
    """A source-free method's term over a target batch (see the module docstring).

    ``forward(f_s, f_t, logits_s, logits_t, rows=...)``: ``f_s``/``logits_s`` are empty (there is no source);
    ``rows`` are the target rows' indices in the target training set."""

    #: the classifier (the source hypothesis) stays frozen; only the features train (SHOT)
    frozen_head: bool = False

    def allocate(self, num_rows: int) -> None:
        """Size the per-row state for ``num_rows`` target training images (before a checkpoint is restored)."""
        raise NotImplementedError

    def needs_refresh(self, epoch: int) -> bool:
        """Whether a pass over all target training images must refresh the state before this step."""
        raise NotImplementedError

    def refresh(self, features: torch.Tensor, logits: torch.Tensor, epoch: int) -> dict[str, float]:
        """Refill the state from every target training image's ``features`` and ``logits`` (row order).

        Returns numbers worth logging."""
        raise NotImplementedError


class MemoryBankLoss(SourceFreeLoss):
    """A method with a memory bank of every target image's normalised features and predictions (NRC, AaD).

    Filled once by a pass before training; the batch's rows are written into it at every training step (before
    the neighbours are searched, as in the authors' code), with the rows of every DDP process."""

    def __init__(self, feature_dim: int, num_classes: int, **options: object) -> None:
        super().__init__(**options)
        self.feature_dim, self.num_classes = int(feature_dim), int(num_classes)
        self.register_buffer("feature_bank", torch.zeros(0, self.feature_dim))
        self.register_buffer("score_bank", torch.zeros(0, self.num_classes))
        self.register_buffer("filled", torch.zeros((), dtype=torch.bool))

    def allocate(self, num_rows: int) -> None:
        """Banks of ``num_rows`` rows (empty until the first refresh)."""
        device = self.get_buffer("feature_bank").device
        self.feature_bank = torch.zeros(int(num_rows), self.feature_dim, device=device)
        self.score_bank = torch.zeros(int(num_rows), self.num_classes, device=device)

    def needs_refresh(self, epoch: int) -> bool:
        """Once, before the first step."""
        return not bool(self.get_buffer("filled"))

    @torch.no_grad()
    def refresh(self, features: torch.Tensor, logits: torch.Tensor, epoch: int) -> dict[str, float]:
        """Fill both banks from a pass over every target training image."""
        bank = self.get_buffer("feature_bank")
        if features.shape[0] != bank.shape[0]:
            raise ValueError(f"the pass gave {features.shape[0]} rows for a bank of {bank.shape[0]}")
        bank.copy_(F.normalize(_atleast_float32(features), dim=1).to(bank))
        scores = self.get_buffer("score_bank")
        scores.copy_(F.softmax(_atleast_float32(logits), dim=1).to(scores))
        self.get_buffer("filled").fill_(True)
        return {"bank_rows": float(bank.shape[0])}

    @torch.no_grad()
    def write_batch(self, f_t: torch.Tensor, probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Write this step's rows (of every process) into the banks; the batch's normalised features."""
        normalised = F.normalize(_atleast_float32(f_t.detach()), dim=1)
        all_f, all_p, all_rows = gather_rows(normalised, probs.detach(), rows)
        bank, scores = self.get_buffer("feature_bank"), self.get_buffer("score_bank")
        bank[all_rows.long()] = all_f.to(bank)
        scores[all_rows.long()] = all_p.to(scores)
        return normalised.to(bank)

    def neighbours(self, normalised: torch.Tensor, k: int) -> torch.Tensor:
        """The ``k`` nearest bank rows (cosine) of each batch row, the row itself (the nearest) left out."""
        bank = self.get_buffer("feature_bank")
        return torch.topk(normalised @ bank.T, k=min(k + 1, bank.shape[0]), dim=1).indices[:, 1:]


def require_rows(name: str, rows: torch.Tensor | None) -> torch.Tensor:
    """``rows``, or a clear error when a source-free method was called without the target rows' indices."""
    if rows is None:
        raise ValueError(f"{name} needs the target rows' indices (rows=); got None")
    return rows
