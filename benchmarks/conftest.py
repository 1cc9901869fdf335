"""pytest-benchmark options: one runtime per process.

    pytest benchmarks --runtime nbclust --bench-threads 2 --benchmark-save nbclust
    pytest benchmarks --runtime torch   --bench-threads 2 --benchmark-save torch
    pytest benchmarks --runtime nbclust --bench-batch 100 -k step     # a subset

Run the two runtimes in separate processes (their thread pools fight when
mixed); ``python benchmarks/compare.py`` does that and prints the ratio table.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_addoption(parser):
    group = parser.getgroup("nbclust benchmarks")
    group.addoption("--runtime", choices=("nbclust", "torch"), default="nbclust", help="what to time")
    group.addoption("--bench-threads", type=int, default=2, help="threads for Numba, BLAS and torch")
    group.addoption("--bench-batch", type=int, action="append", help="batch sizes (default 100 and 256)")


def pytest_configure(config):
    from worker import set_threads

    if "numpy" in sys.modules or "torch" in sys.modules:
        print("warning: numpy/torch imported before the thread count was set", file=sys.stderr)
    set_threads(config.getoption("--bench-threads"))
    if config.getoption("--runtime") == "torch":
        import pytest

        torch = pytest.importorskip("torch", reason="torch is not installed: pip install 'nbclust[bench]'")
        torch.set_num_threads(config.getoption("--bench-threads"))


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        import cases

        batches = tuple(metafunc.config.getoption("--bench-batch") or (100, 256))
        kind = metafunc.module.KIND
        names = [n for n in cases.case_names(batches) if n.startswith(kind + "/")]
        metafunc.parametrize("case", names)
