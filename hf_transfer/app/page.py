"""The demo page of an image classifier trained here: drop or paste an image and get the top-k classes with their
names and probabilities, from one model or two side by side; the run's example images; the card's transfer story
(summary, results table, per-class accuracy, plots).

One self-contained file on purpose: ``hf-transfer app`` builds its page from it, and ``hf-transfer push --space``
copies it as the Space's ``app.py``, where hf_transfer is not installed. So it imports stock libraries only
(gradio, transformers, huggingface_hub, Pillow; peft for a LoRA adapter), and every prediction is
``pipeline("image-classification")`` called on the uploaded file itself: the page shows what the pipeline gives.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the page imports gradio when it is built
    import gradio as gr

# The Space's models (Hub ids, at a revision) and title: ``push --space`` writes these three lines.
MODELS: list[str] = []
REVISIONS: list[str | None] = []
TITLE = "hf-transfer model"

ADAPTER_INFO = "hf_transfer_adapter.json"  # an adapter folder's labels, base and loading recipe
STORY_SECTIONS = ("summary", "results", "per-class")  # the card's sections shown in the story tab
PLOTS = ("confusion_matrix.png", "training_curves.png", "lr_find.png")
MAX_EXAMPLES = 12
SLOTS = ("a", "b")  # the page's two prediction columns (elem ids: label-a, scores-b, ...)


class ModelLoadError(ValueError):
    """The model cannot be shown: not found, or not an image classifier."""


@dataclass
class LoadedModel:
    """A model ready to predict, with what its page shows beside the predictions."""

    name: str
    folder: Path
    classify: Any  # transformers' ImageClassificationPipeline
    label_names: list[str]
    examples: list[str] = field(default_factory=list)
    story: str = ""
    plots: list[str] = field(default_factory=list)

    def predict(self, image: str, top_k: int) -> list[dict[str, Any]]:
        """The pipeline's top-k on an image file: ``[{"label", "score"}, ...]``, best first."""
        k = max(1, min(int(top_k), len(self.label_names)))
        return [{"label": p["label"], "score": float(p["score"])} for p in self.classify(image, top_k=k)]


# --- loading -------------------------------------------------------------------------------------------


def model_folder(model: str, revision: str | None = None) -> Path:
    """A local model folder as it is, else a Hub repo id downloaded (the Hub of ``HF_ENDPOINT``)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{model} is a file: give a model folder (a run folder or a downloaded repo) or a Hub id.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, ignore_patterns=["checkpoint-*/*", "*.bin"]))
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ModelLoadError(
            f"{model!r} is neither a local folder nor a Hub model repo that could be downloaded "
            f"({type(err).__name__}: {reason})."
        ) from err


def check_classifier(folder: Path) -> None:
    """Refuse, naming why, a folder that holds no image-classification model (before any weight is read)."""
    config = folder / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
        except ValueError as err:
            raise ModelLoadError(f"{config} is not valid JSON ({err}).") from err
        architectures = cfg.get("architectures") or []
        if cfg.get("model_type") == "timm_wrapper" or any(
            str(a).endswith("ForImageClassification") for a in architectures
        ):
            return
        raise ModelLoadError(
            f"{folder} is not an image classifier: its config.json names {architectures or cfg.get('model_type')!r}, "
            "not an ...ForImageClassification model."
        )
    if (folder / "adapter_config.json").is_file():
        if (folder / ADAPTER_INFO).is_file():
            return
        raise ModelLoadError(
            f"{folder} is a PEFT adapter without {ADAPTER_INFO}: its class names and base are unknown "
            "(only adapters written by hf-transfer are shown)."
        )
    raise ModelLoadError(f"{folder} holds no model: neither config.json nor adapter_config.json.")


def pipeline_kwargs(folder: Path) -> dict[str, Any]:
    """What ``pipeline()`` needs besides the folder of a LoRA adapter, as its model card says.

    The run's image processor and, when the base's labels differ from the run's, the label keyword arguments."""
    if not (folder / "adapter_config.json").is_file():
        return {}
    import transformers

    info = json.loads((folder / ADAPTER_INFO).read_text())
    loading = info["stock_loading"]
    out: dict[str, Any] = {}
    if loading.get("processor"):
        proc = loading["processor"]
        out["image_processor"] = getattr(transformers, proc["class"]).from_pretrained(str(folder), **proc["kwargs"])
    if loading.get("needs_label_kwargs"):
        names = list(info["label_names"])
        out["model_kwargs"] = {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)},
            "ignore_mismatched_sizes": True,
        }
    return out


