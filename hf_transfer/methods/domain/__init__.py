"""Domain-adaptation losses: one small module per method, one registry entry each.

Registered methods (``LOSSES``): ``source_only``, ``dann``, ``cdan`` (``entropy_conditioning=True``
for CDAN+E), ``dan`` (multi-kernel MMD), ``coral``, ``mcc``, ``entropy``, ``im``, ``pseudo_label``,
``cbst`` (class-balanced self-training), ``fixmatch`` (pseudo-labels from one view, loss on a strong view).
AdaBN is not a loss: see :func:`adapt_batchnorm`.

This package imports nothing else from ``hf_transfer``.
"""
from hf_transfer.methods.domain.base import TransferLoss
from hf_transfer.methods.domain.registry import LOSSES, build_loss, loss_kwargs, register_loss

# Import the method modules for their registration side effect (order = listing order).
from hf_transfer.methods.domain.source_only import SourceOnlyLoss
from hf_transfer.methods.domain.dann import DANNLoss
from hf_transfer.methods.domain.cdan import CDANLoss
from hf_transfer.methods.domain.mmd import MKMMDLoss, mk_mmd
from hf_transfer.methods.domain.coral import CORALLoss, coral
from hf_transfer.methods.domain.mcc import MCCLoss, mcc
from hf_transfer.methods.domain.entropy import EntropyLoss, InformationMaximizationLoss
from hf_transfer.methods.domain.self_training import ClassBalancedSelfTrainingLoss, FixMatchLoss, PseudoLabelLoss
from hf_transfer.methods.domain.adabn import adapt_batchnorm
from hf_transfer.methods.domain.discriminator import DomainDiscriminator
from hf_transfer.methods.domain.grl import GradientReverseFunction, GradientReverseLayer, grad_reverse, grl_coefficient
from hf_transfer.methods.domain.tradeoff import trade_off_weight

__all__ = [
    "LOSSES", "TransferLoss", "build_loss", "loss_kwargs", "register_loss",
    "SourceOnlyLoss", "DANNLoss", "CDANLoss", "MKMMDLoss", "CORALLoss", "MCCLoss", "EntropyLoss",
    "InformationMaximizationLoss", "PseudoLabelLoss", "ClassBalancedSelfTrainingLoss", "FixMatchLoss",
    "adapt_batchnorm", "DomainDiscriminator",
    "GradientReverseFunction", "GradientReverseLayer", "grad_reverse", "grl_coefficient", "mk_mmd",
    "coral", "mcc", "trade_off_weight",
]
