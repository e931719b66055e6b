"""The model card of ``hf-transfer tta``: what was adapted at test time and how, the before / online / after table,
and, with ``handler.py``, that the served model changes with its inputs. ``model-index`` holds the written
model's target accuracy ("after"), through huggingface_hub's ``EvalResult``."""

from __future__ import annotations

import os
from typing import Any

from hf_transfer.hub.card_inputs import dataset_info
from hf_transfer.hub.card_metadata import eval_results

README = "README.md"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(results: dict[str, Any]) -> str:
    ba = results.get("before_after") or {}
    rows = [
        ("before", "the starting model, as `hf-transfer evaluate` scores it"),
        ("online", "the predictions made during the pass, each batch before its own update"),
        ("after", "this model (the adapted one written here), as `hf-transfer evaluate` scores it"),
    ]
    lines = ["| | target accuracy | macro-F1 | images | what |", "|---|---|---|---|---|"]
    for key, what in rows:
        row = ba.get(key) or {}
        f1 = row.get("macro_f1")
        lines.append(
            f"| {key} | {_pct(row.get('accuracy'))} | {'-' if f1 is None else f'{f1:.3f}'} | "
            f"{row.get('num_samples', '-')} | {what} |"
        )
    return "\n".join(lines)


def render_tta_card(results: dict[str, Any], name: str) -> str:
    """The card's markdown (YAML metadata included) for the results of one ``hf-transfer tta`` run."""
    from huggingface_hub import ModelCard, ModelCardData

    tta = results.get("tta") or {}
    target = dataset_info(results.get("target"))
    display = target["display"] if target else str(results.get("target"))
    start = str(results.get("starting_model"))
    on_hub = not os.path.isdir(start)
    data = ModelCardData(
        library_name="timm" if results.get("library") == "timm" else "transformers",
        pipeline_tag="image-classification",
        tags=["hf-transfer", "test-time-adaptation", str(results.get("method"))],
        base_model=start.removeprefix("hf-hub:") if on_hub else None,
        model_name=name,
        eval_results=eval_results({**results, "source": None}),
    )
    reset = {
        "never": "never (continual adaptation over the whole pass)",
        "episodic": "after every batch (episodic: the model written here is the starting one)",
        "on_collapse": f"when the moving average of the entropy fell below {tta.get('collapse_entropy')} "
        f"(model recovery; {tta.get('resets', 0)} reset(s))",
    }.get(tta.get("reset", ""), tta.get("reset"))
    served = (
        "\n\n**This model changes with its inputs when served through `handler.py`** (Inference Endpoints): every "
        "request of two or more images is predicted, then takes one entropy-minimisation step (TENT's) on the "
        "normalisation layers' affine parameters, so later requests see an adapted model. Single images are "
        "predicted without an update; the weights on disk never change."
        if tta.get("adapts_with_inputs_when_served")
        else ""
    )
    worse = (
        "\n> **Worse than the starting model.** On these labelled rows the model written here scores below the one "
        "it started from: use the starting model, or run again with another `--reset` or `--learning_rate`.\n"
        if tta.get("worse_than_start")
        else ""
    )
    body = f"""
# {name}

This model is `{start}` adapted at test time to **{display}** with {tta.get("title")} ([paper]({tta.get("paper")})):
one online pass over the target's test split ({tta.get("stream")}), batch by batch ({tta.get("batch_size")} images),
the normalisation layers' affine parameters updated by SGD (learning rate {tta.get("learning_rate")}, momentum 0.9),
BatchNorm normalising with each batch's statistics. No label was used. Reset: {reset}. Its BatchNorm running
statistics are those of the target images of the pass.{served}

## Before and after
{worse}
{_table(results)}

"before" and "after" score the same rows; "online" is the usual test-time-adaptation number.

## How to use

```python
from transformers import pipeline

pipeline("image-classification", model="{name}")
```
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def write_tta_card(folder: str, results: dict[str, Any]) -> str:
    """Write ``README.md`` into ``folder``; its path."""
    path = os.path.join(folder, README)
    with open(path, "w") as f:
        f.write(render_tta_card(results, os.path.basename(os.path.abspath(folder))))
    return path
