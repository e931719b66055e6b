"""The Jinja template of the card. It lives in ``model_cards/model_card.md``, which the distribution
ships as the package ``hf_transfer._model_cards`` (read with ``importlib.resources``, so a wheel install
has it too)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

TEMPLATE_PACKAGE = "hf_transfer._model_cards"  # model_cards/, mapped into the package by pyproject.toml
TEMPLATE = "model_card.md"


def template_text(path: str | os.PathLike | None = None) -> str:
    """The template at ``path``, else the shipped one from the installed package (not a checkout's folder)."""
    if path is not None:
        return Path(path).read_text(encoding="utf-8")
    return resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE).read_text(encoding="utf-8")
