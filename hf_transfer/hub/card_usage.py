"""The card's "how to use it" code: which stock-library calls load the exported folder (transformers,
timm or a PEFT adapter), pinned to the pushed revision, with an example image from the repo."""

from __future__ import annotations

from hf_transfer.hub.card_inputs import EXAMPLES_DIR


def adapter_vars(adapter: dict) -> dict:
    """Template variables for the stock-library code that loads a PEFT adapter repo (see adapters.py)."""
    from hf_transfer.models.adapters import stock_loading

    loading = stock_loading(adapter)
    processor = loading["processor"] or {"class": "AutoImageProcessor", "kwargs": {}}
    base_revision = adapter.get("base_revision")
    return {
        "adapter_base": adapter.get("base_model_name_or_path"),
        "adapter_merged": adapter.get("merged"),
        "adapter_needs_label_kwargs": loading["needs_label_kwargs"],
        "adapter_processor_class": processor["class"],
        "adapter_processor_kwargs": "".join(f", {k}={v!r}" for k, v in processor["kwargs"].items()),
        "adapter_base_revision_kwarg": f', revision="{base_revision}"' if base_revision else "",
    }


def usage_vars(results: dict, library: dict, examples: list[dict], revision: str | None) -> dict:
    """Template variables of the usage section. ``library``: :func:`~hf_transfer.hub.card_inputs.folder_library`;
    ``examples``: the folder's reference rows."""
    return dict(
        is_timm=library["timm"],
        is_peft=library["library"] == "peft",
        **(adapter_vars(results["adapter"]) if results.get("adapter") else {}),  # used only for a PEFT folder
        revision_kwarg=f', revision="{revision}"' if revision else "",
        timm_revision=f"@{revision}" if revision else "",
        example_file=examples[0]["file"] if examples else f"{EXAMPLES_DIR}/0.png",
    )
