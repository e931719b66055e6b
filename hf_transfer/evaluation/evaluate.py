"""Score a classifier (``hf-transfer evaluate MODEL DATASET``) on a labelled dataset, label spaces aligned by name.

It is how a user checks a Hub classifier on their data before adapting it, how a finished run is re-scored
(the numbers equal the run's ``results.json``), and what a training run uses for the base model's "before"
row in its card (:func:`evaluate_base`).

MODEL: a Hub id (transformers-native or timm, ``--revision``), a run folder written by hf_transfer, or a
published repo. A folder (or repo) with ``config.json`` is a full model; one with ``adapter_config.json``
(and no ``config.json``) is a LoRA adapter, loaded with its head and merged
(:func:`hf_transfer.models.adapters.load_adapter_model`). DATASET: any dataset spec (builtin:..., a Hub
id, a local folder).

Label alignment (the rule, also in the README): the model's class names (``id2label``; timm's
``label_names``) and the dataset's are matched by name, normalised as training matches domains
(:func:`hf_transfer.data.class_names.class_key`: case, spaces, ``_``/``-``), never by id. A dataset with two
names of one class (``Cat`` and ``cat``) is refused, naming them, as training refuses it.

- Only rows whose class the model knows are scored; the others are excluded and counted per class.
- The prediction is the argmax over the shared classes only (a model class the dataset does not have
  cannot be predicted); ``unrestricted_accuracy`` also gives the argmax over all the model's classes.
- The reported classes are the shared ones, in the model's order (a run folder's are then the run's); a
  name the model repeats (ImageNet's two "crane" classes) is one class, predicted by either column.
- No shared class at all, or a model whose names are only ``LABEL_i``, is a one-line error.

Preprocessing is the model's own: a run folder's or adapter's recorded data config (what it was trained
and evaluated with), else the one :mod:`hf_transfer.models.backbones` derives; the images go through
training's eval path (``--input_path fast``: the decoded uint8 cache + the Trainer's on-device
normalisation; ``stock``: the PIL eval transform). Metrics are training's own
(:func:`hf_transfer.evaluation.metrics.classification_report`), in float32.

Outputs (``--output_dir``): ``evaluation.json``, ``confusion_matrix.json`` and ``confusion_matrix.png``
(the card's plot).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.label_match import _first, known_rows, match_labels, same_rows_metrics, score
from hf_transfer.evaluation.metrics import unscored_classes, unscored_message
from hf_transfer.evaluation.model_source import load_model, resolve_model
from hf_transfer.evaluation.predict import predict_logits, resolve_device
from hf_transfer.runtime.folder_lock import check_output_folder, lock_folder

if TYPE_CHECKING:
    from datasets import Dataset

    from hf_transfer.data.transforms import DataConfig

logger = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation.json"
CONFUSION_JSON = "confusion_matrix.json"
CONFUSION_PNG = "confusion_matrix.png"
OUTPUTS = (EVALUATION_JSON, CONFUSION_JSON, CONFUSION_PNG)
DEFAULT_SEED = 42  # the Trainer's: the hold-out a training run with default arguments makes


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Score the model ``args.model`` on a dataset split; returns what ``evaluation.json`` holds.

    Checks everything cheap first (spec, output folder, model config, split, label overlap), then loads the
    weights and scores; writes the outputs when ``args.output_dir`` is set."""
    from hf_transfer.data.kshot import subset
    from hf_transfer.data.load import load_split
    from hf_transfer.data.spec import parse_dataset_spec

    start = time.perf_counter()
    spec = parse_dataset_spec(args.dataset)
    if args.batch_size < 1:
        raise TransferConfigError(f"--batch_size must be >= 1, got {args.batch_size}.")
    if args.max_samples is not None and args.max_samples < 1:
        raise TransferConfigError(f"--max_samples must be >= 1, got {args.max_samples}.")
    check_output_folder(args.output_dir, "hf-transfer evaluate", OUTPUTS, overwrite=args.overwrite_output_dir)
    device = resolve_device(args.device)
    source = resolve_model(args.model, args.revision)
    seed = args.seed if args.seed is not None else (source.seed if source.seed is not None else DEFAULT_SEED)
    ds = load_split(
        spec,
        args.split,
        args.image_column,
        args.label_column,
        seed=seed,
        skip_bad_images=args.skip_bad_images,
    )
    ds = subset(ds, args.max_samples, seed)
    dataset_names = list(ds.features["label"].names)
    match = match_labels(args.model, source.label_names, spec.display_name, dataset_names)
    rows, excluded, lookup = known_rows(ds, match)
    if len(rows) == 0:
        raise TransferConfigError(
            f"{spec.display_name} split {args.split!r}: no row belongs to a class the model knows "
            f"({_first(match.names)})."
        )
    backbone = load_model(source)
    logits, labels = predict_logits(
        backbone,
        rows,
        batch_size=args.batch_size,
        device=device,
        input_path=args.input_path,
        decoded_cache_dir=args.decoded_cache_dir,
        num_workers=args.num_workers,
    )
    result: dict[str, Any] = {
        "model": args.model,
        "model_kind": source.kind,
        "revision": args.revision,
        "dataset": spec.display_name,
        "split": args.split,
        "max_samples": args.max_samples,
        "seed": seed,
        "num_rows": len(ds),
        "excluded_rows": excluded,
        "label_names": match.names,
        "model_only_classes": match.model_only,
        "dataset_only_classes": match.dataset_only,
        "metrics": score(logits, lookup[labels], match),
        "data_config": backbone.data_config.to_dict(),
        "input_path": args.input_path,
        "device": str(device),
        "seconds": round(time.perf_counter() - start, 3),
    }
    result["unscored_classes"] = unscored_classes(result["metrics"]["per_class_accuracy"], match.names)
    if result["unscored_classes"]:
        logger.warning(unscored_message(f"scored {args.split!r}", result["unscored_classes"], len(match.names)))
    if args.output_dir:
        write_outputs(result, args.output_dir)
    return result


