"""Domain-adaptation losses: one small module per method, each registered by one ``register_loss`` call.

Every module of this package is imported here, so a new method is one new file (its registration
makes it known to the CLI, ``plan``, the card, the README table's test and the benchmark). Registered
methods: ``LOSSES`` (``hf-transfer plan`` or the README's method table lists them). AdaBN is not a
loss: see :func:`adapt_batchnorm`.

This package imports nothing else from ``hf_transfer`` but the method registry.
"""

import importlib
import pkgutil

from hf_transfer.methods.domain.base import AdversarialLoss, GRLOptions, TransferLoss
from hf_transfer.methods.domain.registry import LOSSES, build_loss, register_loss

# every method module, for its registration (source_only first: the baseline heads every listing)
for _module in ["source_only", *sorted(m.name for m in pkgutil.iter_modules(__path__))]:
    importlib.import_module(f"{__name__}.{_module}")

from hf_transfer.methods.domain.adabn import adapt_batchnorm  # noqa: E402
from hf_transfer.methods.domain.cdan import CDANLoss  # noqa: E402
from hf_transfer.methods.domain.coral import CORALLoss, coral  # noqa: E402
from hf_transfer.methods.domain.dann import DANNLoss  # noqa: E402
from hf_transfer.methods.domain.discriminator import DomainDiscriminator  # noqa: E402
from hf_transfer.methods.domain.entropy import EntropyLoss, InformationMaximizationLoss  # noqa: E402
from hf_transfer.methods.domain.grl import GradientReverseFunction, grad_reverse, grl_coefficient  # noqa: E402
from hf_transfer.methods.domain.mcc import MCCLoss, mcc  # noqa: E402
from hf_transfer.methods.domain.mmd import MKMMDLoss, mk_mmd  # noqa: E402
from hf_transfer.methods.domain.self_training import ClassBalancedSelfTrainingLoss, FixMatchLoss, PseudoLabelLoss  # noqa: E402
from hf_transfer.methods.domain.source_only import SourceOnlyLoss  # noqa: E402
from hf_transfer.methods.domain.tradeoff import trade_off_weight  # noqa: E402

__all__ = [
    "LOSSES",
    "AdversarialLoss",
    "GRLOptions",
    "TransferLoss",
    "build_loss",
    "register_loss",
    "SourceOnlyLoss",
    "DANNLoss",
    "CDANLoss",
    "MKMMDLoss",
    "CORALLoss",
    "MCCLoss",
    "EntropyLoss",
    "InformationMaximizationLoss",
    "PseudoLabelLoss",
    "ClassBalancedSelfTrainingLoss",
    "FixMatchLoss",
    "adapt_batchnorm",
    "DomainDiscriminator",
    "GradientReverseFunction",
    "grad_reverse",
    "grl_coefficient",
    "mk_mmd",
    "coral",
    "mcc",
    "trade_off_weight",
]
