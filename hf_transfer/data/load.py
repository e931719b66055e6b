"""Load one domain from a dataset spec into a ``DatasetDict`` with ``train`` and ``test`` splits.

Hub ids go through ``datasets.load_dataset`` (so HF_ENDPOINT, HF_HUB_OFFLINE and the cache work
as users expect); local folders through ``load_from_disk`` / the parquet and imagefolder builders;
``builtin:`` names through the offline generator.
"""

from __future__ import annotations

import glob
import logging
import os

import datasets

from ..errors import TransferConfigError
from .builtin import BUILTIN_DOMAINS, load_builtin
from .columns import LABEL_COLUMN, standardize_columns
from .spec import DatasetSpec, parse_dataset_spec

logger = logging.getLogger(__name__)

TRAIN, TEST = "train", "test"
_TEST_ALIASES = ("test", "validation", "valid", "val", "eval")


def _load_local(spec: DatasetSpec) -> datasets.DatasetDict:
    path = spec.name
    if os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "dataset_dict.json"))
        or os.path.exists(os.path.join(path, "state.json"))
    ):
        loaded = datasets.load_from_disk(path)
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({TRAIN: loaded})
    if os.path.isfile(path):
        if not path.endswith(".parquet"):
            raise TransferConfigError(f"Local dataset file {path!r}: only .parquet files are supported.")
        return datasets.load_dataset("parquet", data_files={TRAIN: path})
    if glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True):
        # datasets infers the splits from the file names (train-*.parquet, test-*.parquet, ...)
        return datasets.load_dataset("parquet", data_dir=path)
    try:
        return datasets.load_dataset("imagefolder", data_dir=path)
    except Exception as err:  # datasets raises several types for "no images here"
        raise TransferConfigError(
            f"Local dataset {path!r}: not a save_to_disk folder, no parquet files, and not an imagefolder "
            f"layout (class subfolders of images): {err}"
        ) from err


def _load_hub(spec: DatasetSpec) -> datasets.DatasetDict:
    try:
        loaded = datasets.load_dataset(spec.name, spec.config, revision=spec.revision)
    except Exception as err:
        raise TransferConfigError(
            f"Could not load Hub dataset {spec.name!r} (config={spec.config!r}, revision={spec.revision!r}): "
            f"{type(err).__name__}: {err}"
        ) from err
    return loaded


def _raw_load(spec: DatasetSpec, cache_dir: str | None) -> datasets.DatasetDict:
    if spec.kind == "builtin":
        if spec.name not in BUILTIN_DOMAINS:
            raise TransferConfigError(
                f"Unknown built-in domain {spec.name!r}; available: {', '.join(sorted(BUILTIN_DOMAINS))}."
            )
        return load_builtin(spec.name, cache_dir=cache_dir)
    if spec.kind == "local":
        return _load_local(spec)
    return _load_hub(spec)


def _train_test(dsd: datasets.DatasetDict, spec: DatasetSpec, test_size: float, seed: int) -> datasets.DatasetDict:
    """Pick the train/test splits; divide one split (stratified, seeded) when there is no test split."""
    if spec.split is not None:
        if spec.split not in dsd:
            raise TransferConfigError(f"Dataset {spec}: no split {spec.split!r}; splits are {sorted(dsd)}.")
        dsd = datasets.DatasetDict({TRAIN: dsd[spec.split]})
    test_name = next((s for s in _TEST_ALIASES if s in dsd), None)
    train_name = TRAIN if TRAIN in dsd else next((s for s in dsd if s != test_name), None)
    if train_name is None:
        raise TransferConfigError(f"Dataset {spec}: no training split; splits are {sorted(dsd)}.")
    if test_name is not None:
        return datasets.DatasetDict({TRAIN: dsd[train_name], TEST: dsd[test_name]})
    train = dsd[train_name]
    stratify = LABEL_COLUMN if LABEL_COLUMN in train.features and isinstance(
        train.features[LABEL_COLUMN], datasets.ClassLabel) else None
    logger.warning("Dataset %s has no test split: holding out %.0f%% of %r (seed %d).",
                   spec, 100 * test_size, train_name, seed)
    try:
        parts = train.train_test_split(test_size=test_size, seed=seed, stratify_by_column=stratify)
    except ValueError:  # too few rows of some class to stratify
        parts = train.train_test_split(test_size=test_size, seed=seed)
    return datasets.DatasetDict({TRAIN: parts["train"], TEST: parts["test"]})


def load_domain(
    spec: str | DatasetSpec,
    image_column: str | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
    test_size: float = 0.2,
    seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Load a domain: ``train`` and ``test`` splits with columns ``image`` (RGB) and ``label``."""
    spec = parse_dataset_spec(spec)
    raw = _raw_load(spec, cache_dir)
    if not isinstance(raw, datasets.DatasetDict) or not raw:
        raise TransferConfigError(f"Dataset {spec}: loaded nothing.")
    std = standardize_columns(raw, f"Dataset {spec}", image_column, label_column, require_labels)
    out = _train_test(std, spec, test_size, seed)
    for split, ds in out.items():
        if len(ds) == 0:
            raise TransferConfigError(f"Dataset {spec}: split {split!r} is empty.")
    return out
