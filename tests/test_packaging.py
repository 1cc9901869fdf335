"""A non-editable install puts kernels/ and reference/ inside the nbclust namespace only."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_namespaces(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    # Build the wheel with this interpreter's setuptools, install it with the venv's pip.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path, REPO],
        check=True, cwd=tmp_path, capture_output=True,
    )
    (wheel,) = tmp_path.glob("nbclust-*.whl")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", wheel], check=True, cwd=tmp_path, capture_output=True)
    probe = (
        "import importlib.util as u, nbclust.kernels.cpu, nbclust.reference, nbclust.optable;"
        "print(nbclust.kernels.cpu.__file__);"
        "print(u.find_spec('kernels') is None and u.find_spec('reference') is None)"
    )
    out = subprocess.run([python, "-c", probe], check=True, cwd=tmp_path, capture_output=True, text=True)
    where, top_level_absent = out.stdout.split()
    assert where.startswith(str(env_dir)), where
    assert top_level_absent == "True"
