"""Shared by the command-line tests: the fake method, in-process and subprocess runs, small data."""

import sys
from pathlib import Path

import numpy as np
import pytest

from nbclust.cli import fit

TESTS = Path(__file__).parent
FAKE = ["--method", "fake", "--epochs", "2", "--pretrain-epochs", "1", "--quiet"]
WRAPPER = (
    "import sys; sys.path.insert(0, {tests!r}); import nbclust.cli.fit as f; "
    "f.METHODS['fake'] = ('fake_estimator', 'FakeClusterer'); sys.exit(f.main(sys.argv[1:]))"
)


@pytest.fixture
def fake_method(monkeypatch, tmp_path):
    """``--method fake`` (tests/fake_estimator.py) registered; the working folder is ``tmp_path``."""
    monkeypatch.setitem(fit.METHODS, "fake", ("fake_estimator", "FakeClusterer"))
    monkeypatch.chdir(tmp_path)


def run(argv, capsys):
    """(exit code, stdout, stderr) of ``main(argv)``."""
    try:
        code = fit.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def cli(*args):
    """A subprocess command line of ``python -m nbclust.fit`` that knows ``--method fake``."""
    return [sys.executable, "-c", WRAPPER.format(tests=str(TESTS)), *map(str, args)]


def small_npz(path, n=40, size=8, y=True, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size)).astype(dtype)
    np.savez(path, **({"x": x, "y": np.arange(n) % 3} if y else {"x": x}))
    return path


def listing(folder) -> dict:
    """``{relative path: bytes}`` of every file under ``folder`` (folders as None)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}
