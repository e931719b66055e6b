"""The wheel is what `pip install hf-transfer-learning` gives a user: it must hold every package and the
model card template (model_cards/ sits outside hf_transfer/ in the repository), and the installed code
must read the template from itself, not from a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import setuptools

ROOT = Path(__file__).resolve().parents[1]


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources the build reads, so the checkout gets no build/ or egg-info."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "examples")
    for name in ("hf_transfer", "model_cards"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = dist.glob("hf_transfer_learning-*.whl")
    return wheel


def test_wheel_ships_every_package_and_the_card_template(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hf_transfer/_model_cards/model_card.md" in names
    for package in setuptools.find_packages(str(ROOT), include=["hf_transfer*"]):
        assert package.replace(".", "/") + "/__init__.py" in names, f"{package} is missing from the wheel"
    assert not [n for n in names if n.startswith(("model_cards/", "hf_transfer/_model_cards/examples/"))]

    # installed from the wheel (unpacked, first on sys.path), run outside the checkout
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import hf_transfer._model_cards as m; "
        "from hf_transfer.hub import cards; print(m.__file__); print(cards.template_text(), end='')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(site)], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True
    )
    location, template = proc.stdout.split("\n", 1)
    assert Path(location).is_relative_to(site)
    assert template == (ROOT / "model_cards" / "model_card.md").read_text(encoding="utf-8")
