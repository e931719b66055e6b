"""Transfer modes: ``feature``, ``domain``, ``task`` (registered on import)."""

from .base import MODES, TransferData, TransferMode, TransferModel, get_mode, register_mode
from . import domain, feature, task  # noqa: F401  (registration)

__all__ = ["MODES", "TransferData", "TransferMode", "TransferModel", "get_mode", "register_mode"]
