"""Same seed, same labels: every estimator reproduces the labels recorded in ``tests/data/golden_labels.json``.

Each entry of the JSON file holds a class name, its exact constructor arguments, the labels (and
the phase of every history record) that the code produced on the first 300 images of
scikit-learn's digits (8 x 8, uint8 as in the README, ``n_clusters=10``, ``random_state=0``,
``backend="cpu"``, fitted with the labels for monitoring), and the environment that produced
them (:func:`environment`: Python, NumPy, SciPy, scikit-learn and Numba versions, the CPU Numba
compiles for, Numba's thread count, and each BLAS library with its version, kernel and threads).
The settings are tiny but run every phase of every method (and the stopping rules that end a
phase early).

Where the environment is the recorded one, labels and phases must be equal exactly (same seed,
same machine, same labels).  Elsewhere the floating-point sums differ (OpenBLAS picks its kernel
by CPU, and a different kernel or thread count rounds the GEMMs differently; a few rounding
differences grow over training), so the labels are compared by their adjusted Rand index with
the recorded ones, which must be at least ``ARI_BOUND``, and every phase must run the recorded
number of epochs give or take one (a stopping rule at its threshold).  How the bound was chosen
(measured on an AMD EPYC, 2 cores, 2026-12-03; ``python tests/test_golden_labels.py`` refits):

- honest differences, the recorded labels refitted under OpenBLAS kernels SkylakeX, Haswell,
  Sandybridge and Prescott (``OPENBLAS_CORETYPE``), 1 or 2 BLAS threads, 1 or 2 Numba threads,
  Numba compiling for haswell or znver4: ARI >= 0.92 for every entry (dbc-soft-tol 0.923,
  depict-kmeans-shared 0.956, fcae-kmeans 0.984, dcec 0.990, all others 1.0); no phase changed;
- deliberate one-line changes of a method: DCAE's eq 7 over the previous members (0.75 / 0.60)
  or the E1 gradient not scaled by the pixel count (0.66 / 0.50), DBC's batch norm not frozen
  (0.51 / 0.37), DCEC's clustering gradient without gamma (0.40), DEPICT's embedding without the
  2x - 1 input map (0.26 / 0.43) or its hidden terms unweighted (0.27 / 0.64), the target's
  frequency normalisation dropped (DCEC 0.42, DEPICT 0.40), k-means with one restart instead of
  n_init (0.70 - 0.77) all fall below 0.85; smaller ones (lambda doubled in DCAE, the sign of
  DBC's centre gradient) stay within the honest band and only the exact comparison sees them.

So ``ARI_BOUND = 0.85``: 0.07 below the largest honest difference seen.
``test_tolerance_fails_on_a_real_change`` checks on every run that a deliberate change fails it.

Regenerate (all entries, or some by name) when a change is *meant* to change a method's results,
e.g. a fix of its architecture or a new default, and say so in the commit (the entries then carry
this machine's environment)::

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

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "data" / "golden_labels.json"
N_IMAGES = 300
ARI_BOUND = 0.85  # labels in another environment: adjusted Rand index with the recorded ones (module docstring)

# What the environment record holds; run in a fresh interpreter, so that it is the same in the test
# session (whatever else it imported) and in a regeneration.
_ENV_PROBE = r"""
import json, platform
import llvmlite.binding, numba, numpy, scipy, scipy.linalg, sklearn, sklearn.cluster, threadpoolctl
blas = sorted(f"{i['internal_api']} {i.get('version')} {i.get('architecture')} x{i['num_threads']}"
              for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
print(json.dumps({
    "python": platform.python_version(), "machine": platform.machine(), "numpy": numpy.__version__,
    "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "numba": numba.__version__,
    "numba_cpu": numba.config.CPU_NAME or llvmlite.binding.get_host_cpu_name(),
    "numba_threads": numba.config.NUMBA_NUM_THREADS, "blas": blas}))
"""

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
BASELINES = ("KMeansPixels", "ACPICPixels")  # in nbclust.methods.baseline, without a backend


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:N_IMAGES] * (255 / 16)).astype("uint8"), d.target[:N_IMAGES]


def make(cls_name, params):
    import importlib

    if cls_name in BASELINES:
        cls = getattr(importlib.import_module("nbclust.methods.baseline"), cls_name)
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


@functools.cache
def environment() -> dict:
    """The environment that decides the floating-point results (see the module docstring)."""
    out = subprocess.run([sys.executable, "-c", _ENV_PROBE], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def _ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def _runs(phases) -> list:
    """[(phase, epochs)] of a history's phase list, in order."""
    out = []
    for p in phases:
        if out and out[-1][0] == p:
            out[-1][1] += 1
        else:
            out.append([p, 1])
    return out


def mismatch(entry, labels, phases, env) -> str | None:
    """Why the fit does not reproduce ``entry`` (None when it does): exactly in the recorded environment,
    else within ``ARI_BOUND`` and one epoch per phase."""
    if env == entry["environment"]:
        if phases != entry["phases"]:
            return f"other phases/epochs than recorded: {_runs(phases)}, not {_runs(entry['phases'])}"
        n = sum(a != b for a, b in zip(labels, entry["labels"]))
        return f"{n} labels differ (same environment as recorded)" if n else None
    want, got = _runs(entry["phases"]), _runs(phases)
    if [p for p, _ in got] != [p for p, _ in want] or any(abs(a[1] - b[1]) > 1 for a, b in zip(got, want)):
        return f"other phases than recorded: {got}, not {want}"
    ari = _ari(labels, entry["labels"])
    if ari < ARI_BOUND:
        differs = sorted(k for k in env if env[k] != entry["environment"].get(k))
        return f"ARI {ari:.3f} with the recorded labels, below {ARI_BOUND} (environment differs in {', '.join(differs)})"
    return None


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_same_labels_as_recorded(name):
    entry = ENTRIES[name]
    labels, phases = fit(entry["class"], entry["params"])
    problem = mismatch(entry, labels, phases, environment())
    assert problem is None, f"{name}: {problem}"


def test_tolerance_fails_on_a_real_change(monkeypatch):
    """A deliberate one-line change (DCEC's target without its frequency normalisation) fails the
    comparison in any environment, also the tolerant one."""
    from nbclust.methods import clustering, dcec

    entry = ENTRIES["dcec"]
    other = dict(environment(), numpy="another")
    labels, phases = fit(entry["class"], entry["params"])
    assert mismatch(entry, labels, phases, other) is None
    monkeypatch.setattr(dcec, "dec_target", lambda Q: clustering.target(Q, 2, "none"))  # was "soft"
    labels, phases = fit(entry["class"], entry["params"])
    assert "below" in mismatch(entry, labels, phases, other)
    assert mismatch(entry, labels, phases, entry["environment"]) is not None


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
        entries[name] = {"class": cls_name, "params": params, "phases": phases, "labels": labels,
                         "environment": environment()}
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
