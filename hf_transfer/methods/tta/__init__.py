"""Test-time adaptation methods (``hf-transfer tta``): one small module per method, each registered by one
:func:`~hf_transfer.methods.tta.base.register_tta` call in the method registry (mode ``tta``).

A method adapts a trained classifier online, batch by batch over the target's test images, through the affine
parameters of its normalisation layers (:func:`~hf_transfer.methods.tta.base.norm_affine_parameters`); the loop
that feeds it is :mod:`hf_transfer.training.tta`. Every module of this package is imported here, so a new method is
one new file. This package imports nothing else from ``hf_transfer`` but the method registry and SDAT's SAM step.
"""

import importlib
import pkgutil

from hf_transfer.methods.tta.base import TTA_METHODS, TestTimeMethod, build_tta_method, register_tta

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["TTA_METHODS", "TestTimeMethod", "build_tta_method", "register_tta"]
