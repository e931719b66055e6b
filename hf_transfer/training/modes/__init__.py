"""Transfer modes: ``feature``, ``domain``, ``task`` (registered on import)."""

from hf_transfer.training.modes import domain, feature, task  # noqa: F401  (registration)
from hf_transfer.training.modes.base import MODES, TransferData, TransferMode, TransferModel, get_mode, register_mode

__all__ = ["MODES", "TransferData", "TransferMode", "TransferModel", "get_mode", "register_mode"]
