"""Testing helpers for code that talks to the Hugging Face Hub.

``hf_transfer.testing.hub_server`` holds :class:`HubTestServer`, a small Hub-compatible HTTP
server that the real ``huggingface_hub``, ``datasets``, ``transformers`` and ``timm`` clients
can push to and pull from on 127.0.0.1, fully offline. ``hf_transfer.testing.pytest_plugin``
turns it into pytest fixtures (``hub_server``, ``hub_subprocess_env``, ``run_with_hub``).

This module stays light: it imports neither ``huggingface_hub`` nor ``transformers``; the names
below are loaded on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["HubTestServer", "Faults", "USER_TOKEN", "OTHER_TOKEN", "USER", "OTHER_USER"]

if TYPE_CHECKING:  # pragma: no cover
    from hf_transfer.testing.hub_common import OTHER_TOKEN, OTHER_USER, USER, USER_TOKEN
    from hf_transfer.testing.hub_faults import Faults
    from hf_transfer.testing.hub_server import HubTestServer

#: where each name lives
_HOMES = {"HubTestServer": "hub_server", "Faults": "hub_faults"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        return getattr(importlib.import_module(f"hf_transfer.testing.{_HOMES.get(name, 'hub_common')}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
