"""The package is layered along the flow data -> models -> methods -> training -> evaluation -> hub:
a lower layer never imports a higher one (checked on the source, every module)."""

import ast
import pathlib

import pytest

import hf_transfer

ROOT = pathlib.Path(hf_transfer.__file__).parent
SHARED = ("hf_transfer.errors", "hf_transfer.runtime")
ALLOWED = {  # folder -> what its modules may import from hf_transfer (besides SHARED)
    "data": ("hf_transfer.data",),
    "models": ("hf_transfer.data", "hf_transfer.models"),
    # the losses: pure torch, no other layer (the registry is where they register)
    "methods/domain": ("hf_transfer.methods.domain", "hf_transfer.methods.registry"),
    "methods": ("hf_transfer.data", "hf_transfer.models", "hf_transfer.methods"),
    # evaluation comes after training in the flow; it reuses methods (domain_gap measures with DAN's MMD) and
    # reads data through the data layer (label matching by name, the eval input path)
    "evaluation": ("hf_transfer.data", "hf_transfer.models", "hf_transfer.evaluation", "hf_transfer.methods"),
    "hub": (
        "hf_transfer.data",
        "hf_transfer.models",
        "hf_transfer.methods",
        "hf_transfer.evaluation",
        "hf_transfer.hub",
    ),
}


def _imports(path: pathlib.Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the package uses absolute imports)"
            out.append(node.module or "")
    return [n for n in out if n.split(".")[0] == "hf_transfer"]


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_lower_layers_never_import_higher_ones(folder):
    allowed = ALLOWED[folder] + SHARED
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files
    for path in files:
        if folder == "methods" and path.is_relative_to(ROOT / "methods" / "domain"):
            continue  # checked under its own, stricter rule
        bad = [n for n in _imports(path) if not n.startswith(allowed)]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