def load_model(model: str, revision: str | None = None, name: str | None = None) -> LoadedModel:
    """A run folder, a downloaded repo or a Hub id as a :class:`LoadedModel` (on CPU)."""
    folder = model_folder(model, revision)
    check_classifier(folder)
    from transformers import pipeline

    try:
        classify = pipeline("image-classification", model=str(folder), device="cpu", **pipeline_kwargs(folder))
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ModelLoadError(
            f"{model} could not be loaded as an image classifier ({type(err).__name__}: {reason})."
        ) from err
    id2label = {int(i): str(name) for i, name in (classify.model.config.id2label or {}).items()}
    return LoadedModel(
        name=name or model,
        folder=folder,
        classify=classify,
        label_names=[id2label[i] for i in range(len(id2label))],
        examples=example_images(folder),
        story=card_story(folder),
        plots=[str(folder / p) for p in PLOTS if (folder / p).is_file()],
    )


def example_images(folder: Path) -> list[str]:
    """The run's example images (its target test split), in the order of ``reference_predictions.json``."""
    listed = folder / "reference_predictions.json"
    if listed.is_file():
        files = [str(folder / row["file"]) for row in json.loads(listed.read_text())]
    else:
        files = sorted(str(p) for p in (folder / "examples").glob("*") if p.is_file())
    return [f for f in files if Path(f).is_file()][:MAX_EXAMPLES]


def card_story(folder: Path) -> str:
    """The card's generated transfer story: summary, results and per-class accuracy (empty without a card).

    Its images and title are left out: the page shows the plots and names the model itself."""
    card = folder / "README.md"
    if not card.is_file():
        return ""
    text = card.read_text(encoding="utf-8")
    parts = []
    for section in STORY_SECTIONS:
        found = re.search(
            rf"<!-- hf-transfer:begin {re.escape(section)} -->(.*?)<!-- hf-transfer:end {re.escape(section)} -->",
            text,
            re.S,
        )
        if found:
            # the card's images and its title go: the page shows the plots and names the model itself
            parts.append(re.sub(r"^(!\[[^\]]*\]\([^)]*\)|# .*)\s*$", "", found.group(1), flags=re.M).strip())
    return "\n\n".join(p for p in parts if p)


# --- the page ------------------------------------------------------------------------------------------


def scores_html(predictions: list[dict[str, Any]]) -> str:
    """The predictions as a table with 4-decimal probabilities (what a reader compares with ``pipeline()``)."""
    rows = "".join(
        f'<tr><td class="label">{html.escape(str(p["label"]))}</td><td class="score">{p["score"]:.4f}</td></tr>'
        for p in predictions
    )
    return f'<table class="scores"><tr><th>class</th><th>probability</th></tr>{rows}</table>'


def predict_all(models: list[LoadedModel | None], image: str | None, top_k: int) -> tuple[list[Any], str]:
    """Every model's outputs for the page (a label dict and a scores table each) and a message.

    A file that is not a readable image, or a model that fails on it, gives the message instead of the outputs."""
    empty = [None, ""] * len(models)
    if image is None:
        return empty, ""
    from PIL import Image

    try:
        with Image.open(image) as im:
            im.verify()  # a truncated or non-image file is named here, before any model sees it
    except Exception as err:
        return empty, (
            f"**Could not read `{Path(image).name}` as an image** ({type(err).__name__}: {_first_line(err)}). "
            "Drop a PNG, JPEG, WebP, BMP or GIF file."
        )
    outputs: list[Any] = []
    problems = []
    for model in models:
        if model is None:
            outputs += [None, ""]
            continue
        try:
            predictions = model.predict(image, top_k)
        except Exception as err:
            outputs += [None, ""]
            problems.append(f"**{model.name} failed on this image** ({type(err).__name__}: {_first_line(err)}).")
            continue
        outputs += [{p["label"]: p["score"] for p in predictions}, scores_html(predictions)]
    return outputs, " ".join(problems)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _tolerant_upload(component: gr.Image) -> None:
    """gradio opens an upload itself before any handler runs and answers a file it cannot read with a bare
    "Error": hand the handler the file instead, so that the page names the problem (:func:`predict_all`)."""
    strict = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return strict(payload)
        except Exception:
            return None if payload is None or payload.path is None else str(payload.path)

    component.preprocess = preprocess  # type: ignore[method-assign]  # this one component, not the class


