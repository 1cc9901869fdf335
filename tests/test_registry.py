"""The import-light registry (nbclust.registry): one copy of each name list, each name implemented."""

import subprocess
import sys

from nbclust import methods, registry
from nbclust.cli import fit
from nbclust.data import datasets, features
from nbclust.engine import backend
from nbclust.methods.params import COMMON_PARAMS


def test_every_reader_uses_the_registry_itself():
    assert fit.METHODS is methods.METHODS is registry.METHODS
    assert fit.BACKENDS is backend.BACKENDS is registry.BACKENDS
    assert COMMON_PARAMS["backend"].choices is registry.BACKENDS
    assert fit.DATASETS is datasets.NAMES is registry.DATASETS
    assert fit.FEATURES is features.FEATURES is registry.FEATURES


def test_every_dataset_name_has_its_loader():
    """datasets._load_named treats a name it does not know as coil20: every name must be one it knows."""
    assert set(registry.DATASETS) == {"digits", *datasets._SPLITS, "usps", "yaleb", "coil20"}


def test_registry_imports_nothing_heavy():
    code = "import sys, nbclust.registry; print(sorted(m for m in ('numpy', 'numba', 'sklearn') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
