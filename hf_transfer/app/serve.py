"""Serving the page on this machine: gradio kept off the network (no analytics, no share link, no server-side
rendering helper), on 127.0.0.1 unless told otherwise, the first free port from 7860 unless one is given."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hf_transfer.app.page import LoadedModel, build_page

if TYPE_CHECKING:
    import gradio as gr

DEFAULT_HOST = "127.0.0.1"


def offline_gradio() -> None:
    """Before gradio is imported: no analytics or version check leaves this machine."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def serve(
    models: list[LoadedModel],
    *,
    title: str,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    top_k: int = 5,
    loader: Callable[[str], LoadedModel] | None = None,
) -> tuple[gr.Blocks, str]:
    """Start the page in a background thread; returns it and its local URL (``page.close()`` stops it)."""
    offline_gradio()
    page = build_page(models, title=title, loader=loader, top_k=top_k)
    kwargs: dict[str, Any] = dict(
        server_name=host, server_port=port, prevent_thread_lock=True, share=False, quiet=True, ssr_mode=False
    )
    _, url, _ = page.launch(**kwargs)
    return page, url


def warm_up(models: list[LoadedModel]) -> None:
    """One prediction per model on its first example, so that the first one on the page is as fast as the rest."""
    for model in models:
        if model.examples:
            model.predict(model.examples[0], 1)
