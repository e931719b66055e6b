"""*What* to freeze: named parameter groups and module-name patterns.

Groups come from :meth:`hf_transfer.models.backbones.Backbone.param_groups` (timm: the model's own
``group_matcher``; transformers: module-name patterns) in input-to-output order:
``stem``, ``stage_0`` .. ``stage_N``, [``neck``], ``head``. A freeze spec is a comma-separated list
whose entries are:

- a group name (``stem``, ``stage_0``, ``neck``) or ``backbone`` (every group but the head);
- a glob over parameter names (``*layer1.0.*``, ``vit.layers.[0-5].*``), matched against the full
  name and, for timm backbones, against the timm name without the ``timm_model.`` prefix;
- ``re:<regex>`` searched in those same names (``re:layers\\.(0|1)\\.attention``).

An entry that matches no parameter is an error that lists the groups (no silent typos); the head is
always trained.
"""

from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable

from torch import nn

from hf_transfer.errors import TransferConfigError

TIMM_PREFIX = "timm_model."


def _aliases(name: str) -> tuple[str, ...]:
    return (name, name.removeprefix(TIMM_PREFIX)) if name.startswith(TIMM_PREFIX) else (name,)


def _pattern_matcher(entry: str) -> Callable[[str], bool]:
    if entry.startswith("re:"):
        try:
            rx = re.compile(entry[3:])
        except re.error as err:
            raise TransferConfigError(f"freeze: bad regular expression {entry!r}: {err}") from err
        return lambda name: any(rx.search(a) for a in _aliases(name))
    return lambda name: any(fnmatch.fnmatchcase(a, entry) for a in _aliases(name))


def _is_pattern(entry: str) -> bool:
    return entry.startswith("re:") or any(c in entry for c in "*?[")


#: a freeze spec: comma-separated entries in one string, or a list of entries (YAML), or nothing
FreezeSpec = str | list[str] | None


def split_spec(spec: FreezeSpec) -> list[str]:
    """The entries of a freeze spec, stripped, without empty ones."""
    if not spec:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [s.strip() for s in items if s and s.strip()]


def select_parameters(
    spec: FreezeSpec, groups: OrderedDict[str, list[tuple[str, nn.Parameter]]]
) -> OrderedDict[str, list[tuple[str, nn.Parameter]]]:
    """Resolve a freeze spec (group names, ``backbone``, globs, ``re:`` patterns) to parameters.

    Returns ``{spec entry: [(name, param), ...]}`` in spec order; raises
    :class:`~hf_transfer.errors.TransferConfigError` for an entry that matches nothing or that
    reaches the head.
    """
    group_names = list(groups)
    head = {n for n, _ in groups.get("head", [])}
    out: OrderedDict[str, list[tuple[str, nn.Parameter]]] = OrderedDict()
    for entry in split_spec(spec):
        if entry == "head":
            raise TransferConfigError("freeze: the head is always trained; remove 'head'.")
        if entry == "backbone":
            out[entry] = [(n, p) for g, ps in groups.items() if g != "head" for n, p in ps]
        elif entry in groups:
            out[entry] = list(groups[entry])
        elif _is_pattern(entry):
            match = _pattern_matcher(entry)
            hits = [(n, p) for ps in groups.values() for n, p in ps if match(n)]
            if not hits:
                examples = [n for ps in groups.values() for n, _ in ps][:3]
                raise TransferConfigError(
                    f"freeze: pattern {entry!r} matches no parameter name (names look like {examples}; "
                    f"groups are {group_names})."
                )
            if any(n in head for n, _ in hits):
                raise TransferConfigError(
                    f"freeze: pattern {entry!r} matches head parameters; the head is always trained."
                )
            out[entry] = hits
        else:
            raise TransferConfigError(
                f"freeze: group {entry!r} matches no parameters; groups are {group_names} (or 'backbone', a glob "
                "such as '*layer1.*', or 're:<regex>' over parameter names)."
            )
    return out


def freeze_parameters(params: Iterable[tuple[str, nn.Parameter]]) -> int:
    """``requires_grad=False`` on every parameter; returns how many elements were frozen."""
    n = 0
    for _, p in params:
        p.requires_grad_(False)
        n += p.numel()
    return n
