"""Model cards that tell the transfer: what was adapted, from what, to what, how, and how much it helped.

A card is rendered from a run's ``results.json`` (plus, optionally, the ``results.json`` of the
source-only baseline and of a target-supervised upper bound) through huggingface_hub's
``ModelCard.from_template`` with a ``ModelCardData`` (``eval_results`` -> ``model-index``), never by
string-building YAML. The Jinja template lives in ``model_cards/model_card.md``, which the distribution
ships as the package ``hf_transfer._model_cards`` (read with ``importlib.resources``, so a wheel install
has it too).

Generated body sections sit between ``<!-- hf-transfer:begin NAME -->`` and
``<!-- hf-transfer:end NAME -->`` markers; :func:`merge_card` replaces only those when a card is
regenerated, so anything a user wrote outside them (and metadata keys hf-transfer does not set)
survives a re-push.

Entry points: :func:`render_card` (folder -> ``ModelCard``), :func:`write_card` (also writes the
PNG figures and ``README.md`` into the folder), :func:`merge_card`, :func:`validate_card`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hf_transfer.hub.card_domain import domain_gap_table, domain_option_lines, label_space_text
from hf_transfer.errors import TransferConfigError

logger = logging.getLogger(__name__)

TEMPLATE_PACKAGE = "hf_transfer._model_cards"  # model_cards/, mapped into the package by pyproject.toml
TEMPLATE = "model_card.md"
README = "README.md"
RESULTS_FILE = "results.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"
CONFIG_FILE = "train_config.yaml"
EXAMPLES_DIR = "examples"
REFERENCE_PREDICTIONS = "reference_predictions.json"
HUB = "https://huggingface.co"

BASELINE_CONFIG = "source-only-baseline"
_SECTION = re.compile(r"<!-- hf-transfer:begin (?P<name>[\w-]+) -->.*?<!-- hf-transfer:end (?P=name) -->\n?", re.DOTALL)

MODES = {
    "domain": ("Unsupervised domain adaptation",
               "Source images with labels and target images *without* labels are seen in training; the "
               "target labels are used only to evaluate.", "domain-adaptation"),
    "feature": ("Feature transfer (linear probe)",
                "The backbone is frozen; its features are computed once (cached) and a linear classifier is "
                "trained on the target labels.", "linear-probe"),
    "task": ("Task adaptation (fine-tuning)",
             "The backbone and a new classification head are trained on the target labels.", "fine-tuning"),
}
METHODS = {  # method -> (title, paper, one line)
    "source_only": ("Source only (no adaptation)", "", "Trained on the labelled source domain only: the baseline "
                                                     "every adaptation method is compared with."),
    "dann": ("DANN, domain-adversarial training", "https://arxiv.org/abs/1505.07818",
             "A domain discriminator behind a gradient-reversal layer makes source and target features "
             "indistinguishable."),
    "cdan": ("CDAN, conditional domain-adversarial training", "https://arxiv.org/abs/1705.10667",
             "The discriminator sees features conditioned on the class predictions."),
    "cdan_e": ("CDAN+E, entropy-weighted CDAN", "https://arxiv.org/abs/1705.10667",
               "CDAN with confident target samples weighted up."),
    "dan": ("DAN, multi-kernel MMD", "https://arxiv.org/abs/1502.02791",
            "A multi-kernel maximum mean discrepancy between source and target features is minimised."),
    "mmd": ("MK-MMD", "https://arxiv.org/abs/1502.02791",
            "A multi-kernel maximum mean discrepancy between source and target features is minimised."),
    "coral": ("Deep CORAL", "https://arxiv.org/abs/1607.01719",
              "Second-order statistics (feature covariances) of source and target are aligned."),
    "mcc": ("MCC, minimum class confusion", "https://arxiv.org/abs/1912.03699",
            "Confusion between classes in the target predictions is minimised."),
    "full": ("Full fine-tuning", "https://arxiv.org/abs/1411.1792", "Every layer is trained."),
    "partial": ("Partial fine-tuning", "https://arxiv.org/abs/1411.1792",
                "The listed early parameter groups stay frozen; the rest is trained."),
    "linear": ("Linear probe", "https://arxiv.org/abs/1805.08974",
               "Only the classification head is trained on frozen features."),
}


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def load_results(source: str | os.PathLike | dict | None) -> dict | None:
    """A results dict from a dict, a ``results.json`` path, or a run folder (None passes through)."""
    if source is None or isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No results.json at {str(source)!r} (expected a hf-transfer output folder).")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TransferConfigError(f"{path} is not valid JSON ({err}): it is not a results.json written by "
                                  "hf-transfer; re-run the training or restore the file.") from err
    if not isinstance(results, dict):
        raise TransferConfigError(f"{path} holds a JSON {type(results).__name__}, not the object of a results.json "
                                  "written by hf-transfer; re-run the training or restore the file.")
    return results


def _dataset(spec: str | None) -> dict | None:
    """kind (builtin | local | hub), display name, Hub id/config/revision of a dataset spec string."""
    if not spec:
        return None
    from hf_transfer.data.spec import parse_dataset_spec

    try:
        s = parse_dataset_spec(spec)
        kind, name, config, revision, split = s.kind, s.name, s.config, s.revision, s.split
        display = s.display_name
    except TransferConfigError:  # a local path of another machine
        kind, name, config, revision, split = "local", spec, None, None, None
        display = os.path.basename(spec.rstrip("/"))
    return {"kind": kind, "id": name if kind == "hub" else None, "config": config, "revision": revision,
            "split": split, "display": display}


def _enum(value: Any) -> Any:
    """``OptimizerNames.ADAMW_TORCH`` -> ``adamw_torch`` (``str()`` of an enum, as results.json stores it)."""
    if isinstance(value, str) and re.fullmatch(r"[A-Z]\w*\.[A-Z0-9_]+", value):
        return value.split(".", 1)[1].lower()
    return value


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _acc(results: dict | None, domain: str) -> float | None:
    if not results:
        return None
    return ((results.get("metrics") or {}).get(domain) or {}).get("accuracy")


def folder_library(folder: str | os.PathLike) -> dict:
    """What the exported folder is: ``{"library": transformers|peft, "timm": bool}``."""
    folder = Path(folder)
    config = {}
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
    peft = (folder / "adapter_config.json").is_file()
    return {"library": "peft" if peft else "transformers",
            "timm": config.get("model_type") == "timm_wrapper" or "TimmWrapper" in str(config.get("architectures")),
            "architecture": config.get("architecture") or (config.get("architectures") or [None])[0]}


def base_model_license(base_model: str | None, token: str | bool | None = None) -> str | None:
    """The ``license`` of the base model's card on the Hub (None when unknown or unreachable)."""
    if not base_model:
        return None
    try:
        from huggingface_hub import ModelCard

        data = ModelCard.load(base_model, token=token).data
        value = data.get("license")
        return value if isinstance(value, str) else None
    except Exception as err:  # no card, offline, gated...: the license is then simply not stated
        logger.info("No license found for base model %s (%s).", base_model, type(err).__name__)
        return None


