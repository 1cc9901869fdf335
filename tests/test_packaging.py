"""A non-editable install puts kernels/ and reference/ inside the nbclust namespace only."""

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def build_wheel(out: Path) -> Path:
    """The wheel of the checkout, built as pip builds it: in an isolated environment with the build
    backend that ``pyproject.toml`` asks for (from the package index pip is configured with), so the
    result does not depend on the setuptools installed here (a fresh ``python3 -m venv`` of
    Python 3.11 has 65.5, too old to build a wheel without the ``wheel`` package).  Skips when no index
    can provide the backend (offline, no local index)."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, REPO],
                       cwd=out, capture_output=True, text=True)
    if r.returncode != 0 and "installing build dependencies" in r.stderr:
        pytest.skip("pip could not install the build backend (setuptools) from any index: " + r.stderr[-300:])
    assert r.returncode == 0, r.stderr
    (wheel,) = out.glob("nbclust-*.whl")
    return wheel


def venv_seeing_these_packages(env_dir: Path) -> Path:
    """A new venv whose ``sys.path`` ends with this environment's site-packages (numpy, numba, ...; a
    plain path line, so no ``.pth`` hook of this environment, such as an editable nbclust, runs there)."""
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([python, "-c", where], check=True, capture_output=True, text=True).stdout.strip()
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_parent_environment.pth").write_text("".join(f"{p}\n" for p in sorted(paths)))
    return python


@pytest.mark.slow
def test_wheel_install_namespaces(tmp_path):
    env_dir = tmp_path / "venv"
    python = venv_seeing_these_packages(env_dir)
    wheel = build_wheel(tmp_path)
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
