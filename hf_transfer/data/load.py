"""Load one domain from a dataset spec into a ``DatasetDict`` with ``train`` and ``test`` splits.

Hub ids go through ``datasets.load_dataset`` (so HF_ENDPOINT, HF_HUB_OFFLINE and the cache work
as users expect); local folders through ``load_from_disk`` / the parquet and imagefolder builders;
``builtin:`` names through the offline generator.

Every image of a loaded (not built-in) domain is decoded once before anything trains, so a file
that cannot be read is an error naming the dataset, split and row (and file) on both input paths,
not a crash in the middle of an epoch; ``skip_bad_images`` drops such rows instead and reports how
many. The result is cached per dataset fingerprint, so only the first run over a dataset pays.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os

import datasets
from PIL import Image

from hf_transfer.data.builtin import BUILTIN_DOMAINS, load_builtin
from hf_transfer.data.columns import IMAGE_COLUMN, LABEL_COLUMN, standardize_columns
from hf_transfer.data.spec import DatasetSpec, parse_dataset_spec
from hf_transfer.errors import TransferConfigError
from hf_transfer.runtime.cache import cache_path, write_atomic

logger = logging.getLogger(__name__)

TRAIN, TEST = "train", "test"
_TEST_ALIASES = ("test", "validation", "valid", "val", "eval")
#: what Pillow raises (directly or through datasets) for an image it cannot read: unknown format,
#: truncated data, missing file, broken header, decompression bomb
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
#: rows read per step by the image check
_CHECK_ROWS = 256
#: bad rows named in one error message
_SHOWN_ROWS = 5
#: bump when the check changes what it accepts: part of its cache key
CHECK_VERSION = "1"


def _load_local(spec: DatasetSpec) -> datasets.DatasetDict:
    path = spec.name
    if os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(os.path.join(path, "state.json"))
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


def _pick_splits(dsd: datasets.DatasetDict, spec: DatasetSpec) -> tuple[datasets.DatasetDict, str, str | None]:
    """The splits used, under their own names: ``(splits, train name, test name or None)``."""
    if spec.split is not None:
        if spec.split not in dsd:
            raise TransferConfigError(f"Dataset {spec}: no split {spec.split!r}; splits are {sorted(dsd)}.")
        return datasets.DatasetDict({spec.split: dsd[spec.split]}), spec.split, None  # held out below
    test_name = next((s for s in _TEST_ALIASES if s in dsd), None)
    train_name = TRAIN if TRAIN in dsd else next((s for s in dsd if s != test_name), None)
    if train_name is None:
        raise TransferConfigError(f"Dataset {spec}: no training split; splits are {sorted(dsd)}.")
    names = [train_name] + ([test_name] if test_name is not None else [])
    return datasets.DatasetDict({name: dsd[name] for name in names}), train_name, test_name


def _train_test(
    dsd: datasets.DatasetDict, spec: DatasetSpec, train_name: str, test_name: str | None, test_size: float, seed: int
) -> datasets.DatasetDict:
    """``train`` and ``test``; one split is divided (stratified, seeded) when there is no test split."""
    if test_name is not None:
        return datasets.DatasetDict({TRAIN: dsd[train_name], TEST: dsd[test_name]})
    train = dsd[train_name]
    stratify = (
        LABEL_COLUMN
        if LABEL_COLUMN in train.features and isinstance(train.features[LABEL_COLUMN], datasets.ClassLabel)
        else None
    )
    logger.warning(
        "Dataset %s has no test split: holding out %.0f%% of %r (seed %d).", spec, 100 * test_size, train_name, seed
    )
    try:
        parts = train.train_test_split(test_size=test_size, seed=seed, stratify_by_column=stratify)
    except ValueError:  # too few rows of some class to stratify
        parts = train.train_test_split(test_size=test_size, seed=seed)
    return datasets.DatasetDict({TRAIN: parts["train"], TEST: parts["test"]})


def _image_problem(cell: dict) -> str | None:
    """Why an undecoded image cell (``{"bytes", "path"}``) cannot be read, or None when it can."""
    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell.get("path")
    if source is None:
        return "the cell has neither bytes nor a path"
    try:
        with Image.open(source) as img:
            img.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, which still reads every coded block
            img.load()
    except IMAGE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


def _bad_rows(ds: datasets.Dataset) -> dict[int, str]:
    """``{row: problem}`` for the rows of ``ds`` whose image cannot be decoded, cached by fingerprint."""
    record = cache_path("checked") / f"images-{CHECK_VERSION}-{ds._fingerprint}.json"
    if record.exists():
        return {int(k): v for k, v in json.loads(record.read_text()).items()}
    cells = ds.select_columns([IMAGE_COLUMN]).cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
    bad = {}
    for start in range(0, len(cells), _CHECK_ROWS):
        for k, cell in enumerate(cells[start : start + _CHECK_ROWS][IMAGE_COLUMN]):
            problem = _image_problem(cell)
            if problem is not None:
                path = cell.get("path")
                bad[start + k] = f"{problem} (file {path})" if path else problem
    write_atomic(record, json.dumps(bad))
    return bad


def check_images(
    dsd: datasets.DatasetDict, where: str, skip: bool = False, skipped: dict[str, int] | None = None
) -> datasets.DatasetDict:
    """Decode every image once, so a bad one is met before training, not in the middle of it.

    A bad one is an error naming ``where``, the split and the row; with ``skip`` its row is dropped, with one
    warning, and ``skipped[split]`` counts them."""
    out = {}
    for split, ds in dsd.items():
        bad = _bad_rows(ds)
        if bad and not skip:
            shown = "; ".join(f"row {i}: {why}" for i, why in list(bad.items())[:_SHOWN_ROWS])
            more = f" (and {len(bad) - _SHOWN_ROWS} more)" if len(bad) > _SHOWN_ROWS else ""
            raise TransferConfigError(
                f"{where}, split {split!r}: {len(bad)} image(s) cannot be decoded: {shown}{more}. Fix or remove "
                "them, or pass --skip_bad_images true to drop those rows."
            )
        if bad:
            logger.warning(
                "%s, split %r: dropped %d image(s) that cannot be decoded (rows %s).",
                where,
                split,
                len(bad),
                sorted(bad)[: _SHOWN_ROWS * 4],
            )
            ds = ds.select([i for i in range(len(ds)) if i not in bad])
        if skipped is not None:
            skipped[split] = len(bad)
        out[split] = ds
    return datasets.DatasetDict(out)


def load_domain(
    spec: str | DatasetSpec,
    image_column: str | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
    test_size: float = 0.2,
    seed: int = 0,
    cache_dir: str | None = None,
    skip_bad_images: bool = False,
    skipped: dict[str, int] | None = None,
    label_names_column: str | None = None,
) -> datasets.DatasetDict:
    """Load a domain: ``train`` and ``test`` splits with the columns ``image`` and ``label``.

    ``image`` stays in the file's mode (input paths convert it with :func:`hf_transfer.data.images.to_rgb`).

    Images that cannot be decoded are an error, or dropped with ``skip_bad_images`` (see the module
    doc); ``skipped``, when given, receives the number dropped per split of the dataset as stored
    (before any hold-out split)."""
    spec = parse_dataset_spec(spec)
    raw = _raw_load(spec, cache_dir)
    if not isinstance(raw, datasets.DatasetDict) or not raw:
        raise TransferConfigError(f"Dataset {spec}: loaded nothing.")
    std = standardize_columns(raw, f"Dataset {spec}", image_column, label_column, require_labels, label_names_column)
    used, train_name, test_name = _pick_splits(std, spec)
    if spec.kind != "builtin":  # generated here, from known-good PNGs
        used = check_images(used, f"Dataset {spec}", skip_bad_images, skipped)
    out = _train_test(used, spec, train_name, test_name, test_size, seed)
    for split, ds in out.items():
        if len(ds) == 0:
            raise TransferConfigError(f"Dataset {spec}: split {split!r} is empty.")
    return out


def load_split(
    spec: str | DatasetSpec,
    split: str = TEST,
    image_column: str | None = None,
    label_column: str | None = None,
    seed: int = 42,
    cache_dir: str | None = None,
    skip_bad_images: bool = False,
) -> datasets.Dataset:
    """One labelled split to score (``hf-transfer evaluate``).

    ``test`` / ``train`` are the splits a training run on ``spec`` uses (:func:`load_domain`): a dataset
    without a test split gets the same seeded hold-out as a run with ``seed`` (the Trainer's default
    is 42). Any other name is that stored split, whole (e.g. ``validation`` beside a ``test`` split)."""
    spec = parse_dataset_spec(spec)
    if split in (TRAIN, TEST):
        domain = load_domain(
            spec, image_column, label_column, seed=seed, cache_dir=cache_dir, skip_bad_images=skip_bad_images
        )
        return domain[split]
    if spec.split is not None:
        raise TransferConfigError(
            f"Dataset {spec} already names its split ('#{spec.split}'); with --split use 'train' or 'test' "
            "(its parts), or drop '#...' from the spec."
        )
    raw = _raw_load(spec, cache_dir)
    if split not in raw:
        raise TransferConfigError(f"Dataset {spec}: no split {split!r}; splits are {sorted(raw)} (or train / test).")
    std = standardize_columns(
        datasets.DatasetDict({split: raw[split]}), f"Dataset {spec}", image_column, label_column, True
    )
    if spec.kind != "builtin":
        std = check_images(std, f"Dataset {spec}", skip_bad_images)
    if len(std[split]) == 0:
        raise TransferConfigError(f"Dataset {spec}: split {split!r} is empty.")
    return std[split]