def write_outputs(result: dict[str, Any], output_dir: str) -> list[str]:
    """Write ``result`` and its confusion matrix (JSON and PNG) into ``output_dir``; returns their paths."""
    from hf_transfer.evaluation.plots import confusion_matrix_png

    paths = [os.path.join(output_dir, name) for name in OUTPUTS]
    with lock_folder(output_dir, "hf-transfer evaluate"):  # never into a folder a run or push is writing
        with open(paths[0], "w") as f:
            json.dump(result, f, indent=1)
        m = result["metrics"]
        with open(paths[1], "w") as f:
            json.dump({"labels": result["label_names"], "matrix": m["confusion_matrix"]}, f, indent=1)
        title = f"{os.path.basename(str(result['model']).rstrip('/'))} on {result['dataset']} ({result['split']})"
        confusion_matrix_png(m["confusion_matrix"], result["label_names"], paths[2], title=title)
    from hf_transfer.evaluation.plot_text import label_note

    if note := label_note(result["label_names"]):  # names the figure cut or could not draw: said, as in a card
        logger.warning("%s: %s", CONFUSION_PNG, note)
    return paths


def evaluate_base(
    model_id: str,
    test_ds: Dataset,
    data_config: DataConfig,
    *,
    revision: str | None = None,
    after: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    **predict_kwargs: Any,
) -> dict[str, Any] | None:
    """The base checkpoint's own head on a run's target test rows: the card's "before" beside "after".

    None (nothing is added) when the base has no classifier whose class names overlap the target's: a
    random-init timm name, placeholder ``LABEL_i`` names, no shared name, or no classifier weights. The
    run's preprocessing (``data_config``) is used, so both rows see the same pixels (and the decoded cache
    of the test split is reused). ``after``: the run's target metrics; with them ``this_model_same_rows``
    gives the adapted model's numbers on exactly the rows the base was scored on."""
    from hf_transfer.models.backbones import checkpoint_label_names, load_backbone

    names = checkpoint_label_names(model_id, revision=revision, trust_remote_code=trust_remote_code)
    if not names:
        return None
    target_names = list(test_ds.features["label"].names)
    try:
        match = match_labels(model_id, names, "the target", target_names)
    except TransferConfigError as err:
        logger.info("No before/after row for the base model: %s", err)
        return None
    rows, excluded, lookup = known_rows(test_ds, match)
    if len(rows) == 0:
        return None
    backbone = load_backbone(model_id, names, revision=revision, trust_remote_code=trust_remote_code)
    if not backbone.head_pretrained:
        logger.info("No before/after row: %s holds no classifier weights.", model_id)
        return None
    backbone.data_config = data_config
    logits, labels = predict_logits(backbone, rows, **predict_kwargs)
    out: dict[str, Any] = {
        "model": model_id,
        "revision": revision,
        "label_names": match.names,
        "model_only_classes": match.model_only,
        "dataset_only_classes": match.dataset_only,
        "excluded_rows": excluded,
        "metrics": score(logits, lookup[labels], match),
    }
    per_class = out["metrics"]["per_class_accuracy"]
    out["per_class_accuracy_by_target_class"] = {
        n: per_class[lookup[i]] for i, n in enumerate(target_names) if lookup[i] >= 0
    }
    if after is not None and after.get("confusion_matrix"):
        known = [i for i in range(len(target_names)) if lookup[i] >= 0]
        out["this_model_same_rows"] = same_rows_metrics(after["confusion_matrix"], known)
    return out
