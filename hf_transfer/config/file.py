"""Read one YAML or JSON config file within bounds, naming the file (and the key and line) when it is not.

A YAML alias is a reference: ``a: &a [x, x]`` then ``b: &b [*a, *a]`` ... doubles at every line, so a file of a
few hundred bytes describes billions of values. PyYAML loads it cheaply (the values are shared), but anything
that later walks it (the typed conversion of :mod:`hf_transfer.config.parse`, ``json.dumps``, a card)
expands it: 4 GB before a ``MemoryError``; a recursive alias (``a: &a [*a]``) ends in a bare "Circular
reference detected". So the bound holds where the file is read, whatever reads the values after:

* the file is at most :data:`MAX_FILE_BYTES` (recipes are a few KB);
* values nest at most :data:`MAX_DEPTH` levels (deeper YAML or JSON overflows the parsers' recursion);
* every top-level key expands (aliases followed) to at most :data:`MAX_EXPANDED` nodes plus scalar
  characters, about what a file of :data:`MAX_FILE_BYTES` can spell out without aliases: an anchor reused a
  few times still works, a bomb does not;
* a recursive alias is refused.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from hf_transfer.errors import TransferConfigError

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_EXPANDED = MAX_FILE_BYTES


class _OutOfBounds(Exception):
    """Raised inside the loader; turned into a TransferConfigError that names the file."""

    def __init__(self, message: str, mark: yaml.Mark, key: str | None) -> None:
        super().__init__(message)
        self.mark, self.key = mark, key


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses deep nesting while composing and over-expanding or recursive aliases
    before constructing (so nothing is ever expanded)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._top_key: str | None = None  # the top-level key whose value is being composed (for the message)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _OutOfBounds(f"values nest deeper than {MAX_DEPTH} levels", mark, self._top_key)
            node = super().compose_node(parent, index)
            if self._depth == 2 and isinstance(parent, yaml.MappingNode) and index is None:
                self._top_key = node.value if isinstance(node, yaml.ScalarNode) else None
            return node
        finally:
            self._depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                _check_expansion(value_node, key_node)
        elif node is not None:
            _check_expansion(node, None)
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node, key_node: yaml.Node | None) -> None:
    """Expanded size of ``root`` (each node 1, each scalar also its length), aliases followed, computed on the
    shared node graph (memoised, iterative: linear in the file, never expanded); refuses a cycle."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            own = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
            size[key] = min(MAX_EXPANDED + 1, own + sum(size[id(c)] for c in _children(node)))
            continue
        if key in size:
            continue
        if key in on_path:
            raise _OutOfBounds(
                f"a YAML alias refers to the value that contains it (recursive alias to the anchor at line "
                f"{node.start_mark.line + 1})",
                *_located(root, key_node),
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    if size[id(root)] > MAX_EXPANDED:
        raise _OutOfBounds(
            f"the value expands through YAML aliases to more than {MAX_EXPANDED} nodes and characters (a config "
            f"file is read within {MAX_FILE_BYTES} bytes); write the value out instead of nesting aliases",
            *_located(root, key_node),
        )


def _located(root: yaml.Node, key_node: yaml.Node | None) -> tuple[yaml.Mark, str | None]:
    """(mark, key name) of a top-level value for the message."""
    if key_node is None:
        return root.start_mark, None
    return key_node.start_mark, key_node.value if isinstance(key_node, yaml.ScalarNode) else None


def _where(path: str, err: _OutOfBounds) -> str:
    key = f" key {err.key!r}" if err.key else ""
    return f"Config file {path!r}{key} (line {err.mark.line + 1}): {err}."


def read_config_file(path: str) -> Any:
    """The value held by the YAML (or ``.json``) file at ``path`` (any JSON value).

    Refused with a message naming the file when it is too large, too deep, expands too far through aliases, or does
    not parse."""
    if not os.path.isfile(path):
        raise TransferConfigError(f"Config file {path!r} does not exist.")
    with open(path, "rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise TransferConfigError(
            f"Config file {path!r} is larger than {MAX_FILE_BYTES} bytes; a config holds argument names and "
            "values (a few KB). Is it the right file?"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TransferConfigError(f"Config file {path!r} is not UTF-8 text: {err}.") from None
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except RecursionError:
            raise TransferConfigError(f"Config file {path!r}: values nest too deeply to parse.") from None
        except json.JSONDecodeError as err:
            raise TransferConfigError(f"Config file {path!r} is not valid JSON: {err}.") from None
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass: no Python tags
    except _OutOfBounds as err:
        raise TransferConfigError(_where(path, err)) from None
    except yaml.YAMLError as err:
        raise TransferConfigError(f"Config file {path!r} is not valid YAML: {err}") from None