def training_config(results: dict) -> tuple[dict, bool]:
    """(the arguments that reproduce the run, exact?). Uses ``results["arguments"]`` when the run
    stored them; otherwise rebuilds them from the recorded fields (then not guaranteed exact)."""
    if isinstance(results.get("arguments"), dict):
        return dict(results["arguments"]), True
    hp = results.get("hyperparameters") or {}
    dc = results.get("data_config") or {}
    cfg: dict[str, Any] = {"mode": results.get("mode"), "method": results.get("method"),
                           "backbone": results.get("backbone"), "backbone_revision": results.get("backbone_revision"),
                           "source": results.get("source"), "target": results.get("target"),
                           "method_args": results.get("method_args") or None}
    if results.get("mode") == "domain":
        cfg["trade_off"] = results.get("trade_off")
        cfg["adabn"] = results.get("adabn") or None
    if results.get("frozen_groups") and results.get("mode") == "task" and results.get("method") == "partial":
        cfg["freeze"] = ",".join(results["frozen_groups"])
    if dc.get("input_size"):
        cfg["image_size"] = int(dc["input_size"][-1])
    cfg["crop_pct"] = dc.get("crop_pct")
    cfg["augment"] = results.get("augment")
    cfg["seed"] = results.get("seed")
    for key in ("learning_rate", "backbone_lr_scale", "per_device_train_batch_size", "max_steps", "weight_decay",
                "optim", "lr_scheduler_type", "warmup_steps"):
        if hp.get(key) is not None:
            cfg[key] = _enum(hp[key])
    if hp.get("max_steps") in (None, -1, 0) and hp.get("num_train_epochs") is not None:
        cfg["num_train_epochs"] = hp["num_train_epochs"]
    return {k: v for k, v in cfg.items() if v is not None}, False


