"""``hf-transfer evaluate MODEL DATASET``: score a classifier on a labelled dataset, label spaces aligned by name.

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
from dataclasses import dataclass

import numpy as np

from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.label_match import (  # noqa: F401 - the command's API
    LabelMatch,
    _first,
    known_rows,
    match_labels,
    same_rows_metrics,
    score,
)
from hf_transfer.evaluation.metrics import unscored_classes, unscored_message
from hf_transfer.evaluation.predict import predict_logits, resolve_device  # noqa: F401
from hf_transfer.runtime.folder_lock import LOCK_FILE, lock_folder

logger = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation.json"
CONFUSION_JSON = "confusion_matrix.json"
CONFUSION_PNG = "confusion_matrix.png"
OUTPUTS = (EVALUATION_JSON, CONFUSION_JSON, CONFUSION_PNG)
DEFAULT_SEED = 42  # the Trainer's: the hold-out a training run with default arguments makes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf-transfer evaluate",
        allow_abbrev=False,
        description="Score an image classifier (Hub id, run folder or published repo) on a labelled dataset, "
        "classes matched by name: accuracy, macro-F1, per-class accuracy, confusion matrix.",
    )
    p.add_argument("model", help="Hub id (org/name, timm/name), a run folder, or a published repo (full or LoRA)")
    p.add_argument("dataset", help="dataset spec: builtin:NAME, org/name[:config][@rev][#split], or a local folder")
    p.add_argument("--revision", default=None, help="the model's revision (branch, tag or commit) on the Hub")
    p.add_argument(
        "--split",
        default="test",
        help="test (default: the test split training evaluates on, or its seeded hold-out), train, "
        "or any other stored split name (scored whole)",
    )
    p.add_argument("--image_column", default=None, help="the image column (default: found by type)")
    p.add_argument("--label_column", default=None, help="the label column (default: found by type / name)")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the hold-out test split (datasets without one) and of --max_samples: a run folder's own seed, "
        "else 42 (the Trainer's default)",
    )
    p.add_argument("--max_samples", type=int, default=None, help="score a seeded subset (as max_eval_samples)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N, mps")
    p.add_argument("--input_path", default="fast", choices=("fast", "stock"), help="as in training (fast)")
    p.add_argument("--decoded_cache_dir", default=None, help="default: $HF_TRANSFER_CACHE/decoded")
    p.add_argument("--num_workers", type=int, default=0, help="data loader (and decoding) worker processes")
    p.add_argument("--output_dir", default=None, help="write evaluation.json and the confusion matrix (PNG + JSON)")
    p.add_argument("--overwrite_output_dir", action="store_true", help="write into a folder that holds files")
    p.add_argument("--skip_bad_images", action="store_true", help="drop rows whose image cannot be decoded")
    return p


# --- the model -------------------------------------------------------------------------------------------


@dataclass
class ModelSource:
    """Where a model comes from and what it knows, read before any weight is loaded."""

    model_id: str
    kind: str  # "full" | "adapter"
    label_names: list[str]
    revision: str | None = None
    folder: str | None = None  # a local (or downloaded) folder
    data_config: dict | None = None  # recorded by hf_transfer (results.json / hf_transfer_adapter.json)
    seed: int | None = None  # a run's seed (results.json): the hold-out and subset it was scored on


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _recorded(folder: str) -> dict:
    """What a run folder (or downloaded repo) written by hf_transfer records in results.json ({} if none)."""
    from hf_transfer.models.export import RESULTS_FILE

    return _read_json(os.path.join(folder, RESULTS_FILE)) or {}


def _adapter_source(model_id: str, folder: str, revision: str | None) -> ModelSource:
    from hf_transfer.models.adapters import ADAPTER_INFO

    info = _read_json(os.path.join(folder, ADAPTER_INFO))
    if info is None or not info.get("label_names"):
        raise TransferConfigError(
            f"{model_id!r} is a LoRA adapter without {ADAPTER_INFO} (not written by hf-transfer): merge it into "
            "its base and evaluate the merged folder."
        )
    seed = _recorded(folder).get("seed")
    return ModelSource(model_id, "adapter", list(info["label_names"]), revision, folder, info.get("data_config"), seed)


def _hub_file(repo: str, name: str, revision: str | None) -> str | None:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, name, revision=revision)
    except Exception:  # not there, no such repo, offline: the caller decides what that means
        return None


def resolve_model(model_id: str, revision: str | None = None) -> ModelSource:
    """What ``model_id`` is and its class names, from configs only (see the module doc)."""
    from hf_transfer.models.backbones import checkpoint_label_names

    if os.path.isdir(model_id):
        if revision is not None:
            raise TransferConfigError(f"--revision {revision!r} applies to Hub models; {model_id!r} is a local folder.")
        folder = os.path.abspath(model_id)
        if os.path.isfile(os.path.join(folder, "config.json")):
            names, run = checkpoint_label_names(folder), _recorded(folder)
            return ModelSource(model_id, "full", names, None, folder, run.get("data_config"), run.get("seed"))
        if os.path.isfile(os.path.join(folder, "adapter_config.json")):
            return _adapter_source(model_id, folder, None)
        raise TransferConfigError(
            f"Model folder {model_id!r} holds neither config.json (a full model) nor adapter_config.json (an adapter)."
        )
    try:
        names = checkpoint_label_names(model_id, revision=revision)
    except TransferConfigError as err:
        hub_id = model_id.removeprefix("hf-hub:")
        if "/" in hub_id and _hub_file(hub_id, "adapter_config.json", revision):  # a published adapter repo
            from huggingface_hub import snapshot_download

            return _adapter_source(model_id, snapshot_download(hub_id, revision=revision), revision)
        cause = err.__cause__ or err
        raise TransferConfigError(
            f"Could not load model {model_id!r} (revision={revision!r}): {type(cause).__name__}: "
            f"{_one_line(str(cause))} Give a Hub id (org/name, timm/name), a run folder or a published repo."
        ) from err
    if not names:
        raise TransferConfigError(
            f"{model_id!r} is a timm architecture name (random init): it has no trained classifier to evaluate; "
            "give a Hub id (timm/NAME) or a folder."
        )
    run = {}
    if "/" in model_id and not model_id.startswith("timm/"):  # a published hf-transfer repo records its run
        from hf_transfer.models.export import RESULTS_FILE

        path = _hub_file(model_id.removeprefix("hf-hub:"), RESULTS_FILE, revision)
        run = (_read_json(path) or {}) if path else {}
    return ModelSource(model_id, "full", names, revision, None, run.get("data_config"), run.get("seed"))


def load_model(source: ModelSource):
    """The :class:`~hf_transfer.models.backbones.Backbone` with the checkpoint's own head (and names)."""
    from hf_transfer.data.transforms import DataConfig
    from hf_transfer.models.backbones import Backbone, load_backbone

    if source.kind == "adapter":
        from hf_transfer.models.adapters import ADAPTER_INFO, load_adapter_model

        model = load_adapter_model(source.folder, merge=True).eval()
        info = _read_json(os.path.join(source.folder, ADAPTER_INFO)) or {}
        backbone = Backbone(
            model=model,
            model_id=source.model_id,
            library=info.get("library", "transformers"),
            data_config=DataConfig(),
            revision=source.revision,
            head_pretrained=True,
        )
    else:
        backbone = load_backbone(source.folder or source.model_id, source.label_names, revision=source.revision)
        if not backbone.head_pretrained:
            raise TransferConfigError(
                f"{source.model_id!r} holds no classifier weights for its {len(source.label_names)} classes "
                "(a feature backbone): there is nothing to evaluate."
            )
    if source.data_config:
        recorded = dict(source.data_config)
        recorded["input_size"] = tuple(recorded["input_size"])
        recorded["mean"], recorded["std"] = tuple(recorded["mean"]), tuple(recorded["std"])
        backbone.data_config = DataConfig(**recorded)
    backbone.model.eval()
    return backbone


