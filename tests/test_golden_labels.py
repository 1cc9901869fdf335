"""Same seed, same labels: every estimator reproduces the labels recorded in ``tests/data/golden_labels.json``.

Each entry of the JSON file holds a class name, its exact constructor arguments and the labels
(and the phase of every history record) that the code produced on the first 300 images of
scikit-learn's digits (8 x 8, uint8 as in the README, ``n_clusters=10``, ``random_state=0``,
``backend="cpu"``, fitted with the labels for monitoring).  The settings are tiny but run every
phase of every method (and the stopping rules that end a phase early).

Regenerate (all entries, or some by name) when a change is *meant* to change a method's results,
e.g. a fix of its architecture, and say so in the commit::

    python tests/test_golden_labels.py                    # all entries, with the installed nbclust
    python tests/test_golden_labels.py dcec dcec-tol      # only these entries
    python tests/test_golden_labels.py --tree DIR dcec    # with the nbclust of a checkout DIR
                                                          # (e.g. a `git worktree` of another commit)

``--tree`` runs the package found in ``DIR/nbclust``, ``DIR/kernels`` and ``DIR/reference``
instead of the installed one, so a refactor can be checked against the labels of the code
before it, and an entry can be regenerated from a commit that has a deliberate change of one
method but not a refactor under test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "data" / "golden_labels.json"
N_IMAGES = 300

# name -> (class, constructor arguments besides n_clusters=10, random_state=0, backend="cpu")
CONFIGS = {
    "dcae": ("DCAE", {"epochs": 2}),
    "dcae-sigmoid": ("DCAE", {"epochs": 2, "activation": "sigmoid", "lr_pixels": None}),
    "fcae-kmeans": ("FCAEKMeans", {"pretrain_epochs": 2, "batch_size": 64, "n_init": 3}),
    "dbc": ("DBC", {"pretrain_epochs": 2, "epochs": 3, "batch_size": 64, "tol": 0.0, "n_init": 3}),
    "dbc-soft-tol": ("DBC", {"pretrain_epochs": 1, "epochs": 5, "batch_size": 64, "normalization": "soft",
                             "tol": 0.2, "n_init": 3}),
    "dcec": ("DCEC", {"pretrain_epochs": 2, "epochs": 2, "batch_size": 64, "update_interval": 3, "tol": 0.0,
                      "n_init": 3}),
    "dcec-tol": ("DCEC", {"pretrain_epochs": 1, "epochs": 3, "batch_size": 64, "update_interval": 2, "tol": 0.05,
                          "n_init": 3}),
    "dctl": ("DCTL", {"pretrain_epochs": 1, "epochs": 2, "batch_size": 64}),
    "dctl-piecemeal": ("DCTL", {"joint": False, "n_layers": 1, "pretrain_epochs": 1, "epochs": 1, "batch_size": 64}),
    "dctl-epoch": ("DCTL", {"assign": "epoch", "epochs": 2, "batch_size": 64, "n_init": 2}),
    "dctl-codes": ("DCTL", {"assign": "codes", "final": "codes", "loss_scale": "paper", "standardize": True,
                            "epochs": 2, "batch_size": 64}),
    "depict": ("DEPICT", {"pretrain_epochs": 2, "warmup_epochs": 2, "epochs": 2, "batch_size": 50, "lr": 1e-3,
                          "tol": 0.0}),
    "depict-kmeans-shared": ("DEPICT", {"init": "kmeans", "noise": "shared", "target": "paper",
                                        "head_init": "distance", "pretrain_epochs": 6, "pretrain_patience": 0,
                                        "warmup_epochs": 4, "warmup_patience": 0, "epochs": 2, "batch_size": 50,
                                        "lr": 0.01}),
    "kmeans": ("KMeansPixels", {"n_init": 2}),
    "acpic": ("ACPICPixels", {}),
}
BASELINES = ("KMeansPixels", "ACPICPixels")  # in nbclust.baseline, without a backend


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:N_IMAGES] * (255 / 16)).astype("uint8"), d.target[:N_IMAGES]


def make(cls_name, params):
    import importlib

    if cls_name in BASELINES:
        cls = getattr(importlib.import_module("nbclust.baseline"), cls_name)
        return cls(10, random_state=0, **params)
    import nbclust

    return getattr(nbclust, cls_name)(10, random_state=0, backend="cpu", **params)


def fit(cls_name, params):
    """(labels, phases) of one configuration."""
    X, y = digits()
    est = make(cls_name, params).fit(X, y)
    return [int(v) for v in est.labels_], [r["phase"] for r in est.history_]


def _entries():
    if not GOLDEN.exists():
        return {}
    return json.loads(GOLDEN.read_text())


ENTRIES = _entries()


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_same_labels_as_recorded(name):
    entry = ENTRIES[name]
    labels, phases = fit(entry["class"], entry["params"])
    assert phases == entry["phases"], f"{name}: other phases/epochs than recorded"
    assert labels == entry["labels"], f"{name}: {sum(a != b for a, b in zip(labels, entry['labels']))} labels differ"


def test_every_configuration_is_recorded():
    assert sorted(ENTRIES) == sorted(CONFIGS)
    for name, (cls_name, params) in CONFIGS.items():
        assert ENTRIES[name]["class"] == cls_name and ENTRIES[name]["params"] == params, name


# ------------------------------------------------------------------ regeneration
def _use_tree(root: Path):
    """Import ``nbclust`` (with ``nbclust.kernels`` and ``nbclust.reference``) from the checkout ``root``."""
    import importlib.abc
    import importlib.machinery

    mapping = {"nbclust": root / "nbclust", "nbclust.kernels": root / "kernels",
               "nbclust.reference": root / "reference"}

    class TreeFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname in mapping:
                pkg = mapping[fullname]
                return importlib.util.spec_from_file_location(fullname, pkg / "__init__.py",
                                                              submodule_search_locations=[str(pkg)])
            parent = fullname.rpartition(".")[0]
            if parent in mapping:
                return importlib.machinery.PathFinder.find_spec(fullname, [str(mapping[parent])])
            return None

    import importlib.util

    sys.meta_path.insert(0, TreeFinder())


def regenerate(names=None, tree=None):
    """Refit the configurations ``names`` (default: all) and write their entries into the JSON file."""
    if tree is not None:
        _use_tree(Path(tree).resolve())
    import nbclust

    entries = _entries()
    for name in names or list(CONFIGS):
        cls_name, params = CONFIGS[name]
        labels, phases = fit(cls_name, params)
        entries[name] = {"class": cls_name, "params": params, "phases": phases, "labels": labels}
        print(f"{name}: {len(labels)} labels, phases {phases} (nbclust from {Path(nbclust.__file__).parent})")
    GOLDEN.parent.mkdir(exist_ok=True)
    text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(entries[k])}" for k in sorted(entries)) + "\n}\n"
    GOLDEN.write_text(text)


if __name__ == "__main__":
    args = sys.argv[1:]
    tree = None
    if args[:1] == ["--tree"]:
        tree, args = args[1], args[2:]
    unknown = [a for a in args if a not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    regenerate(args or None, tree)