# ------------------------------------------------------------------------------------------------
# metadata
# ------------------------------------------------------------------------------------------------
def eval_results(results: dict, baseline: dict | None = None) -> list:
    """``EvalResult``s per domain and split (test) for this model and, when known, the source-only baseline."""
    from huggingface_hub import EvalResult

    out = []
    for label, res, config in (("", results, None), (" (source-only baseline)", baseline, BASELINE_CONFIG)):
        if not res:
            continue
        for domain in ("target", "source"):
            m = (res.get("metrics") or {}).get(domain)
            spec = _dataset(results.get(domain))
            if not m or spec is None:
                continue
            common = dict(task_type="image-classification", task_name="Image Classification",
                          dataset_type=spec["id"] or spec["display"], dataset_name=f"{spec['display']} ({domain})",
                          dataset_split="test", dataset_config=spec["config"], dataset_revision=spec["revision"])
            out.append(EvalResult(metric_type="accuracy", metric_value=round(float(m["accuracy"]), 4),
                                  metric_name=f"Accuracy{label}", metric_config=config, **common))
            if m.get("macro_f1") is not None:
                out.append(EvalResult(metric_type="f1", metric_value=round(float(m["macro_f1"]), 4),
                                      metric_name=f"Macro F1{label}", metric_config=config or "macro",
                                      metric_args={"average": "macro"}, **common))
    return out


def card_data(results: dict, repo_id: str, *, folder: str | os.PathLike | None = None, baseline: dict | None = None,
              license: str | None = None, revision: str | None = None, endpoint: str | None = None):
    """The ``ModelCardData`` of a run (metadata only)."""
    from huggingface_hub import ModelCardData

    lib = folder_library(folder) if folder else {"library": "transformers", "timm": False}
    mode, method = results.get("mode"), results.get("method")
    tags = ["hf-transfer", "transfer-learning", "image-classification", f"transfer-mode-{mode}", MODES.get(mode, ("", "", mode))[2]]
    if method:
        tags.append(str(method).replace("_", "-"))
    if lib["timm"]:
        tags.append("timm")
    if lib["library"] == "peft":
        tags.append("lora")
    hub_datasets = [d["id"] for d in (_dataset(results.get("source")), _dataset(results.get("target"))) if d and d["id"]]
    base = results.get("base_model")
    extra: dict[str, Any] = {}
    if base:
        extra["base_model_relation"] = "adapter" if lib["library"] == "peft" else "finetune"
    widget = []
    if folder:
        rev = revision or "main"
        endpoint = (endpoint or HUB).rstrip("/")
        for row in _reference_rows(folder):
            widget.append({"src": f"{endpoint}/{repo_id}/resolve/{rev}/{row['file']}", "example_title": row["label"]})
    if widget:
        extra["widget"] = widget
    return ModelCardData(
        library_name=lib["library"], pipeline_tag="image-classification", base_model=base or None,
        datasets=list(dict.fromkeys(hub_datasets)) or None, license=license, tags=list(dict.fromkeys(t for t in tags if t)),
        metrics=["accuracy", "f1"], model_name=repo_id.split("/")[-1], eval_results=eval_results(results, baseline) or None,
        **extra,
    )


def _reference_rows(folder) -> list[dict]:
    path = Path(folder) / REFERENCE_PREDICTIONS
    return json.loads(path.read_text()) if path.is_file() else []


