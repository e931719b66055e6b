"""The card's body text, section by section: summary, data and label alignment, hyper-parameters and the
reproduce block (the results section and the limitations: :mod:`hf_transfer.hub.card_results`). Pure
functions of ``results.json`` (and the optional
baseline / upper-bound results); the method and mode wording comes in from :mod:`hf_transfer.hub.cards`,
the domain-adaptation wording from :mod:`hf_transfer.hub.card_domain`."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from hf_transfer.hub.card_domain import label_space_text
from hf_transfer.hub.card_inputs import (
    CONFIG_FILE,
    HUB,
    OUTPUT_DIR_PLACEHOLDER,
    REPO_ID_PLACEHOLDER,
    accuracy,
    dataset_info,
    enum_value,
    governing_schedule,
    pct,
    placeholders_in,
    run_config,
)
from hf_transfer.hub.card_provenance import base_run, chain_text, hub_origin, initialisation, link_text, provenance_of
from hf_transfer.hub.card_results import base_before, health_warnings, train_loss_text
from hf_transfer.methods.registry import is_baseline


def backbone_text(results: dict, is_timm: bool) -> str:
    """Where the backbone came from: a Hub model (linked), a local folder, or random initialisation."""
    backbone, base = results.get("backbone") or "?", results.get("base_model")
    kind = "timm" if is_timm else "transformers"
    if base:
        rev = f" (revision `{results['backbone_revision']}`)" if results.get("backbone_revision") else ""
        return f"[`{base}`]({HUB}/{base}){rev} from the Hub ({kind}), with a new classification head."
    previous = base_run(results)
    if previous is not None:
        origin = hub_origin(results)
        declared = (
            f"`base_model` in the metadata is the Hub model the chain started from, `{origin}`."
            if origin
            else "no link of the chain is on the Hub, so no `base_model` is declared in the metadata."
        )
        return (
            f"the local run folder `{previous['folder']}` ({kind}), an earlier hf-transfer run (its own origin, "
            f"data and mode are in the lineage above); it is not on the Hub, and {declared}"
        )
    if initialisation(results) == "local":
        return (
            f"a local model folder `{os.path.basename(backbone.rstrip('/' + os.sep))}` ({kind}) with no "
            "`results.json` (its history is unknown); it is not on the Hub, so no `base_model` is declared in the "
            "metadata."
        )
    return (
        f"the `{backbone}` architecture ({kind}) with **random initialisation** (no pretrained weights), so no "
        "`base_model` is declared in the metadata."
    )


def _candidate_name(backbone: str) -> str:
    """A candidate as the card names it: a local folder by its base name, anything else as given."""
    if os.path.isabs(backbone) or (os.sep in backbone.rstrip(os.sep) and os.path.isdir(backbone)):
        return os.path.basename(backbone.rstrip(os.sep)) + " (local)"
    return backbone


def why_backbone_vars(results: dict) -> dict:
    """Template variables of the "Why this backbone" section, from ``results["ranking"]``.

    A run started from a ``hf-transfer rank`` config has a ranking; a run without one gets empty rows (no
    section).
    """
    ranking = results.get("ranking")
    if not ranking:
        return dict(why_backbone_intro="", why_backbone_columns=[], why_backbone_rows=[])
    names = ranking.get("score_names") or []
    rank_by = ranking.get("rank_by")
    rows = []
    for i, c in enumerate(ranking.get("candidates") or [], 1):
        values = [("n/a" if c["scores"].get(s) is None else f"{c['scores'][s]:.4f}") for s in names]
        chosen = c["backbone"] == results.get("backbone")
        name = f"`{_candidate_name(c['backbone'])}`"
        rows.append({"rank": i, "name": f"**{name}** (this model)" if chosen else name, "values": values})
    n = len(rows)
    intro = (
        f"This backbone was chosen by `hf-transfer rank` before training: {n} candidates were scored on "
        f"{ranking.get('num_images')} training images of {ranking.get('target') or 'the target'} from one frozen "
        f"feature pass each, ranked by `{rank_by}` (higher = more transferable); this model's backbone was "
        f"number {ranking.get('position')} of {n}. LEEP and NCE need a candidate's own pretrained classifier "
        "(n/a without one); `knn` is leave-one-out k-NN accuracy. The scores predict, they do not measure: "
        "the results below are this model's."
    )
    return dict(why_backbone_intro=intro, why_backbone_columns=names, why_backbone_rows=rows)


def _before_text(results: dict) -> str:
    """The chain before this run in words: ``test_resnet (random init) -> source_only on builtin:digits-printed``."""
    chain = provenance_of(results)
    return " -> ".join(link_text(link) for link in chain)


def lineage(results: dict) -> str:
    """The card's lineage line: the whole chain up to this run.

    "" for a run straight from an origin that the backbone line already says (Hub model, random init).
    """
    return chain_text(results) if base_run(results) is not None else ""


def summary(results: dict, baseline: dict | None, upper: dict | None, backbone: str, method_title: str) -> str:
    """The opening paragraph: what was adapted from what to what, and how much it helped."""
    mode, method = results.get("mode"), results.get("method")
    src = dataset_info(results.get("source"))
    tgt = dataset_info(results.get("target"))
    method_title = str(method_title)
    t = f"**{tgt['display']}**" if tgt else "the target data"
    s = f"**{src['display']}**" if src else None
    previous = base_run(results)
    if results.get("base_model"):
        base = backbone.split(" from the Hub")[0].split(" (")[0]
    elif previous is not None:
        base = f"`{previous['folder']}` ({_before_text(results)})"
    else:
        base = f"`{os.path.basename(str(results.get('backbone', '?')).rstrip('/' + os.sep))}`"
    random = not results.get("base_model") and previous is None and initialisation(results) == "random"
    source_free = bool(results.get("source_free"))
    if mode == "domain" and source_free:
        what = (
            f"This model adapts a trained {base} image classifier to {t} (unlabelled target images only) with "
            f"{method_title}. It is **source-free**: no source data was seen in this run."
        )
    elif mode == "domain":
        start = "a randomly initialised " if random else "a "
        what = (
            f"This model adapts {start}{base} image classifier from {s} (labelled source) to {t} (unlabelled "
            f"target) with {method_title}."
        )
    elif mode == "feature":
        frozen = f"a randomly initialised {base}" if random else base
        what = f"This model is a linear probe on the frozen features of {frozen}, trained on the labels of {t}."
    elif random:
        what = f"This model trains a {base} from random initialisation on {t} ({method_title.lower()})."
    else:
        what = f"This model fine-tunes {base} on {t} ({method_title.lower()})."
    acc = accuracy(results, "target")
    warnings = health_warnings(results)
    parts = [f"**Warning: this run may have diverged.** {' '.join(warnings)}", what] if warnings else [what]
    if acc is not None:
        n = ((results.get("metrics") or {}).get("target") or {}).get("num_samples")
        parts.append(f"On the target test set{f' ({n} images)' if n else ''} it reaches {pct(acc)} accuracy")
        b = accuracy(baseline, "target")
        before = base_before(results)
        if source_free:  # the baseline is the starting model itself, scored on the same rows
            b = accuracy(before, "target") if before is not None else None
            if b is None:
                parts[-1] += " (the starting model could not be scored on the target to compare with)."
            else:
                gain = 100 * (acc - b)
                parts[-1] += (
                    f", {abs(gain):.1f} points {'better' if gain >= 0 else 'worse'} than the starting model before "
                    f"adaptation ({pct(b)}, the source-free baseline)."
                )
            return " ".join(parts)
        if is_baseline(method):
            parts[-1] += " - this *is* the source-only baseline that adapted models are compared with."
        elif b is not None:
            gain = 100 * (acc - b)
            word = "better" if gain >= 0 else "worse"
            parts[-1] += f", {abs(gain):.1f} points {word} than the source-only baseline ({pct(b)})"
            u = accuracy(upper, "target")
            if u is None:
                parts[-1] += "."
            elif u >= acc:
                parts[-1] += (
                    f", and {100 * (u - acc):.1f} points below a model trained on the target labels ({pct(u)})."
                )
            else:
                parts[-1] += f", and even above a model trained on the target labels ({pct(u)})."
        else:
            parts[-1] += " (no source-only baseline was given to compare with)."
        if before is not None:
            parts.append(
                f"Before adaptation, the base model's own classifier scored {pct(accuracy(before, 'target'))}"
                f"{' on the test images of the classes it knows' if before['partial'] else ''}."
            )
        sa = accuracy(results, "source")
        if sa is not None and mode == "domain":
            parts.append(f"Source test accuracy: {pct(sa)}.")
    return " ".join(parts)


def _dataset_link(d: dict | None) -> str:
    if d is None:
        return "-"
    if d["id"]:
        return f"[{d['display']}]({HUB}/datasets/{d['id']})"
    return f"`{d['display']}`" + (" (built into hf-transfer)" if d["kind"] == "builtin" else " (local)")


def datasets_table(results: dict) -> list[dict]:
    """Rows ``{role, link, labels, num_test}``: which datasets were used and whether their labels were."""
    mode = results.get("mode")
    src, tgt = dataset_info(results.get("source")), dataset_info(results.get("target"))
    metrics = results.get("metrics") or {}
    rows = []
    if src:
        rows.append(
            {
                "role": "source",
                "link": _dataset_link(src),
                "labels": "yes" if mode != "feature" and mode != "task" else "no (not used)",
                "num_test": (metrics.get("source") or {}).get("num_samples", "-"),
            }
        )
    rows.append(
        {
            "role": "target",
            "link": _dataset_link(tgt),
            "labels": "no (evaluation only)" if mode == "domain" else "yes",
            "num_test": (metrics.get("target") or {}).get("num_samples", "-"),
        }
    )
    if mode in ("feature", "task") and src:
        rows[0]["labels"] = "only through the backbone" if results.get("base_model") is None else "no"
    return rows


def alignment_text(results: dict) -> str:
    """How the source and target label spaces were matched (or the class list when nothing was aligned)."""
    al = results.get("label_alignment")
    names = results.get("label_names") or []
    if not al:
        return f"{len(names)} classes: {', '.join(f'`{n}`' for n in names)}."
    if al.get("policy") == "classifier":  # source-free: the starting classifier's classes are the label space
        lines = [
            f"Source-free: the label space is the starting classifier's own {len(names)} classes (its `id2label`), "
            f"matched to the target's by name: {len(al.get('shared') or names)} shared."
        ]
        if al.get("source_only"):
            lines.append(f"Classes only the classifier knows, kept: {', '.join(f'`{n}`' for n in al['source_only'])}.")
        if al.get("target_only"):
            lines.append(
                f"Target classes the classifier does not know, their rows dropped: "
                f"{', '.join(f'`{n}`' for n in al['target_only'])}."
            )
        return " ".join(lines)
    lines = [
        f"Label spaces were aligned by class name with policy `{al.get('policy')}` "
        f"({al.get('setting', '').replace('-', ' ')}): {len(al.get('shared') or names)} shared classes "
        f"({', '.join(f'`{n}`' for n in (al.get('shared') or names))})."
    ]
    if al.get("source_only"):
        fate = "kept in the label space" if al.get("policy") == "partial" else "dropped"
        lines.append(f"Classes only in the source, {fate}: {', '.join(f'`{n}`' for n in al['source_only'])}.")
    if al.get("target_only"):
        lines.append(f"Classes only in the target, dropped: {', '.join(f'`{n}`' for n in al['target_only'])}.")
    dropped = {d: v for d, v in (al.get("dropped_rows") or {}).items() if any((v or {}).values())}
    for domain, per_split in dropped.items():
        lines.append(
            f"Rows dropped from the {domain} domain: " + ", ".join(f"{k} {v}" for k, v in per_split.items() if v) + "."
        )
    if not al.get("source_only") and not al.get("target_only"):
        lines.append("No class was dropped.")
    partial = label_space_text(results)
    return " ".join(lines) + (f"\n\n{partial}" if partial else "")


def data_vars(results: dict, backbone: str) -> dict:
    """Template variables of the "data and label alignment" section (backbone, datasets, preprocessing)."""
    dc = results.get("data_config") or {}
    return dict(
        backbone_text=backbone,
        datasets_table=datasets_table(results),
        alignment_text=alignment_text(results),
        image_size=(dc.get("input_size") or [3, "?", "?"])[-1],
        crop_pct=dc.get("crop_pct"),
        interpolation=dc.get("interpolation"),
        mean=dc.get("mean"),
        std=dc.get("std"),
        augment=results.get("augment"),
        recipe_text=recipe_text(results),
    )


def recipe_text(results: dict) -> str:
    """One sentence on timm's recipe options that acted in the run (empty when none did)."""
    recipe = dict(results.get("training_recipe") or {})
    if not recipe:
        return ""
    soft = recipe.pop("soft_targets", False)
    items = ", ".join(f"`{k}={v}`" for k, v in recipe.items())
    tail = " Mixed images train on probability (soft) targets; accuracy is scored on the hard labels." if soft else ""
    return f"Training recipe (timm's option names): {items}.{tail}"