def _model_heading(model: LoadedModel | None) -> str:
    if model is None:
        return ""
    return f"### {html.escape(model.name)}\n{len(model.label_names)} classes"


def _story(model: LoadedModel | None) -> str:
    if model is None:
        return ""
    return f"## {model.name}\n\n" + (model.story or "_This model's folder has no hf-transfer model card._")


def build_page(
    models: list[LoadedModel],
    title: str = TITLE,
    loader: Callable[[str], LoadedModel] | None = None,
    top_k: int = 5,
) -> gr.Blocks:
    """The page of one model, or two side by side (same image, same top-k).

    ``loader`` adds a box that loads another model into the second column (a local tool only: a Space never loads
    what its visitors name)."""
    import gradio as gr

    if not 1 <= len(models) <= len(SLOTS):
        raise ValueError(f"the page shows 1 or 2 models, got {len(models)}")
    slots: list[LoadedModel | None] = [*models, None][: len(SLOTS)]
    most_labels = max(len(m.label_names) for m in models)
    with gr.Blocks(title=title) as page:
        gr.Markdown(f"# {html.escape(title)}")
        with gr.Tab("Predict"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(
                        type="filepath",
                        image_mode=None,  # the file as uploaded: the pipeline decodes it, as pipeline(path) does
                        sources=["upload", "clipboard"],
                        label="Drop or paste an image",
                        height=260,
                        elem_id="image",
                    )
                    _tolerant_upload(image)
                    k = gr.Slider(1, most_labels, value=min(top_k, most_labels), step=1, label="top-k", elem_id="k")
                    run = gr.Button("Predict", variant="primary", elem_id="predict")
                columns: list[gr.Column] = []
                outputs: list[gr.Component] = []
                headings: list[gr.Markdown] = []
                for slot, model in zip(SLOTS, slots, strict=True):
                    with gr.Column(scale=1, visible=model is not None) as column:
                        headings.append(gr.Markdown(_model_heading(model), elem_id=f"name-{slot}"))
                        outputs.append(gr.Label(label="top-k", elem_id=f"label-{slot}"))
                        outputs.append(gr.HTML(elem_id=f"scores-{slot}"))
                    columns.append(column)
            message = gr.Markdown(elem_id="message")
            # two runs on one target show the same test images: each once
            examples = list({Path(e).name: e for m in models for e in m.examples}.values())[:MAX_EXAMPLES]
            if examples:
                gr.Examples(examples=[[e] for e in examples], inputs=[image], label="Examples (target test split)")
            if loader is not None:
                with gr.Accordion("Compare with another model", open=False, elem_id="compare"):
                    other = gr.Textbox(label="a run folder, a downloaded repo or a Hub id", elem_id="other")
                    load = gr.Button("Load into the second column", elem_id="load")
        with gr.Tab("Transfer story"):
            stories, galleries = [], []
            for slot, model in zip(SLOTS, slots, strict=True):
                stories.append(gr.Markdown(_story(model), elem_id=f"story-{slot}"))
                galleries.append(
                    gr.Gallery(value=model.plots if model else None, label="plots", visible=bool(model and model.plots))
                )

        def on_image(path: str | None, top: float) -> list[Any]:
            outs, problem = predict_all(slots, path, int(top))
            return [*outs, problem]

        for trigger in (image.change, run.click, k.release):
            trigger(on_image, inputs=[image, k], outputs=[*outputs, message])

        if loader is not None:

            def on_load(name: str) -> list[Any]:
                try:
                    slots[1] = loader(name.strip())
                except Exception as err:  # the page says why; the server keeps serving the models it has
                    return [gr.update(), gr.update(), gr.update(), gr.update(), f"**{err}**"]
                b = slots[1]
                assert b is not None, "set just above"
                return [
                    gr.update(visible=True),
                    _model_heading(b),
                    _story(b),
                    gr.update(value=b.plots or None, visible=bool(b.plots)),
                    f"Loaded {b.name} into the second column.",
                ]

            load.click(on_load, inputs=[other], outputs=[columns[1], headings[1], stories[1], galleries[1], message])
    return page


if __name__ == "__main__":  # the Space: its models from the Hub, served on the Space's port
    build_page([load_model(m, r) for m, r in zip(MODELS, REVISIONS, strict=True)], title=TITLE).launch()