# ------------------------------------------------------------------------------------------------
# body
# ------------------------------------------------------------------------------------------------
def _backbone_text(results: dict, is_timm: bool) -> str:
    backbone, base = results.get("backbone") or "?", results.get("base_model")
    kind = "timm" if is_timm else "transformers"
    if base:
        rev = f" (revision `{results['backbone_revision']}`)" if results.get("backbone_revision") else ""
        return f"[`{base}`]({HUB}/{base}){rev} from the Hub ({kind}), with a new classification head."
    if os.path.isabs(backbone) or os.sep in backbone or os.path.isdir(backbone):
        return (f"a local model folder `{os.path.basename(backbone.rstrip(os.sep))}` ({kind}); it is not on the Hub, "
                "so no `base_model` is declared in the metadata.")
    return (f"the `{backbone}` architecture ({kind}) with **random initialisation** (no pretrained weights), so no "
            "`base_model` is declared in the metadata.")


def _summary(results: dict, baseline: dict | None, upper: dict | None, backbone_text: str) -> str:
    mode, method = results.get("mode"), results.get("method")
    src = _dataset(results.get("source"))
    tgt = _dataset(results.get("target"))
    method_title = METHODS.get(method, (str(method),))[0]
    t = f"**{tgt['display']}**" if tgt else "the target data"
    s = f"**{src['display']}**" if src else None
    base = backbone_text.split(" from the Hub")[0].split(" (")[0] if results.get("base_model") else \
        f"`{os.path.basename(str(results.get('backbone', '?')).rstrip(os.sep))}`"
    if mode == "domain":
        what = (f"This model adapts a {base} image classifier from {s} (labelled source) to {t} (unlabelled target) "
                f"with {method_title}.")
    elif mode == "feature":
        what = f"This model is a linear probe on the frozen features of {base}, trained on the labels of {t}."
    else:
        what = f"This model fine-tunes {base} on {t} ({method_title.lower()})."
    acc = _acc(results, "target")
    parts = [what]
    if acc is not None:
        n = ((results.get("metrics") or {}).get("target") or {}).get("num_samples")
        parts.append(f"On the target test set{f' ({n} images)' if n else ''} it reaches {_pct(acc)} accuracy")
        b = _acc(baseline, "target")
        if method == "source_only":
            parts[-1] += " - this *is* the source-only baseline that adapted models are compared with."
        elif b is not None:
            gain = 100 * (acc - b)
            word = "better" if gain >= 0 else "worse"
            parts[-1] += f", {abs(gain):.1f} points {word} than the source-only baseline ({_pct(b)})"
            u = _acc(upper, "target")
            if u is None:
                parts[-1] += "."
            elif u >= acc:
                parts[-1] += f", and {100 * (u - acc):.1f} points below a model trained on the target labels ({_pct(u)})."
            else:
                parts[-1] += f", and even above a model trained on the target labels ({_pct(u)})."
        else:
            parts[-1] += " (no source-only baseline was given to compare with)."
        sa = _acc(results, "source")
        if sa is not None and mode == "domain":
            parts.append(f"Source test accuracy: {_pct(sa)}.")
    return " ".join(parts)


def _alignment_text(results: dict) -> str:
    al = results.get("label_alignment")
    names = results.get("label_names") or []
    if not al:
        return f"{len(names)} classes: {', '.join(f'`{n}`' for n in names)}."
    lines = [f"Label spaces were aligned by class name with policy `{al.get('policy')}` "
             f"({al.get('setting', '').replace('-', ' ')}): {len(al.get('shared') or names)} shared classes "
             f"({', '.join(f'`{n}`' for n in (al.get('shared') or names))})."]
    if al.get("source_only"):
        fate = "kept in the label space" if al.get("policy") == "partial" else "dropped"
        lines.append(f"Classes only in the source, {fate}: {', '.join(f'`{n}`' for n in al['source_only'])}.")
    if al.get("target_only"):
        lines.append(f"Classes only in the target, dropped: {', '.join(f'`{n}`' for n in al['target_only'])}.")
    dropped = {d: v for d, v in (al.get("dropped_rows") or {}).items() if any((v or {}).values())}
    for domain, per_split in dropped.items():
        lines.append(f"Rows dropped from the {domain} domain: " +
                     ", ".join(f"{k} {v}" for k, v in per_split.items() if v) + ".")
    if not al.get("source_only") and not al.get("target_only"):
        lines.append("No class was dropped.")
    partial = label_space_text(results)
    return " ".join(lines) + (f"\n\n{partial}" if partial else "")


