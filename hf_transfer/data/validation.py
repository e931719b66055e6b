"""The validation split a run holds out of its labelled training split, to choose between weights it has made
(``--model_ema``: the average or the raw weights; ``--wise_ft_alpha``: the interpolation) without looking at the
test split. Seeded and class-stratified, as the test hold-out of a dataset without a test split
(:mod:`hf_transfer.data.load`)."""

from __future__ import annotations

import logging

import datasets

from hf_transfer.data.columns import LABEL_COLUMN
from hf_transfer.errors import TransferConfigError

logger = logging.getLogger(__name__)

VALIDATION = "validation"


def hold_out_validation(dsd: datasets.DatasetDict, fraction: float, seed: int, role: str) -> datasets.DatasetDict:
    """``dsd`` with ``fraction`` of its ``train`` split moved into a ``validation`` split (stratified, seeded)."""
    train = dsd["train"]
    n_val = round(fraction * len(train))
    if n_val < 1 or len(train) - n_val < 1:
        raise TransferConfigError(
            f"validation_fraction={fraction}: the {role} training split has {len(train)} rows, too few to hold out a "
            "validation split and still train; use a larger dataset or another validation_fraction."
        )
    stratify = LABEL_COLUMN if isinstance(train.features.get(LABEL_COLUMN), datasets.ClassLabel) else None
    try:
        parts = train.train_test_split(test_size=n_val, seed=seed, stratify_by_column=stratify)
    except ValueError:  # too few rows of some class to stratify
        parts = train.train_test_split(test_size=n_val, seed=seed)
    logger.info("Holding out %d of the %s training rows as the validation split (seed %d).", n_val, role, seed)
    return datasets.DatasetDict({**dsd, "train": parts["train"], VALIDATION: parts["test"]})
