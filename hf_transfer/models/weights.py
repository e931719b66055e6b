"""Which weight file of a backbone cannot be read: a failed load names the file, not only the library's error.

``from_pretrained`` reports a damaged ``.safetensors`` file as ``SafetensorError: Error while deserializing
header: ...`` without saying which file (a local folder, a Hub cache snapshot, one shard of many). Reading
each candidate file's header with ``safetensors.safe_open`` (the header only: milliseconds) finds it.
"""

from __future__ import annotations

import glob
import json
import os

from hf_transfer.errors import TransferConfigError

_SINGLE, _INDEX = "model.safetensors", "model.safetensors.index.json"


def _cached(model_id: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(model_id, filename, revision=revision)
    return path if isinstance(path, str) else None


def weight_files(model_id: str, revision: str | None = None) -> list[str]:
    """The ``.safetensors`` files a load of ``model_id`` reads that are on this disk (a folder or the Hub cache)."""
    if os.path.isdir(model_id):
        return sorted(glob.glob(os.path.join(model_id, "*.safetensors")))
    index = _cached(model_id, _INDEX, revision)
    names = [_SINGLE]
    if index is not None:
        try:
            with open(index) as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []
    return [p for p in (_cached(model_id, name, revision) for name in names) if p is not None]


def unreadable_weight_file(model_id: str, revision: str | None = None) -> tuple[str, str] | None:
    """The first weight file whose safetensors header does not parse, as (path, reason), or None."""
    from safetensors import SafetensorError, safe_open

    for path in weight_files(model_id, revision):
        try:
            with safe_open(path, "pt"):
                pass
        except (SafetensorError, OSError) as err:
            return path, str(err)
    return None


def raise_if_unreadable(model_id: str, revision: str | None = None, err: BaseException | None = None) -> None:
    """Raise a TransferConfigError naming the damaged weight file of ``model_id``, if one is on this disk.

    Called before any work (``plan``, ``train`` before it claims its folder) and after a failed load (``err``, the
    load's error)."""
    found = unreadable_weight_file(model_id, revision)
    if found is None:
        return
    path, reason = found
    if os.path.isdir(model_id):
        fix = "Save the model again"
    else:  # a Hub cache snapshot file links to its blob; a new download needs the blob gone
        fix = f"Delete {os.path.realpath(path)!r} (the cached download) so that the next run downloads it again"
    raise TransferConfigError(
        f"backbone {model_id!r}: weight file {path!r} cannot be read ({reason}); it is damaged or incomplete. "
        f"{fix}, or choose another backbone."
    ) from err