def _ci(acc: float, n: int | None) -> str:
    if not n:
        return ""
    half = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / n)
    return f" (+-{100 * half:.1f})"


def _results_tables(results: dict, baseline: dict | None, upper: dict | None) -> dict:
    method = results.get("method")
    domains = [d for d in ("target", "source") if d in (results.get("metrics") or {})]
    columns = []
    for d in domains:
        columns += [f"{d} test accuracy", f"{d} macro-F1"]
    rows = []
    entries = [(f"**this model** ({METHODS.get(method, (method,))[0]})", results)]
    if baseline and method != "source_only":
        entries.append(("source-only baseline", baseline))
    if upper:
        entries.append(("upper bound: trained on target labels", upper))
    for name, res in entries:
        values = []
        for d in domains:
            m = (res.get("metrics") or {}).get(d)
            values += ["-", "-"] if not m else [f"{_pct(m['accuracy'])}{_ci(m['accuracy'], m.get('num_samples'))}",
                                                f"{100 * m['macro_f1']:.1f}" if m.get("macro_f1") is not None else "-"]
        rows.append({"name": name, "values": values})
    labels = results.get("label_names") or []
    pc_cols, pc_rows = [], []
    sources = [("target (this model)", results, "target")]
    if baseline and method != "source_only":
        sources.append(("target (baseline)", baseline, "target"))
    if "source" in domains:
        sources.append(("source (this model)", results, "source"))
    sources = [s for s in sources if ((s[1].get("metrics") or {}).get(s[2]) or {}).get("per_class_accuracy") is not None]
    pc_cols = [s[0] for s in sources]
    for i, lab in enumerate(labels):
        vals = []
        for _, res, d in sources:
            pca = res["metrics"][d]["per_class_accuracy"]
            v = pca.get(lab) if isinstance(pca, dict) else (pca[i] if i < len(pca) else None)
            vals.append(_pct(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "-")
        pc_rows.append({"name": lab, "values": vals})
    return {"result_columns": columns, "results_table": rows, "per_class_columns": pc_cols, "per_class_table": pc_rows}


def _limitations(results: dict, baseline: dict | None, is_random_init: bool) -> list[str]:
    mode = results.get("mode")
    out = []
    tm = (results.get("metrics") or {}).get("target") or {}
    if tm.get("num_samples"):
        out.append(f"The numbers above come from {tm['num_samples']} target test images; the +- column is a 95% "
                   "binomial interval, so small differences between rows may not be meaningful.")
    out.append(f"The model only knows the {len(results.get('label_names') or [])} classes listed above; any other "
               "image is still assigned to one of them.")
    if mode == "domain":
        out.append("No target labels were used for training, and none for choosing hyper-parameters by this run; "
                   "adaptation can still hurt some classes (compare the per-class table with the baseline).")
    if baseline is None and results.get("method") != "source_only" and mode == "domain":
        out.append("No source-only baseline was attached to this card, so the gain from adaptation is not shown.")
    if is_random_init:
        out.append("The backbone started from random weights, not from a large-scale pretrained model: expect it to "
                   "transfer poorly beyond these domains.")
    dc = results.get("data_config") or {}
    if dc.get("input_size"):
        out.append(f"Only evaluated at {dc['input_size'][-1]}x{dc['input_size'][-1]} input resolution.")
    return out


def _adapter_usage(adapter: dict) -> dict:
    """Template variables for the stock-library code that loads a PEFT adapter repo (see adapters.py)."""
    from hf_transfer.models.adapters import stock_loading

    loading = stock_loading(adapter)
    processor = loading["processor"] or {"class": "AutoImageProcessor", "kwargs": {}}
    base_revision = adapter.get("base_revision")
    return {
        "adapter_base": adapter.get("base_model_name_or_path"), "adapter_merged": adapter.get("merged"),
        "adapter_needs_label_kwargs": loading["needs_label_kwargs"],
        "adapter_processor_class": processor["class"],
        "adapter_processor_kwargs": "".join(f", {k}={v!r}" for k, v in processor["kwargs"].items()),
        "adapter_base_revision_kwarg": f', revision="{base_revision}"' if base_revision else "",
    }


def render_card(folder: str | os.PathLike, repo_id: str, *, results: dict | None = None,
                baseline_results: str | os.PathLike | dict | None = None,
                upper_bound_results: str | os.PathLike | dict | None = None,
                license: str | None = None, revision: str | None = None, endpoint: str | None = None,
                template_path: str | os.PathLike | None = None, figures: bool = True):
    """Render the card of the run in ``folder`` as it would be pushed to ``repo_id`` (nothing written).

    ``figures``: reference ``confusion_matrix.png``/``training_curves.png`` (see :func:`write_figures`).
    """
    from huggingface_hub import ModelCard

    folder = Path(folder)
    results = load_results(results if results is not None else folder)
    baseline = load_results(baseline_results)
    upper = load_results(upper_bound_results)
    lib = folder_library(folder)
    data = card_data(results, repo_id, folder=folder, baseline=baseline, license=license, revision=revision,
                     endpoint=endpoint)
    mode, method = results.get("mode"), results.get("method")
    backbone_text = _backbone_text(results, lib["timm"])
    src, tgt = _dataset(results.get("source")), _dataset(results.get("target"))
    metrics = results.get("metrics") or {}

    def link(d):
        if d is None:
            return "-"
        if d["id"]:
            return f"[{d['display']}]({HUB}/datasets/{d['id']})"
        return f"`{d['display']}`" + (" (built into hf-transfer)" if d["kind"] == "builtin" else " (local)")

    datasets_table = []
    if src:
        datasets_table.append({"role": "source", "link": link(src),
                               "labels": "yes" if mode != "feature" and mode != "task" else "no (not used)",
                               "num_test": (metrics.get("source") or {}).get("num_samples", "-")})
    datasets_table.append({"role": "target", "link": link(tgt),
                           "labels": "no (evaluation only)" if mode == "domain" else "yes",
                           "num_test": (metrics.get("target") or {}).get("num_samples", "-")})
    if mode in ("feature", "task") and src:
        datasets_table[0]["labels"] = "only through the backbone" if results.get("base_model") is None else "no"

    hp = results.get("hyperparameters") or {}
    hyper = [(k, _enum(v)) for k, v in sorted(hp.items()) if v is not None]
    hyper.append(("seed", results.get("seed")))
    if results.get("train_runtime_s") is not None:
        hyper.append(("train runtime (s)", results.get("train_runtime_s")))
    if results.get("train_loss") is not None:
        hyper.append(("final train loss (mean)", round(float(results["train_loss"]), 4)))
    config, exact = training_config(results)
    config.setdefault("output_dir", f"outputs/{repo_id.split('/')[-1]}")
    dc = results.get("data_config") or {}
    size = (dc.get("input_size") or [3, "?", "?"])[-1]
    rev_kwarg = f', revision="{revision}"' if revision else ""
    examples = _reference_rows(folder)
    has_cm = figures and "confusion_matrix" in (metrics.get("target") or {})
    from hf_transfer.hub.plots import curve_series

    has_curves = figures and bool(curve_series(results.get("log_history") or []))
    u_acc, b_acc = _acc(upper, "target"), _acc(baseline, "target")
    note = []
    if b_acc is None and method != "source_only" and mode == "domain":
        note.append("No source-only baseline was given for this card.")
    if u_acc is None:
        note.append("No target-supervised upper bound was given for this card.")
    kwargs = dict(
        repo_id=repo_id, model_name=repo_id.split("/")[-1],
        summary=_summary(results, baseline, upper, backbone_text),
        mode=mode, mode_title=MODES.get(mode, (mode, ""))[0], mode_text=MODES.get(mode, ("", ""))[1],
        method=method, method_title=METHODS.get(method, (method,))[0],
        method_paper=(results.get("paper") if mode == "domain" else None) or METHODS.get(method, ("", ""))[1] or _loss_paper(method),
        method_text=METHODS.get(method, ("", "", ""))[2],
        method_args=results.get("method_args") or {}, trade_off=results.get("trade_off") if mode == "domain" else None,
        adabn=results.get("adabn"), domain_options=domain_option_lines(results), frozen_groups=results.get("frozen_groups") or [],
        backbone_text=backbone_text, datasets_table=datasets_table, alignment_text=_alignment_text(results),
        image_size=size, crop_pct=dc.get("crop_pct"), interpolation=dc.get("interpolation"),
        mean=dc.get("mean"), std=dc.get("std"), augment=results.get("augment"),
        hyperparameters=hyper,
        results_intro=("Accuracy on the held-out test split of each domain (the +- is a 95% binomial interval); "
                       "macro-F1 in points."),
        results_note=" ".join(note), confusion_png=CONFUSION_PNG if has_cm else None,
        curves_png=CURVES_PNG if has_curves else None,
        **_results_tables(results, baseline, upper),
        **dict(zip(("domain_gap_rows", "domain_gap_intro"), domain_gap_table(results))),
        is_timm=lib["timm"], is_peft=lib["library"] == "peft",
        **_adapter_usage(results.get("adapter") or {}),
        revision_kwarg=rev_kwarg, timm_revision=f"@{revision}" if revision else "",
        example_file=examples[0]["file"] if examples else f"{EXAMPLES_DIR}/0.png",
        limitations=_limitations(results, baseline, results.get("base_model") is None and not os.path.isdir(
            str(results.get("backbone")))),
        reproduce_intro=("The exact arguments of this run (`train_config.yaml` in this repo):" if exact else
                         "The arguments recorded for this run (`train_config.yaml` in this repo; rebuilt from "
                         "`results.json`, so options left at their defaults are not listed):"),
        config_yaml=yaml.safe_dump(config, sort_keys=False, default_flow_style=False),
        config_file=CONFIG_FILE,
        push_command=f"hf-transfer push {config['output_dir']} {repo_id}" + (f" --revision {revision}" if revision else ""),
        versions=sorted((results.get("versions") or {}).items()),
    )
    template = Path(template_path).read_text(encoding="utf-8") if template_path is not None else template_text()
    return ModelCard.from_template(data, template_str=template, **kwargs)


def template_text() -> str:
    """The shipped card template, from the installed package (not from a checkout's folder)."""
    return resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE).read_text(encoding="utf-8")


