"""PyPI's ``hf-transfer`` (the Hub's Rust download accelerator) installs a top-level ``hf_transfer`` too: installed
in one venv with this package, one's files overwrite the other's. Both install orders, in a real venv holding
both wheels (the other one is the real 0.1.9 wheel from the package registry), then the advice followed."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest
from test_packaging import _build_wheel

import hf_transfer
from hf_transfer.runtime import installation

OTHER_PIN = "hf-transfer==0.1.9"


def _pip(venv_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """This interpreter's pip acting on the venv (the venv itself has no pip: created in a second)."""
    cmd = [sys.executable, "-m", "pip", "--python", str(venv_dir / "bin" / "python"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """A command of the venv, outside the checkout (so that only the venv's hf_transfer can be imported)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([*args], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> tuple[Path, Path]:
    """(this package's wheel, hf-transfer's wheel)."""
    root = tmp_path_factory.mktemp("wheels")
    ours = _build_wheel(root)
    other_dir = root / "other"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(other_dir)]
        + [OTHER_PIN],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        pytest.skip(f"the package registry gave no {OTHER_PIN} wheel: {proc.stderr.strip()[-300:]}")
    (other,) = other_dir.glob("hf_transfer-*.whl")
    return ours, other


@pytest.fixture
def bare_venv(tmp_path) -> Path:
    """A venv with nothing but the standard library (no site packages of this one)."""
    path = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(path)
    return path


def _check_import_and_command(venv_dir: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, ...]:
    python, command = str(venv_dir / "bin" / "python"), str(venv_dir / "bin" / "hf-transfer")
    imported = _run(python, "-c", "import hf_transfer.errors", tmp_path=tmp_path)
    started = _run(command, "plan", "--config", "x.yaml", tmp_path=tmp_path)
    return imported, started


@pytest.mark.slow
def test_installed_after_the_other_package(wheels, bare_venv, tmp_path):
    """Ours last: our __init__.py replaced theirs, their .so sits in our folder. The import warns, the command
    refuses, both say what to do; the advice, followed, leaves a clean install."""
    ours, other = wheels
    _pip(bare_venv, "install", "-q", "--no-deps", str(other))
    _pip(bare_venv, "install", "-q", "--no-deps", str(ours))
    imported, started = _check_import_and_command(bare_venv, tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert "RuntimeWarning" in imported.stderr and "hf_transfer.abi3.so" in imported.stderr
    assert "pip uninstall -y hf-transfer" in imported.stderr and "huggingface_hub >= 1.0" in imported.stderr
    assert started.returncode == 2 and started.stderr.startswith("hf-transfer: error: The PyPI package hf-transfer")
    assert "pip uninstall -y hf-transfer" in started.stderr and "RuntimeWarning" not in started.stderr  # said once
    assert f"pip install --force-reinstall --no-deps {ours}" in started.stderr  # from where it was installed

    _pip(bare_venv, "uninstall", "-y", "hf-transfer")  # the advice: it also removes our __init__.py ...
    assert not (next((bare_venv / "lib").glob("python3*/site-packages")) / "hf_transfer" / "__init__.py").exists()
    _pip(bare_venv, "install", "-q", "--no-deps", "--force-reinstall", str(ours))  # ... hence the reinstall
    python = str(bare_venv / "bin" / "python")
    clean = _run(python, "-W", "error", "-c", "import hf_transfer.errors", tmp_path=tmp_path)
    assert clean.returncode == 0 and clean.stderr == "", clean.stderr
    helped = _run(str(bare_venv / "bin" / "hf-transfer"), "--help", tmp_path=tmp_path)
    assert helped.returncode == 0 and "usage: hf-transfer" in helped.stdout


@pytest.mark.slow
def test_overwritten_by_the_other_package(wheels, bare_venv, tmp_path):
    """Theirs last: their __init__.py (which loads their .so) replaced ours. Our modules refuse to import with the
    fix (instead of "cannot import name '__version__'"); the command refuses with it."""
    ours, other = wheels
    _pip(bare_venv, "install", "-q", "--no-deps", str(ours))
    _pip(bare_venv, "install", "-q", "--no-deps", str(other))
    imported, started = _check_import_and_command(bare_venv, tmp_path)
    assert imported.returncode == 1 and "ImportError: The PyPI package hf-transfer" in imported.stderr
    assert "its __init__.py replaced this package's" in imported.stderr
    assert started.returncode == 2 and "its __init__.py replaced this package's" in started.stderr
    assert f"pip install --force-reinstall --no-deps {ours}" in started.stderr
    assert "Traceback" not in started.stderr


@pytest.mark.slow
def test_an_editable_install_shadowed_by_the_other_package(wheels, bare_venv, tmp_path):
    """`pip install -e .` (as scripts/setup.sh does) keeps our files in the checkout: theirs, in site-packages, is
    imported first. The command still starts (setuptools' editable finder) and says so, with the -e reinstall."""
    ours, other = wheels
    checkout = ours.parent.parent / "src"  # the copy of the sources _build_wheel built from
    _pip(bare_venv, "install", "-q", "--no-deps", "-e", str(checkout))
    _pip(bare_venv, "install", "-q", "--no-deps", str(other))
    imported, started = _check_import_and_command(bare_venv, tmp_path)
    assert imported.returncode == 1 and "`import hf_transfer` loads it" in imported.stderr
    assert started.returncode == 2 and f"instead of this package ({checkout / 'hf_transfer'})" in started.stderr
    assert f"pip install --no-deps -e {checkout}" in started.stderr
    _pip(bare_venv, "uninstall", "-y", "hf-transfer")
    python = str(bare_venv / "bin" / "python")
    clean = _run(python, "-W", "error", "-c", "import hf_transfer.errors", tmp_path=tmp_path)
    assert clean.returncode == 0 and clean.stderr == "", clean.stderr


def test_this_install_is_whole():
    """Here (the checkout's package): no foreign file, our own __init__.py, nothing to say."""
    assert hf_transfer.__distribution__ == installation.DISTRIBUTION
    assert installation.foreign_files() == [] and not installation.init_replaced()
    assert installation.conflict() is None


def test_the_checks_see_the_other_package_files(tmp_path):
    """Unit level: a compiled file in the package folder and the other dist-info beside it are found; ours is
    not mistaken for it."""
    package = tmp_path / "site" / "hf_transfer"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (tmp_path / "site" / "hf_transfer_learning-0.1.0.dist-info").mkdir()
    assert installation.foreign_files(str(package)) == [] and installation.other_metadata_beside(str(package)) == []
    (package / "hf_transfer.abi3.so").write_bytes(b"\x7fELF")
    (tmp_path / "site" / "hf_transfer-0.1.9.dist-info").mkdir()
    assert installation.foreign_files(str(package)) == ["hf_transfer.abi3.so"]
    assert installation.other_metadata_beside(str(package)) == ["hf_transfer-0.1.9.dist-info"]
