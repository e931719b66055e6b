"""The normalisation layers of a backbone, read from its architecture alone (no weights are loaded).

AdaBN re-estimates BatchNorm running statistics; a ViT or ConvNeXt (LayerNorm) has none, so ``--adabn``
there would do nothing while the card said it was applied. :func:`architecture_without_weights` builds a
backbone on the ``meta`` device from its config (a timm name, a local folder, a cached Hub config) in well
under a second, so that such an option can be refused before any data is loaded.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

_NORM_WORDS = ("Norm", "norm")


def norm_layer_types(model: nn.Module) -> list[str]:
    """The class names of the model's normalisation layers (``LayerNorm``, ``GroupNorm``, ...), sorted."""
    return sorted({type(m).__name__ for m in model.modules() if any(w in type(m).__name__ for w in _NORM_WORDS)})


def architecture_without_weights(
    model_id: str, revision: str | None = None, trust_remote_code: bool = False
) -> nn.Module | None:
    """``model_id``'s architecture on the meta device, from its config; None when the config cannot be read here.

    None e.g. for a Hub id offline and not cached: the caller then checks the loaded model instead."""
    from hf_transfer.models.backbones import RANDOM_INIT, backbone_kind

    try:
        if backbone_kind(model_id) == RANDOM_INIT:
            import timm

            with torch.device("meta"):
                return timm.create_model(model_id.removeprefix("timm:"), pretrained=False)
        from transformers import AutoConfig, AutoModelForImageClassification

        config = AutoConfig.from_pretrained(
            model_id.removeprefix("hf-hub:"), revision=revision, trust_remote_code=trust_remote_code
        )
        with torch.device("meta"):
            return AutoModelForImageClassification.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as err:  # the check moves to the loaded model; loading then reports real errors
        logger.debug("No architecture for %s from its config alone: %s: %s", model_id, type(err).__name__, err)
        return None