def _loss_paper(method: str | None) -> str:
    try:
        from hf_transfer.methods.domain.registry import LOSSES

        return getattr(LOSSES.get(method), "paper", "") or ""
    except Exception:
        return ""


# ------------------------------------------------------------------------------------------------
# merge, validate, write
# ------------------------------------------------------------------------------------------------
def _sections(text: str) -> dict[str, str]:
    return {m.group("name"): m.group(0) for m in _SECTION.finditer(text)}


def merge_body(old: str, new: str) -> str:
    """Replace the generated sections of ``old`` with those of ``new``; keep everything else.

    A section of ``new`` missing from ``old`` is inserted after the generated section that precedes
    it in ``new`` (or appended); a generated section the new card no longer has is removed. A body
    without any marker (a card written by hand) is kept below the generated one.
    """
    new_sections = _sections(new)
    if not _sections(old):
        kept = old.strip()
        return new.rstrip() + ("\n\n" + kept + "\n" if kept else "\n")
    order = list(new_sections)
    out = _SECTION.sub(lambda m: new_sections.get(m.group("name"), ""), old)
    present = set(_sections(out))
    for i, name in enumerate(order):
        if name in present:
            continue
        prev = next((order[j] for j in range(i - 1, -1, -1) if order[j] in present), None)
        block = new_sections[name]
        if prev is None:
            first = _SECTION.search(out)
            out = out[:first.start()] + block + "\n" + out[first.start():] if first else out.rstrip() + "\n\n" + block
        else:
            m = re.search(re.escape(f"<!-- hf-transfer:end {prev} -->") + r"\n?", out)
            out = out[:m.end()] + "\n" + block + out[m.end():]
        present.add(name)
    return out


