"""The package is layered along the flow data -> models -> methods -> training -> evaluation -> hub, with the
command line on top: a lower layer never imports a higher one, the import graph has no cycle, and nothing the
package runs imports its test tooling (checked on the source, every module, module- and function-level imports)."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

import hf_transfer

ROOT = pathlib.Path(hf_transfer.__file__).parent
SHARED = ("hf_transfer.errors", "hf_transfer.runtime")  # every module may import these
BELOW_TRAINING = ("hf_transfer.data", "hf_transfer.models", "hf_transfer.methods", "hf_transfer.evaluation")
#: module (or package) -> what it may import from hf_transfer besides SHARED; a module follows its longest rule
RULES = {
    "hf_transfer": (),  # __init__: the installation check only (runtime)
    "hf_transfer.errors": (),
    "hf_transfer.runtime": (),  # shared by all: nothing but errors
    "hf_transfer.help": (),  # the train options' help text: given the arguments by the config
    "hf_transfer.data": ("hf_transfer.data",),
    "hf_transfer.models": ("hf_transfer.data", "hf_transfer.models"),
    # the losses: pure torch, no other layer (the registry is where they register)
    "hf_transfer.methods.domain": ("hf_transfer.methods.domain", "hf_transfer.methods.registry"),
    # the test-time methods: pure torch too, and SDAT's SAM step (SAR's ascent)
    "hf_transfer.methods.tta": (
        "hf_transfer.methods.tta",
        "hf_transfer.methods.registry",
        "hf_transfer.methods.domain",
    ),
    "hf_transfer.methods": ("hf_transfer.data", "hf_transfer.models", "hf_transfer.methods"),
    # the arguments: checked against the registered methods, model options and the recipe defaults
    "hf_transfer.config": (
        "hf_transfer.config",
        "hf_transfer.help",
        "hf_transfer.data",
        "hf_transfer.models",
        "hf_transfer.methods",
        "hf_transfer.training.defaults",
    ),
    # scores, metrics and figures; reuses methods (domain_gap measures with DAN's MMD), reads data through the
    # data layer (label matching by name, the eval input path)
    "hf_transfer.evaluation": BELOW_TRAINING,
    "hf_transfer.transferability": ("hf_transfer.evaluation",),  # the public name of the scores
    "hf_transfer.training": (*BELOW_TRAINING, "hf_transfer.config", "hf_transfer.training"),
    # the one place that ties everything together: a run ends with its card and push
    "hf_transfer.training.run": (*BELOW_TRAINING, "hf_transfer.config", "hf_transfer.training", "hf_transfer.hub"),
    "hf_transfer.hub": (*BELOW_TRAINING, "hf_transfer.hub"),
    # choosing a backbone: a frozen feature pass over a run's data, before any training
    "hf_transfer.selection": (*BELOW_TRAINING, "hf_transfer.config", "hf_transfer.training", "hf_transfer.selection"),
    "hf_transfer.demo": ("hf_transfer.config", "hf_transfer.training", "hf_transfer.hub"),
    # trying a model in the browser, and its Space beside the model repo: on top, beside the command line
    "hf_transfer.app": (*BELOW_TRAINING, "hf_transfer.hub", "hf_transfer.app"),
    # the command line: any layer's library code, never the test tooling
    "hf_transfer.cli": tuple(f"hf_transfer.{p.stem}" for p in ROOT.iterdir() if p.stem != "testing"),
    "hf_transfer.testing": ("hf_transfer",),  # test tooling (the Hub test server, tiny models): may use anything
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(path: pathlib.Path) -> list[str]:
    """Every hf_transfer module ``path`` imports, anywhere in it (``from pkg import sub`` counts ``pkg.sub``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the package uses absolute imports)"
            out.append(node.module or "")
            out += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
    return [n for n in out if n.split(".")[0] == "hf_transfer"]


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _rule(module: str) -> str | None:
    matching = [r for r in RULES if _within(module, (r,))]
    return max(matching, key=len) if matching else None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports_only_its_own_and_lower_layers(module):
    rule = _rule(module)
    assert rule is not None, f"{module}: no layer rule; add one to RULES"
    allowed = RULES[rule] + SHARED
    bad = [n for n in _imports(MODULES[module]) if n != "hf_transfer" and not _within(n, allowed)]
    assert not bad, f"{module} (rule {rule!r}) imports {bad}"


def _graph() -> dict[str, set[str]]:
    """module -> the modules it imports, without a package ``__init__``'s imports of its own submodules."""
    graph = {}
    for name, path in MODULES.items():
        own = path.name == "__init__.py"
        graph[name] = {
            n for n in _imports(path) if n in MODULES and n != name and not (own and n.startswith(name + "."))
        }
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``a -> b -> ... -> a``) by depth-first search, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_outside_the_test_tooling_imports_it():
    users = [m for m in MODULES if not _within(m, ("hf_transfer.testing",))]
    bad = {m: n for m in users for n in _imports(MODULES[m]) if _within(n, ("hf_transfer.testing",))}
    assert not bad, f"modules that import hf_transfer.testing: {bad}"


def test_the_command_and_a_run_load_no_test_tooling(tmp_path):
    """What a user runs (the command, a training run through its Python entry point) never loads it."""
    code = (
        "import sys, hf_transfer.cli.main, hf_transfer.training.run, hf_transfer.selection.rank, "
        "hf_transfer.evaluation.evaluate, hf_transfer.hub.push; "
        "assert 'hf_transfer.testing' not in sys.modules, sorted(m for m in sys.modules if 'testing' in m)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
