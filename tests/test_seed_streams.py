"""Random streams of layers: an int seed never gives two layers the same weights.

The old defect: every layer built with ``rng=0`` drew ``default_rng(0)``, so each
decoder layer was a scaled copy of its mirror encoder layer (correlation > 0.95).
"""

import itertools

import numpy as np
import pytest

from nbclust.engine import nn
from nbclust.methods import architectures
from nbclust.methods.depict import DEPICTNet


def _max_abs_corr(weights):
    """Largest |correlation| between the leading entries of any two weight tensors."""
    flat = [np.asarray(w, dtype=np.float64).ravel() for w in weights]
    n = min(f.size for f in flat)
    assert n >= 16
    worst, pair = 0.0, None
    for (i, a), (j, b) in itertools.combinations(enumerate(flat), 2):
        c = abs(np.corrcoef(a[:n], b[:n])[0, 1])
        if c > worst:
            worst, pair = c, (i, j)
    return worst, pair


def _weights(*modules):
    return [p.data for m in modules for p in m.parameters() if p.data.ndim >= 2]


def test_two_layers_from_one_int_seed_differ():
    a = nn.Conv2d(1, 6, 5, backend="reference", dtype=np.float64, rng=0)
    b = nn.Conv2d(6, 16, 5, backend="reference", dtype=np.float64, rng=0)
    t = nn.ConvTranspose2d(6, 1, 5, backend="reference", dtype=np.float64, rng=0)  # a's shape, other kind
    corr, _ = _max_abs_corr([a.weight.data, b.weight.data, t.weight.data])
    assert corr < 0.5


def test_same_layer_same_int_seed_is_reproducible():
    kw = dict(backend="reference", dtype=np.float64, rng=3)
    assert np.array_equal(nn.Linear(20, 30, **kw).weight.data, nn.Linear(20, 30, **kw).weight.data)


BUILDERS = {
    "dcae-relu": lambda rng: architectures.dcae((1, 28, 28), activation="relu", rng=rng),
    "dcae-sigmoid": lambda rng: architectures.dcae((1, 16, 16), activation="sigmoid", rng=rng),
    "fcae-28": lambda rng: architectures.fcae((1, 28, 28), rng=rng),
    "fcae-16": lambda rng: architectures.fcae((1, 16, 16), rng=rng),
    "fcae-32": lambda rng: architectures.fcae((1, 32, 32), rng=rng),
    "dcec": lambda rng: architectures.dcec((1, 28, 28), rng=rng),
    "depict": lambda rng: tuple(DEPICTNet((1, 28, 28), 10, rng=rng).modules.values()),
}


@pytest.mark.parametrize("seed", [0, np.random.default_rng(0)], ids=["int", "generator"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_no_two_layers_of_an_architecture_share_weights(name, seed):
    modules = BUILDERS[name](seed)
    corr, pair = _max_abs_corr(_weights(*modules))
    assert corr < 0.5, f"{name}: weight tensors {pair} correlate at {corr:.3f}"


@pytest.mark.parametrize("name", ["dcae-relu", "fcae-28", "dcec"])
def test_architecture_is_reproducible_from_its_int_seed(name):
    w1, w2 = _weights(*BUILDERS[name](5)), _weights(*BUILDERS[name](5))
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))