def hyperparameters(results: dict) -> list[tuple]:
    """The (name, value) rows of the Trainer's hyper-parameters, the seed, the runtime and the final loss."""
    hp = dict(results.get("hyperparameters") or {})
    recipe = hp.pop("recipe_defaults", None) or {}
    if hp.get("optim_args") is None:  # runs recorded before optim_args was a hyper-parameter
        hp["optim_args"] = (results.get("arguments") or {}).get("optim_args")
    governing = governing_schedule(results)
    if governing == "max_steps":  # max_steps > 0 overrides the epochs: num_train_epochs did nothing
        hp.pop("num_train_epochs", None)
    elif governing == "num_train_epochs" and hp.get("max_steps") is not None:  # the steps the epochs came to
        hp["training steps (set by num_train_epochs)"] = hp.pop("max_steps")
    rows = [(k, enum_value(v)) for k, v in sorted(hp.items()) if v is not None]
    if results.get("lr_find"):  # --learning_rate auto: the range test's pick and the curve it came from
        found = results["lr_find"]
        rows.append(
            (
                "learning_rate picked by",
                f"a range test (--learning_rate auto, {found['steps_run']} steps): {found['picked']:.3g}, a tenth of "
                f"the rate at the minimum smoothed loss ({found['min_loss_lr']:.3g}); curve: lr_find.png",
            )
        )
    if recipe:  # which of the values above hf_transfer's recipe chose (the run left them unset)
        label = f"from hf_transfer's {results.get('mode')} recipe (not set by the run)"
        rows.append((label, ", ".join(sorted(recipe))))
    rows.append(("seed", results.get("seed")))
    if results.get("train_runtime_s") is not None:
        rows.append(("train runtime (s)", results.get("train_runtime_s")))
    if results.get("train_loss") is not None:
        covers = results.get("train_loss_covers")  # a resumed run: the whole run's steps, or which ones
        rows.append((f"train loss (mean over {covers})" if covers else "train loss (mean)", train_loss_text(results)))
    return rows