def merge_card(existing: str | None, generated):
    """The generated ``ModelCard`` merged into an existing README text (None: the generated card).

    Metadata: keys hf-transfer sets are replaced, other keys (e.g. ``language`` added by hand) kept.
    Body: see :func:`merge_body`.
    """
    from huggingface_hub import ModelCard, ModelCardData

    if not existing or not existing.strip():
        return generated
    try:
        old = ModelCard(existing, ignore_metadata_errors=True)
        old_data = old.data.to_dict()
        old_text = old.text
    except Exception:  # unparsable metadata: keep the body, regenerate the metadata
        old_data, old_text = {}, re.sub(r"\A---\n.*?\n---\n", "", existing, flags=re.DOTALL)
    data = {**old_data, **generated.data.to_dict()}
    merged = ModelCard(str(generated))
    merged.data = ModelCardData(**data)
    merged.text = merge_body(old_text, generated.text)
    return merged


def validate_card(text: str, expected=None) -> list:
    """Offline checks: the metadata parses and ``model-index`` round-trips; returns the eval results.

    Raises ``ValueError`` naming the problem.
    """
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import (
        eval_results_to_model_index,
        model_index_to_eval_results,
    )

    card = ModelCard(text)  # raises on invalid YAML
    raw = yaml.safe_load(re.match(r"\A---\n(.*?)\n---\n", text, re.DOTALL).group(1))
    for key in ("library_name", "pipeline_tag"):
        if not isinstance(raw.get(key), str):
            raise ValueError(f"model card metadata: {key!r} must be a string, got {raw.get(key)!r}")
    if "model-index" not in raw:
        return []
    name, results = model_index_to_eval_results(raw["model-index"])
    if eval_results_to_model_index(name, results) != raw["model-index"]:
        raise ValueError("model card metadata: model-index does not round-trip through EvalResult")
    if card.data.eval_results != results:
        raise ValueError("model card metadata: ModelCardData parses model-index differently")
    if expected is not None and results != expected:
        raise ValueError("model card metadata: model-index differs from the results it was rendered from")
    return results