# --- labels ----------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    """Messages of other libraries span lines; an error of this command is one line."""
    return " ".join(str(text).split())


# --- scoring ---------------------------------------------------------------------------------------------


# --- the base model's "before" row of a training run ----------------------------------------------------


def evaluate_base(
    model_id: str,
    test_ds,
    data_config,
    *,
    revision: str | None = None,
    after: dict | None = None,
    trust_remote_code: bool = False,
    **predict_kwargs,
) -> dict | None:
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
    out = {
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


# --- the command -----------------------------------------------------------------------------------------


def check_output_dir(output_dir: str | None, overwrite: bool) -> None:
    if output_dir is None:
        return
    if os.path.isfile(output_dir):
        raise TransferConfigError(f"--output_dir {output_dir!r} is a file; give a folder.")
    if os.path.isdir(output_dir):  # a folder a run is writing: refused now, not after the scoring
        lock_folder(output_dir, "hf-transfer evaluate", create=False).release()
    if os.path.isdir(output_dir) and set(os.listdir(output_dir)) - {LOCK_FILE} and not overwrite:
        raise TransferConfigError(
            f"--output_dir {output_dir!r} already holds files; pass --overwrite_output_dir to write "
            f"{', '.join(OUTPUTS)} there (other files are kept), or choose an empty folder."
        )


def evaluate(args) -> dict:
    """Check everything cheap first (spec, output folder, model config, split, label overlap), then load the
    weights and score; writes the outputs when ``args.output_dir`` is set."""
    from hf_transfer.data.kshot import subset
    from hf_transfer.data.load import load_split
    from hf_transfer.data.spec import parse_dataset_spec

    start = time.perf_counter()
    spec = parse_dataset_spec(args.dataset)
    if args.batch_size < 1:
        raise TransferConfigError(f"--batch_size must be >= 1, got {args.batch_size}.")
    if args.max_samples is not None and args.max_samples < 1:
        raise TransferConfigError(f"--max_samples must be >= 1, got {args.max_samples}.")
    check_output_dir(args.output_dir, args.overwrite_output_dir)
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
    result = {
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


def write_outputs(result: dict, output_dir: str) -> list[str]:
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


def format_summary(result: dict, max_classes: int = 20) -> str:
    """What was scored, accuracy and macro-F1, and per-class accuracy (the weakest ``max_classes`` when more)."""
    m = result["metrics"]
    excluded = sum(result["excluded_rows"].values())
    lines = [
        f"{result['model']} ({result['model_kind']} model) on {result['dataset']}, split {result['split']}: "
        f"{m['num_samples']} rows scored" + (f", {excluded} excluded (classes the model lacks)" if excluded else ""),
        f"classes matched by name: {len(result['label_names'])}"
        + (f"; model only: {_first(result['model_only_classes'])}" if result["model_only_classes"] else "")
        + (f"; dataset only: {_first(result['dataset_only_classes'])}" if result["dataset_only_classes"] else ""),
        f"accuracy {m['accuracy']:.4f}   macro-F1 {m['macro_f1']:.4f}"
        + (
            f"   (argmax over all {len(result['label_names']) + len(result['model_only_classes'])} model classes: "
            f"{m['unrestricted_accuracy']:.4f})"
            if result["model_only_classes"]
            else ""
        ),
    ]
    if result.get("unscored_classes"):
        lines.append(unscored_message("scored", result["unscored_classes"], len(result["label_names"])))
    lines.append("")
    support = np.asarray(m["confusion_matrix"]).sum(axis=1)
    rows = list(zip(result["label_names"], m["per_class_accuracy"], support, strict=True))
    if len(rows) > max_classes:  # a short table: the weakest classes (all of them are in evaluation.json)
        rows = sorted((r for r in rows if r[1] is not None), key=lambda r: r[1])[:max_classes]
        lines.append(f"the {len(rows)} classes with the lowest accuracy (of {len(result['label_names'])}):")
    width = max(len("class"), *(len(str(r[0])) for r in rows))
    lines.append(f"{'class'.ljust(width)}  accuracy  rows")
    lines.append(f"{'-' * width}  --------  ----")
    for name, acc, n in rows:
        lines.append(f"{str(name).ljust(width)}  {'-' if acc is None else f'{acc:.4f}':>8}  {int(n):>4}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        result = evaluate(args)
    except TransferConfigError as err:  # e.g. a datasets or Hub message quoted inside: keep the error one line
        raise TransferConfigError(_one_line(str(err))) from err
    print(format_summary(result))
    where = f"; wrote {', '.join(OUTPUTS)} to {args.output_dir}" if args.output_dir else ""
    print(f"Evaluated in {result['seconds']:.1f}s on {result['device']}{where}")
    return 0