def reproduce_vars(results: dict, repo_id: str | None, revision: str | None) -> dict:
    """Template variables of the "reproduce this run" section.

    The arguments as YAML, what the placeholders stand for, and the push command (``repo_id`` None: a local
    card, not pushed yet).
    """
    config, exact = run_config(results)
    intro = (
        "The exact arguments of this run (`train_config.yaml` beside this card)."
        if exact
        else "The arguments recorded for this run (`train_config.yaml` beside this card; rebuilt from "
        "`results.json`, so options left at their defaults are not listed)."
    )
    notes = [f"`{OUTPUT_DIR_PLACEHOLDER}` is a new folder of your choice"]
    local = [v for v in placeholders_in(config) if v.startswith("<PATH_TO:")]
    if local:
        notes.append(
            "`<PATH_TO: ...>` stands for a folder on the machine that trained this run (named as it was there): "
            "use your copy of it"
            + (" (a local run: retrain it first with its own card's reproduce block)" if base_run(results) else "")
        )
    if repo_id is None:
        notes.append(f"`{REPO_ID_PLACEHOLDER}` is the Hub repo to push to")
    intro += " Values in angle brackets are placeholders to replace before running it: " + "; ".join(notes) + "."
    return dict(
        reproduce_intro=intro,
        config_yaml=yaml.safe_dump(config, sort_keys=False, default_flow_style=False),
        config_file=CONFIG_FILE,
        push_command=f"hf-transfer push {OUTPUT_DIR_PLACEHOLDER} {repo_id or REPO_ID_PLACEHOLDER}"
        + (f" --revision {revision}" if revision else ""),
    )


def write_config(folder: str | os.PathLike, results: dict) -> None:
    """``train_config.yaml`` (the arguments of :func:`reproduce_vars`) written into ``folder``."""
    config, _ = run_config(results)
    (Path(folder) / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
