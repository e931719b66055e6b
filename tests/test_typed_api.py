"""Types as documentation: every public function and method of the package is annotated and says why it exists.

The rule, checked on the source of every module under hf_transfer/ (the test kit hf_transfer/testing/ included):

- Checked: module-level functions and the methods of module-level classes, including `@property` getters and
  `@staticmethod`/`@classmethod`s. Public means the name does not start with `_` (for a method: nor its class's);
  functions nested in functions are private helpers and not checked. Dunder methods are not checked, except
  `__init__`.
- Every parameter except a method's first (`self`/`cls`) is annotated, `*args`/`**kwargs` included, and so is
  the return (`__init__` included: `-> None`).
- A docstring whose first line is a sentence: it starts with a capital letter, a digit, a backtick or a quote and
  ends with `.`, `?` or `!` (a closing backtick, quote or bracket may follow).
- No docstring is required of `__init__` (the class's docstring says why it exists), of a property setter/deleter
  (the getter's says it), of an `@overload` stub, nor of a method that overrides a hook of a library class: a
  method whose name is also an attribute of a base class in the class's MRO that is defined outside hf_transfer
  (`forward` of an `nn.Module`, `on_step_end` of a `TrainerCallback`, `compute_loss` of the `Trainer`...). That
  rule needs the class itself, so the module is imported to resolve its MRO. Such an override still needs every
  annotation.
"""

import ast
import importlib
import inspect
import pathlib
import re

import hf_transfer

ROOT = pathlib.Path(hf_transfer.__file__).parent

_SENTENCE = re.compile(r"""^[A-Z0-9`'"].*[.?!][`'")\]]*$""")


def _modules() -> list[pathlib.Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: pathlib.Path) -> str:
    parts = ("hf_transfer", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements of a module or class body, with those under a top-level `if`/`try` flattened in."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If):
            out += _top_level(node.body) + _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            out += _top_level(node.body) + _top_level(node.orelse) + _top_level(node.finalbody)
            for handler in node.handlers:
                out += _top_level(handler.body)
        else:
            out.append(node)
    return out


def _decorator_names(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    names = set()
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, ast.Attribute):
            names.add(target.attr)
    return names


def _missing_annotations(fn: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> list[str]:
    args = fn.args
    positional = args.posonlyargs + args.args
    if is_method and "staticmethod" not in _decorator_names(fn):
        positional = positional[1:]  # self / cls
    params = positional + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a is not None]
    missing = [a.arg for a in params if a.annotation is None]
    if fn.returns is None:
        missing.append("return")
    return missing


def _library_hooks(module_name: str, class_name: str) -> set[str]:
    """Attribute names the class inherits from bases defined outside hf_transfer."""
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not inspect.isclass(cls):
        return set()
    names: set[str] = set()
    for base in cls.__mro__[1:]:
        if base is not object and not base.__module__.startswith("hf_transfer"):
            names.update(vars(base))
    return names


def _check(fn: ast.FunctionDef | ast.AsyncFunctionDef, where: str, hooks: set[str] | None) -> list[str]:
    is_method = hooks is not None
    name = fn.name
    if name.startswith("__") and name.endswith("__") and name != "__init__":
        return []
    if name.startswith("_") and name != "__init__":
        return []
    problems = []
    missing = _missing_annotations(fn, is_method)
    if missing:
        problems.append(f"{where} {name}: not annotated: {', '.join(missing)}")
    decorators = _decorator_names(fn)
    docstring_exempt = (
        name == "__init__"
        or "overload" in decorators
        or bool(decorators & {"setter", "deleter"})
        or (is_method and name in (hooks or set()))
    )
    if not docstring_exempt:
        doc = ast.get_docstring(fn)
        first = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
        if not first:
            problems.append(f"{where} {name}: no docstring")
        elif not _SENTENCE.match(first):
            problems.append(f"{where} {name}: the docstring's first line is not a sentence: {first!r}")
    return problems


def _offenders(path: pathlib.Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node in _top_level(tree.body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            problems += _check(node, f"{rel}:{node.lineno}", None)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            methods = [n for n in _top_level(node.body) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
            if not methods:
                continue
            hooks = _library_hooks(_module_name(path), node.name) if node.bases else set()
            for fn in methods:
                problems += _check(fn, f"{rel}:{fn.lineno}", hooks)
    return problems


def test_every_public_function_is_typed_and_documented():
    found = {path.relative_to(ROOT).as_posix(): _offenders(path) for path in _modules()}
    offenders = [p for problems in found.values() for p in problems]
    assert not offenders, f"{len(offenders)} public functions/methods to fix:\n" + "\n".join(offenders)


def test_the_rule_catches_what_it_names():
    """The checker itself: each kind of offender is reported, and each exemption holds."""
    source = '''
def untyped(a, b: int):
    """Does a thing."""
def no_doc(a: int) -> int:
    return a
def lowercase() -> None:
    """does a thing."""
def _private(a):
    pass
class Public:
    def __init__(self, a):
        pass
    def __eq__(self, other):
        return True
    @property
    def size(self):
        """The size."""
    @size.setter
    def size(self, value: int) -> None:
        pass
    @staticmethod
    def make(a: int) -> "Public":
        """Build one."""
class _Hidden:
    def open(self, a):
        pass
'''
    tree = ast.parse(source)
    problems = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            problems += _check(node, "m.py", None)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef):
                    problems += _check(fn, "m.py", set())
    assert problems == [
        "m.py untyped: not annotated: a, return",
        "m.py no_doc: no docstring",
        "m.py lowercase: the docstring's first line is not a sentence: 'does a thing.'",
        "m.py __init__: not annotated: a, return",
        "m.py size: not annotated: return",
    ]
    hooked = ast.parse("def forward(self, x):\n    return x\n").body[0]
    assert isinstance(hooked, ast.FunctionDef)
    assert _check(hooked, "m.py", {"forward"}) == ["m.py forward: not annotated: x, return"]
    assert "forward" in _library_hooks("hf_transfer.models.bottleneck", "BottleneckHead")