def write_figures(folder: str | os.PathLike, results: dict | None = None) -> list[str]:
    """Write ``confusion_matrix.png`` (target test) and ``training_curves.png`` into ``folder``."""
    from hf_transfer.hub.plots import confusion_matrix_png, training_curves_png

    folder = Path(folder)
    results = load_results(results if results is not None else folder)
    written = []
    target = (results.get("metrics") or {}).get("target") or {}
    if target.get("confusion_matrix"):
        title = f"Target test ({_dataset(results.get('target'))['display']}), {results.get('mode')}/{results.get('method')}"
        written.append(confusion_matrix_png(target["confusion_matrix"], results.get("label_names") or [],
                                            str(folder / CONFUSION_PNG), title=title))
    if results.get("log_history") and training_curves_png(results["log_history"], str(folder / CURVES_PNG)):
        written.append(str(folder / CURVES_PNG))
    return written


def write_card(folder: str | os.PathLike, repo_id: str, *, existing: str | None = None, **kwargs) -> str:
    """Figures + ``train_config.yaml`` + ``README.md`` (merged into ``existing``, else into the folder's
    README.md when there is one) written into ``folder``; returns the card text."""
    folder = Path(folder)
    results = load_results(kwargs.pop("results", None) or folder)
    write_figures(folder, results)
    config, _ = training_config(results)
    config.setdefault("output_dir", f"outputs/{repo_id.split('/')[-1]}")
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    card = render_card(folder, repo_id, results=results, **kwargs)
    if existing is None and (folder / README).is_file():
        existing = (folder / README).read_text()
    text = str(merge_card(existing, card))
    validate_card(text)
    (folder / README).write_text(text)
    return text


def render_example(run_dir: str | os.PathLike, out_dir: str | os.PathLike = "model_cards/examples",
                   repo_id: str = "hf-transfer/digits-printed-to-handwritten-dann",
                   baseline_results: str | os.PathLike | dict | None = None,
                   upper_bound_results: str | os.PathLike | dict | None = None) -> str:
    """Render the committed example card from a run folder (e.g. the demo's ``seed0/dann``):
    ``README.md`` and its figures go to ``out_dir``. Nothing is fetched from the network."""
    import shutil

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS_FILE, REFERENCE_PREDICTIONS, "config.json"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, out_dir / name)
    text = write_card(out_dir, repo_id, existing="", baseline_results=baseline_results,
                      upper_bound_results=upper_bound_results)
    for name in (RESULTS_FILE, REFERENCE_PREDICTIONS, "config.json"):
        (out_dir / name).unlink(missing_ok=True)
    return text
