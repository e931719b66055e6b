"""Domain-adaptation losses: one small module per method, one registry entry each.

Registered methods (``LOSSES``): ``source_only``, ``dann``, ``cdan`` (``entropy_conditioning=True``
for CDAN+E), ``dan`` (multi-kernel MMD), ``coral``, ``mcc``, ``entropy``, ``im``, ``pseudo_label``,
``cbst`` (class-balanced self-training), ``fixmatch`` (pseudo-labels from one view, loss on a strong view).
AdaBN is not a loss: see :func:`adapt_batchnorm`.

This package imports nothing else from ``hf_transfer``.
"""
from .base import TransferLoss
from .registry import LOSSES, build_loss, loss_kwargs, register_loss

# Import the method modules for their registration side effect (order = listing order).
from .source_only import SourceOnlyLoss
from .dann import DANNLoss
from .cdan import CDANLoss
from .mmd import MKMMDLoss, mk_mmd
from .coral import CORALLoss, coral
from .mcc import MCCLoss, mcc
from .entropy import EntropyLoss, InformationMaximizationLoss
from .self_training import ClassBalancedSelfTrainingLoss, FixMatchLoss, PseudoLabelLoss
from .adabn import adapt_batchnorm
from .discriminator import DomainDiscriminator
from .grl import GradientReverseFunction, GradientReverseLayer, grad_reverse, grl_coefficient
from .tradeoff import trade_off_weight

__all__ = [
    "LOSSES", "TransferLoss", "build_loss", "loss_kwargs", "register_loss",
    "SourceOnlyLoss", "DANNLoss", "CDANLoss", "MKMMDLoss", "CORALLoss", "MCCLoss", "EntropyLoss",
    "InformationMaximizationLoss", "PseudoLabelLoss", "ClassBalancedSelfTrainingLoss", "FixMatchLoss",
    "adapt_batchnorm", "DomainDiscriminator",
    "GradientReverseFunction", "GradientReverseLayer", "grad_reverse", "grl_coefficient", "mk_mmd",
    "coral", "mcc", "trade_off_weight",
]
