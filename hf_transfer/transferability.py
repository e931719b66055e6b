"""Public API of the transferability scores: ``from hf_transfer.transferability import logme, leep, nce,
hscore, sfda, knn_accuracy``. They live in :mod:`hf_transfer.evaluation.transferability` (the layer that
scores models); this name is the stable one to import from."""

from hf_transfer.evaluation.transferability import hscore, knn_accuracy, leep, logme, nce, sfda

__all__ = ["hscore", "knn_accuracy", "leep", "logme", "nce", "sfda"]
