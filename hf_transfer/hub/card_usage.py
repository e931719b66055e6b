"""The card's "how to use it" part: which forms the repo holds (``--publish``: merged model, adapter, both),
what serves each one with no extra arguments, and the stock-library code that loads each form, pinned to
the pushed revision, with an example image from the repo."""

from __future__ import annotations

from hf_transfer.hub.card_inputs import REPO_ID_PLACEHOLDER
from hf_transfer.models.examples import EXAMPLES_DIR


def adapter_vars(adapter: dict) -> dict:
    """Template variables for the stock-library code that loads a PEFT adapter (see adapters.py).

    The adapter lies at the repo root (``--publish adapter``) or in ``adapter_subfolder`` (``--publish both``)."""
    loading = adapter.get("stock_loading") or {}
    processor = loading.get("processor") or {"class": "AutoImageProcessor", "kwargs": {}}
    base_revision = adapter.get("base_revision")
    subfolder = adapter.get("subfolder")
    return {
        "adapter_base": adapter.get("base_model_name_or_path"),
        "adapter_subfolder": subfolder,
        "adapter_subfolder_kwarg": f', subfolder="{subfolder}"' if subfolder else "",
        "adapter_needs_label_kwargs": bool(loading.get("needs_label_kwargs")),
        "adapter_processor_class": processor["class"],
        "adapter_processor_kwargs": "".join(f", {k}={v!r}" for k, v in processor["kwargs"].items()),
        "adapter_base_revision_kwarg": f', revision="{base_revision}"' if base_revision else "",
    }


def _mb(n: int | None) -> str:
    return f"{n / 1e6:.1f} MB" if n else "?"


def forms_text(results: dict, library: dict) -> list[str]:
    """Paragraphs that say which forms the repo holds and what serves each one with no extra arguments."""
    adapter = results.get("adapter") or {}
    publish = adapter.get("publish") or ("adapter" if library["library"] == "peft" else None)
    base = adapter.get("base_model_name_or_path")
    endpoint_default = (
        "**Inference Endpoints:** the default handler serves the model at the root of this repo as it is "
        '(`pipeline("image-classification")`, no custom code), with this run\'s class names.'
    )
    if publish is None:  # a full fine-tune, linear probe or domain-adapted model
        return [
            'The repo holds a full model: `pipeline("image-classification", model=repo)` and '
            "`AutoModelForImageClassification.from_pretrained(repo)` load it with no other arguments.",
            endpoint_default,
        ]
    if publish in ("both", "merged"):
        lines = [
            f"The repo root holds the **merged full model**: the LoRA adapter merged into the base `{base}`, with "
            'the new head. `pipeline("image-classification", model=repo)` and '
            "`AutoModelForImageClassification.from_pretrained(repo)` load it with no other arguments."
        ]
        if publish == "both":
            lines.append(
                f"The **LoRA adapter** (PEFT, {_mb(adapter.get('adapter_bytes'))}, with the new head) is in "
                f"`{adapter.get('subfolder')}/`, for `PeftModel.from_pretrained(base, repo, "
                f'subfolder="{adapter.get("subfolder")}")` (code below).'
            )
        return [*lines, endpoint_default]
    loading = adapter.get("stock_loading") or {}
    if loading.get("needs_label_kwargs"):
        no_args = (
            '`pipeline("image-classification", model=repo)` with no other arguments **does not work** for this '
            "repo: stock transformers builds an adapter's model from its base's config, and the base's labels "
            "differ from this run's (the head does not load: size mismatch). Pass the arguments of the code "
            "below, or publish with `--publish both` (merged model at the root)."
        )
    elif adapter.get("self_sufficient"):
        no_args = (
            '`pipeline("image-classification", model=repo)` works with no other arguments: the base has this '
            "run's labels and preprocessing."
        )
    else:
        no_args = (
            '`pipeline("image-classification", model=repo)` loads with no other arguments (the base has this '
            "run's labels) but preprocesses as the base does: pass this run's image processor as below."
        )
    if adapter.get("publish") == "adapter":  # written with handler.py + requirements.txt
        endpoint = (
            "**Inference Endpoints:** the repo carries `handler.py` (the Endpoints' custom-handler convention, stock "
            "libraries only) and `requirements.txt`: an Endpoint builds the base with this run's labels, loads the "
            'adapter with peft and answers `[{"label": ..., "score": ...}, ...]`.'
        )
    else:  # a folder exported before --publish existed: no handler.py
        endpoint = (
            "**Inference Endpoints:** this repo has no `handler.py`; the default handler serves it only where "
            '`pipeline("image-classification", model=repo)` works with no arguments (see above).'
        )
    return [
        f"The repo holds only the **LoRA adapter** (PEFT) and the new classification head, on the base model `{base}`.",
        no_args,
        endpoint,
    ]


LOCAL_NOTE = (
    f"This card was written with the run folder, before any push: `{REPO_ID_PLACEHOLDER}` below stands for the Hub "
    "repo it goes to (`hf-transfer push` fills it in). Until then, pass the folder's path instead of the repo id "
    "(for timm: `local-dir:` and the path) and an image of your own."
)


def usage_vars(
    results: dict, library: dict, examples: list[dict], revision: str | None, *, local: bool = False
) -> dict:
    """Template variables of the usage section.

    ``library``: :func:`~hf_transfer.hub.card_inputs.folder_library`; ``examples``: the folder's reference rows;
    ``local``: a card written before any push (no repo yet)."""
    adapter = results.get("adapter") or {}
    return dict(
        is_timm=library["timm"],
        is_peft=library["library"] == "peft",
        forms_text=([LOCAL_NOTE] if local else []) + forms_text(results, library),
        has_adapter_subfolder=bool(adapter.get("subfolder")),
        **adapter_vars(adapter),
        revision_kwarg=f', revision="{revision}"' if revision else "",
        timm_revision=f"@{revision}" if revision else "",
        example_file=examples[0]["file"] if examples else f"{EXAMPLES_DIR}/0.png",
    )
