"""Hand edits survive a re-push: generated body sections sit between ``<!-- hf-transfer:begin NAME -->``
and ``<!-- hf-transfer:end NAME -->`` markers and only those are replaced when a card is regenerated;
metadata keys hf-transfer does not set are kept."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

_SECTION = re.compile(r"<!-- hf-transfer:begin (?P<name>[\w-]+) -->.*?<!-- hf-transfer:end (?P=name) -->\n?", re.DOTALL)


def _sections(text: str) -> dict[str, str]:
    return {m.group("name"): m.group(0) for m in _SECTION.finditer(text)}


def merge_body(old: str, new: str) -> str:
    """Replace the generated sections of ``old`` with those of ``new``; keep everything else.

    A section of ``new`` missing from ``old`` is inserted after the generated section that precedes
    it in ``new`` (or appended); a generated section the new card no longer has is removed. A body
    without any marker (a card written by hand) is kept below the generated one.
    """
    new_sections = _sections(new)
    if not _sections(old):
        kept = old.strip()
        return new.rstrip() + ("\n\n" + kept + "\n" if kept else "\n")
    order = list(new_sections)
    out = _SECTION.sub(lambda m: new_sections.get(m.group("name"), ""), old)
    present = set(_sections(out))
    for i, name in enumerate(order):
        if name in present:
            continue
        prev = next((order[j] for j in range(i - 1, -1, -1) if order[j] in present), None)
        block = new_sections[name]
        if prev is None:
            first = _SECTION.search(out)
            out = out[: first.start()] + block + "\n" + out[first.start() :] if first else out.rstrip() + "\n\n" + block
        else:
            m = re.search(re.escape(f"<!-- hf-transfer:end {prev} -->") + r"\n?", out)
            if m is None:  # _sections found the section, so its end marker is there
                raise ValueError(f"model card: section {prev!r} has no end marker")
            out = out[: m.end()] + "\n" + block + out[m.end() :]
        present.add(name)
    return out


def merge_card(existing: str | None, generated: ModelCard) -> ModelCard:
    """The generated ``ModelCard`` merged into an existing README text (None: the generated card).

    Metadata: keys hf-transfer sets are replaced, other keys (e.g. ``language`` added by hand) kept.
    Body: see :func:`merge_body`.
    """
    from huggingface_hub import ModelCard, ModelCardData

    if not existing or not existing.strip():
        return generated
    try:
        old = ModelCard(existing, ignore_metadata_errors=True)
        old_data = old.data.to_dict()
        old_text = old.text
    except Exception:  # unparsable metadata: keep the body, regenerate the metadata
        old_data, old_text = {}, re.sub(r"\A---\n.*?\n---\n", "", existing, flags=re.DOTALL)
    data = {**old_data, **generated.data.to_dict()}
    merged = ModelCard(str(generated))
    merged.data = ModelCardData(**data)
    merged.text = merge_body(old_text, generated.text)
    return merged
