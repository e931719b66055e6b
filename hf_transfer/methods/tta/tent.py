"""TENT: fully test-time adaptation by entropy minimisation (Wang et al., ICLR 2021, https://arxiv.org/abs/2006.10726).

On each test batch, with the normalisation layers' affine parameters the only ones that adapt and BatchNorm
normalising with the batch's statistics: ``L = 1/B sum_i H(softmax(logits_i))``, one optimizer step per batch (the
authors' ImageNet setting: SGD, learning rate 0.00025 at batch 64, momentum 0.9). The batch is predicted with the
logits of the forward that computes the loss (before the update).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hf_transfer.methods.tta.base import TestTimeMethod, register_tta, softmax_entropy


@register_tta(
    "tent",
    title="TENT, test-time entropy minimisation",
    description="The entropy of each test batch's predictions is minimised through the normalisation layers' "
    "affine parameters, BatchNorm on batch statistics.",
    paper="https://arxiv.org/abs/2006.10726",
    learning_rate=0.00025,
    default=True,
)
class TENT(TestTimeMethod):
    def adapt(self, forward: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One entropy-minimisation step on the batch."""
        logits = forward()
        entropy = softmax_entropy(logits)
        loss = entropy.mean()
        self.step(loss)
        self.last_metrics = {"entropy": float(loss.detach()), "collapse_signal": float(loss.detach())}
        return logits.detach()
