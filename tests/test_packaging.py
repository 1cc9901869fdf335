"""The package's layout: its floors (README, "What is inside"), the packages pyproject.toml installs,
the public short names and commands, and a non-editable install that puts kernels/ and reference/
inside the nbclust namespace only."""

import ast
import importlib
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"nbclust": REPO / "nbclust", "nbclust.kernels": REPO / "kernels", "nbclust.reference": REPO / "reference"}
"""Where each installed top package's files are (pyproject.toml's package-dir)."""

FLOORS = [  # bottom up: a module imports only modules of its own part and of lower floors
    {"registry": ("nbclust.registry",)},
    {"spec": ("nbclust.engine.optable", "nbclust.engine.convshape"), "data": ("nbclust.data",)},
    {"backends": ("nbclust.engine.backend", "nbclust.reference", "nbclust.kernels")},
    {"layers": ("nbclust.engine.nn", "nbclust.engine.optim", "nbclust.engine.gradcheck")},
    {"methods": ("nbclust.methods",)},
    {"front ends": ("nbclust.cli",)},
    {"commands": ("nbclust.fit", "nbclust.experiments", "nbclust.gradcheck")},
]
FACES = {"nbclust", "nbclust.engine"}  # package faces on no floor: ``nbclust`` is loaded by every import of the package


def modules() -> dict[str, Path]:
    """Every module of the installed package, by its dotted name."""
    out = {}
    for top, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join((top, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return out


def floor_of(name: str) -> tuple[int, str] | None:
    """(floor, part) of a module: the part with the longest prefix of ``name``."""
    found = [(len(prefix), i, part) for i, floor in enumerate(FLOORS) for part, prefixes in floor.items()
             for prefix in prefixes if name == prefix or name.startswith(prefix + ".")]
    return max(found)[1:] if found else None


def imported(path: Path, known) -> set[str]:
    """The nbclust modules ``path`` imports anywhere in it (functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "nbclust"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "nbclust":
            out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                    for a in node.names}
    return out


def test_every_module_stands_on_a_floor_and_imports_only_downwards():
    known = modules()
    wrong = []
    for name, path in sorted(known.items()):
        if name in FACES:
            continue
        here = floor_of(name)
        assert here is not None, f"{name} stands on no floor of FLOORS (README, What is inside)"
        for target in sorted(imported(path, known) - FACES):
            there = floor_of(target)
            if there is None or (there[1] != here[1] and there[0] >= here[0]):
                wrong.append(f"{name} ({here[1]}) imports {target} ({there and there[1]})")
    assert not wrong, wrong


def test_floor_check_sees_an_upward_import(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from nbclust.cli.fit import main\n")
    target, = imported(tmp_path / "m.py", modules())
    assert target == "nbclust.cli.fit" and floor_of(target)[0] > floor_of("nbclust.methods.base")[0]


def test_pyproject_installs_every_package_on_disk():
    """setuptools installs the listed packages only: one missing from the list would be absent from a wheel."""
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    on_disk = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert sorted(listed) == sorted(on_disk)


def test_public_names_are_the_modules_of_their_floors():
    import nbclust
    from nbclust import datasets, features, nn, optim

    for short, module in [(nn, "nbclust.engine.nn"), (optim, "nbclust.engine.optim"),
                          (datasets, "nbclust.data.datasets"), (features, "nbclust.data.features")]:
        assert short is importlib.import_module(module)
    assert nbclust.ACPIC is importlib.import_module("nbclust.methods.acpic").ACPIC
    assert nbclust.DenseSIFT is nbclust.features.DenseSIFT and callable(nbclust.datasets.load)
    with pytest.raises(AttributeError, match="has no attribute 'io'"):
        nbclust.io


@pytest.mark.parametrize("command", ["fit", "experiments", "gradcheck"])
def test_python_m_commands(command):
    r = subprocess.run([sys.executable, "-m", f"nbclust.{command}", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: "), r.stderr


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
        "import importlib.util as u, nbclust.kernels.cpu, nbclust.reference, nbclust.engine.optable;"
        "print(nbclust.kernels.cpu.__file__);"
        "print(u.find_spec('kernels') is None and u.find_spec('reference') is None)"
    )
    out = subprocess.run([python, "-c", probe], check=True, cwd=tmp_path, capture_output=True, text=True)
    where, top_level_absent = out.stdout.split()
    assert where.startswith(str(env_dir)), where
    assert top_level_absent == "True"
