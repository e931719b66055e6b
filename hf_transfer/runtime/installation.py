"""Is the installed ``hf_transfer`` this package, whole? PyPI's ``hf-transfer`` installs the same import name.

``hf-transfer`` (the Hub's Rust download accelerator, pulled in by ``huggingface_hub[hf_transfer]``) ships
``hf_transfer/__init__.py`` and ``hf_transfer/hf_transfer.abi3.so``. Installed in one environment with this
package (distribution ``hf-transfer-learning``), pip writes both into one folder without a word: whichever
came last owns ``__init__.py``, and uninstalling either removes that file from under the other. Nothing here
uses that package (huggingface_hub >= 1.0 no longer does either), so the fix is to uninstall it and reinstall
this package. Checked at import (a warning; an ImportError from :mod:`hf_transfer.errors`, which every module
imports, when the other package's ``__init__.py`` replaced ours) and when the ``hf-transfer`` command starts
(an error exit). Only the standard library, and at import only a folder listing: the import stays light.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator

DISTRIBUTION = "hf-transfer-learning"
OTHER_DISTRIBUTION = "hf-transfer"
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # hf_transfer/, above runtime/
_COMPILED = (".so", ".pyd", ".dylib")  # this package ships no compiled file
_OTHER_DIST_INFO = re.compile(r"hf[_-]transfer-[^-]+\.(dist|egg)-info", re.IGNORECASE)
_OWN_DIST_INFO = "hf_transfer_learning-*.dist-info"


def _origins(package_dir: str) -> Iterator[str]:
    """This package's ``direct_url.json`` texts: the dist-info beside the package (a wheel install), then
    importlib.metadata's (an editable install keeps its dist-info in site-packages, away from the checkout)."""
    import glob

    for info in glob.glob(os.path.join(os.path.dirname(package_dir), _OWN_DIST_INFO)):
        try:
            with open(os.path.join(info, "direct_url.json")) as f:
                yield f.read()
        except OSError:
            continue
    from importlib import metadata

    try:
        yield metadata.distribution(DISTRIBUTION).read_text("direct_url.json") or ""
    except metadata.PackageNotFoundError:
        return


def reinstall_command(package_dir: str = _PACKAGE_DIR) -> str:
    """The pip command that reinstalls this package from where it came, or a general one.

    Where it came from is its ``direct_url.json``: the wheel or checkout it was installed from."""
    import json
    from urllib.parse import unquote, urlparse

    for text in _origins(package_dir):
        try:
            origin = json.loads(text)
        except ValueError:
            continue
        url = urlparse(str(origin.get("url", "")) if isinstance(origin, dict) else "")
        if url.scheme == "file":
            path = unquote(url.path)
            if origin.get("dir_info", {}).get("editable"):
                return f"pip install --no-deps -e {path}"
            return f"pip install --force-reinstall --no-deps {path}"
    return f"pip install --force-reinstall --no-deps <the {DISTRIBUTION} wheel or checkout you installed>"


def fix() -> str:
    """What to do, in two commands."""
    return (
        f"Uninstall it (`pip uninstall -y {OTHER_DISTRIBUTION}`; huggingface_hub >= 1.0 no longer uses it), then "
        f"reinstall this package, as that uninstall also removes the hf_transfer/__init__.py the two share in one "
        f"folder (`{reinstall_command()}`)."
    )


def foreign_files(package_dir: str = _PACKAGE_DIR) -> list[str]:
    """Compiled files in this package's folder (the other package's ``hf_transfer.abi3.so``)."""
    try:
        return sorted(n for n in os.listdir(package_dir) if n.endswith(_COMPILED))
    except OSError:
        return []


def other_metadata_beside(package_dir: str = _PACKAGE_DIR) -> list[str]:
    """The other package's ``*.dist-info`` in the folder this package is installed in."""
    try:
        return sorted(n for n in os.listdir(os.path.dirname(package_dir)) if _OTHER_DIST_INFO.fullmatch(n))
    except OSError:
        return []


def init_replaced() -> bool:
    """The imported ``hf_transfer`` package is not ours: its ``__init__.py`` is the other package's."""
    package = sys.modules.get("hf_transfer")
    return package is not None and getattr(package, "__distribution__", None) != DISTRIBUTION


def _installed_other() -> str | None:
    """Version of the other distribution anywhere on sys.path (importlib.metadata: ~0.1 s, not for import)."""
    from importlib import metadata

    try:
        return metadata.version(OTHER_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def conflict(thorough: bool = False) -> str | None:
    """What is wrong, in a sentence with the fix, or None.

    ``thorough`` also asks importlib.metadata (finds the
    other package installed in another folder of sys.path too)."""
    found = []
    if init_replaced():
        imported = os.path.dirname(os.path.abspath(getattr(sys.modules["hf_transfer"], "__file__", None) or "?"))
        if imported == _PACKAGE_DIR:
            found.append(f"its __init__.py replaced this package's ({os.path.join(_PACKAGE_DIR, '__init__.py')})")
        else:  # e.g. this package installed editable: the other one, in site-packages, is found first
            found.append(f"`import hf_transfer` loads it ({imported}) instead of this package ({_PACKAGE_DIR})")
    files = foreign_files()
    if files:
        found.append(f"its {', '.join(files)} is in this package's folder {_PACKAGE_DIR}")
    metadata = other_metadata_beside()
    if metadata:
        found.append(f"its {', '.join(metadata)} is installed beside this package")
    version = _installed_other() if thorough and not found else None
    if version is not None:
        found.append(f"version {version} is installed in this environment")
    if not found:
        return None
    return (
        f"The PyPI package {OTHER_DISTRIBUTION} (the Hub's download accelerator, which huggingface_hub[hf_transfer] "
        f"installs) also installs a top-level `hf_transfer`, the import name of {DISTRIBUTION}: "
        f"{'; '.join(found)}. {fix()}"
    )


def require_own_package() -> None:
    """Raise ImportError with the fix when the package ``__init__.py`` is the other package's.

    Our modules are then loaded under a foreign package and fail in confusing ways, e.g. ``cannot import name
    '__version__'``."""
    if init_replaced():
        raise ImportError(conflict())
