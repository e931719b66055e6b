"""One string names a dataset everywhere (CLI, YAML, Python).

Grammar::

    builtin:NAME[#SPLIT]                       a generated domain (see hf_transfer.data.builtin)
    PATH[#SPLIT]                               a local folder or file: a ``save_to_disk`` folder,
                                               parquet files, or an imagefolder layout
    ORG/NAME[:CONFIG][@REVISION][#SPLIT]       a Hub dataset

``#SPLIT`` restricts the domain to one split (it is then divided into train/test).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from hf_transfer.errors import TransferConfigError

BUILTIN_PREFIX = "builtin:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class DatasetSpec:
    kind: str  # "builtin" | "local" | "hub"
    name: str  # builtin name, absolute local path, or Hub repo id
    config: str | None = None
    revision: str | None = None
    split: str | None = None

    def __str__(self) -> str:
        if self.kind == "builtin":
            base = BUILTIN_PREFIX + self.name
        else:
            base = self.name
            if self.config:
                base += f":{self.config}"
            if self.revision:
                base += f"@{self.revision}"
        return base + (f"#{self.split}" if self.split else "")

    @property
    def display_name(self) -> str:
        """Short name for tables and model cards (no absolute paths of the user's machine)."""
        if self.kind == "local":
            return os.path.basename(self.name.rstrip(os.sep)) + (f"#{self.split}" if self.split else "")
        return str(self)


def parse_dataset_spec(spec: str | DatasetSpec) -> DatasetSpec:
    """Parse a dataset string; errors say which form was expected."""
    if isinstance(spec, DatasetSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TransferConfigError(f"Dataset spec must be a non-empty string, got {spec!r}.")
    text = spec.strip()
    split = None
    if "#" in text:
        text, split = text.rsplit("#", 1)
        if not split:
            raise TransferConfigError(f"Dataset spec {spec!r}: empty split after '#'.")

    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX) :]
        if not name:
            raise TransferConfigError(f"Dataset spec {spec!r}: missing built-in name after 'builtin:'.")
        _check_builtin_name(spec, name)
        return DatasetSpec("builtin", name, split=split)

    expanded = os.path.expanduser(text)
    if os.path.exists(expanded):
        return DatasetSpec("local", os.path.abspath(expanded), split=split)
    if text.startswith((".", "/", "~")) or text.split("@", 1)[0].count("/") > 1:
        raise TransferConfigError(f"Dataset spec {spec!r} looks like a local path, but {expanded!r} does not exist.")

    revision = None
    if "@" in text:
        text, revision = text.rsplit("@", 1)
        if not revision:
            raise TransferConfigError(f"Dataset spec {spec!r}: empty revision after '@'.")
    config = None
    if ":" in text:
        text, config = text.split(":", 1)
        if not config:
            raise TransferConfigError(f"Dataset spec {spec!r}: empty config after ':'.")
    if not _HUB_ID.match(text):
        raise TransferConfigError(
            f"Dataset spec {spec!r}: {text!r} is neither an existing local path, a 'builtin:NAME', "
            "nor a Hub id of the form 'org/name[:config][@revision][#split]'."
        )
    return DatasetSpec("hub", text, config=config, revision=revision, split=split)


def _check_builtin_name(spec: str, name: str) -> None:
    """An unknown built-in name fails when the spec is read (``plan`` included), not when data loads."""
    from hf_transfer.data.builtin import BUILTIN_DOMAINS

    if name not in BUILTIN_DOMAINS:
        raise TransferConfigError(
            f"Dataset spec {spec!r}: unknown built-in domain {name!r}; the built-in domains "
            f"are {', '.join(BUILTIN_PREFIX + n for n in sorted(BUILTIN_DOMAINS))}."
        )
