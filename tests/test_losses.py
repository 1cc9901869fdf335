"""Losses and clustering terms: torch parity, the papers' formulas, argument errors."""

import numpy as np
import pytest

from nbclust.engine.backend import get_backend
from nbclust.engine.gradcheck import run_op
from nbclust.engine.optable import OPS

from conftest import AVAILABLE_BACKENDS

BACKENDS = [b for b in AVAILABLE_BACKENDS if b != "cuda"]
NAMES = [name for name, spec in OPS.items() if spec.family == "losses"]  # the generic losses and the clustering terms


def _run(backend, name, *inputs, grad_out=None, **attrs):
    """(outputs, grads) of op ``name``; losses get grad_out = 1."""
    spec = OPS[name]
    if grad_out is None and name != "student_t":
        grad_out = np.array(1.0)
    (out,), grads = run_op(get_backend(backend), spec, inputs, attrs, grad_out)
    return out, grads


def _rows(rng, n, k, power=1.0):
    p = rng.uniform(0.1, 1.0, size=(n, k)) ** power
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_matches_torch(name, backend):
    torch = pytest.importorskip("torch")
    spec = OPS[name]
    rng = np.random.default_rng(3)
    for case in spec.cases(rng):
        tensors = [
            torch.tensor(a, requires_grad=spec.is_differentiable(k)) if a.dtype.kind == "f"
            else torch.from_numpy(a)
            for k, a in enumerate(case.inputs)
        ]
        want = spec.torch(*tensors, **case.attrs)
        grad_out = rng.normal(size=tuple(want.shape))
        want.backward(torch.from_numpy(grad_out))
        out, grads = _run(backend, name, *case.inputs, grad_out=grad_out, **case.attrs)
        np.testing.assert_allclose(out, want.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=case.label)
        for k, (g, t) in enumerate(zip(grads, tensors)):
            if spec.is_differentiable(k):
                np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-9, atol=1e-12,
                                           err_msg=f"{case.label}: grad {spec.inputs[k]}")
            else:
                assert g is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v", [1.0, 2.5])
def test_dbc_kl_is_kl_through_student_t(backend, v):
    """Eqs 4-5 equal the chain rule through eq 1 and eq 3: dL/ds = -r/s into student_t's backward."""
    rng = np.random.default_rng(0)
    z, mu, r = rng.normal(size=(7, 3)), rng.normal(size=(4, 3)), _rows(rng, 7, 4, power=3)
    s, _ = _run(backend, "student_t", z, mu, grad_out=np.zeros((7, 4)), v=v)
    _, (gz_chain, gmu_chain) = _run(backend, "student_t", z, mu, grad_out=-0.7 * r / s, v=v)
    value, (gz, gmu, gr) = _run(backend, "dbc_kl", z, mu, r, grad_out=np.array(0.7), v=v)
    assert gr is None
    np.testing.assert_allclose(value, np.sum(r * np.log(r / s)), rtol=1e-12)
    np.testing.assert_allclose(gz, gz_chain, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gmu, gmu_chain, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dbc_kl_eqs_4_5_literal(backend):
    rng = np.random.default_rng(1)
    v = 1.7
    z, mu, r = rng.normal(size=(5, 2)), rng.normal(size=(3, 2)), _rows(rng, 5, 3)
    s, _ = _run(backend, "student_t", z, mu, grad_out=np.zeros((5, 3)), v=v)
    _, (gz, gmu, _) = _run(backend, "dbc_kl", z, mu, r, v=v)
    for i in range(5):
        want = sum((r[i, j] - s[i, j]) * (z[i] - mu[j]) / (1 + np.sum((z[i] - mu[j]) ** 2) / v) for j in range(3))
        np.testing.assert_allclose(gz[i], (1 + v) / v * want, rtol=1e-10)
    for j in range(3):
        want = sum((r[i, j] - s[i, j]) * (mu[j] - z[i]) / (1 + np.sum((mu[j] - z[i]) ** 2) / v) for i in range(5))
        np.testing.assert_allclose(gmu[j], (1 + v) / v * want, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_student_t_rows_sum_to_one_far_from_centers(backend):
    z, mu = np.array([[1e6, 0.0], [0.0, 0.0]]), np.array([[0.0, 1.0], [2.0, 0.0]])
    s, _ = _run(backend, "student_t", z, mu, grad_out=np.zeros((2, 2)), v=100.0)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-14)


def _dense_subspace(z, labels, k):
    """The paper's ||Z - Z H^T (H H^T)^-1 H||_F^2 with Z = z^T, all clusters non-empty."""
    h = np.eye(k)[labels].T
    zt = z.T
    return np.sum((zt - zt @ h.T @ np.linalg.inv(h @ h.T) @ h) ** 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_subspace_dense_formula(backend):
    rng = np.random.default_rng(2)
    z, labels = rng.normal(size=(11, 3)), np.array([0, 1, 2, 3, 0, 1, 2, 3, 3, 3, 1])
    value, (gz, _) = _run(backend, "kmeans_subspace", z, labels, n_clusters=4)
    np.testing.assert_allclose(value, _dense_subspace(z, labels, 4), rtol=1e-12)
    means = np.stack([z[labels == c].mean(axis=0) for c in range(4)])
    np.testing.assert_allclose(gz, 2 * (z - means[labels]), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_clusters_contribute_nothing(backend):
    rng = np.random.default_rng(4)
    z, labels = rng.normal(size=(6, 2)), np.array([0, 0, 2, 2, 2, 0])
    with np.errstate(all="raise"):
        sparse, (g_sparse, _) = _run(backend, "kmeans_subspace", z, labels, n_clusters=5)
    dense, (g_dense, _) = _run(backend, "kmeans_subspace", z, labels // 2, n_clusters=2)
    np.testing.assert_allclose(sparse, dense, rtol=1e-12)
    np.testing.assert_allclose(g_sparse, g_dense, rtol=1e-12)
    np.testing.assert_allclose(sparse, _dense_subspace(z, labels // 2, 2), rtol=1e-12)
    # an unused k-means center gets no gradient
    h, centers = rng.normal(size=(4, 2)), rng.normal(size=(3, 2))
    _, (_, gc, _) = _run(backend, "kmeans_compactness", h, centers, np.array([0, 2, 2, 0]), lam=0.2)
    assert np.all(gc[1] == 0) and np.all(gc[[0, 2]] != 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_compactness_dcae_eq4(backend):
    rng = np.random.default_rng(5)
    h, centers, assign = rng.normal(size=(6, 3)), rng.normal(size=(2, 3)), np.array([1, 0, 0, 1, 1, 0])
    value, (gh, gc, _) = _run(backend, "kmeans_compactness", h, centers, assign, lam=0.2)
    np.testing.assert_allclose(value, 0.2 / 12 * sum(np.sum((h[n] - centers[assign[n]]) ** 2) for n in range(6)))
    np.testing.assert_allclose(gh, 0.2 / 6 * (h - centers[assign]))
    np.testing.assert_allclose(gc[0], -0.2 / 6 * np.sum(h[assign == 0] - centers[0], axis=0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_neg_logdet_gradient_is_minus_pinv_transpose(backend):
    rng = np.random.default_rng(6)
    t = rng.normal(size=(3, 2, 2, 2))
    m = t.reshape(3, -1)
    value, (g,) = _run(backend, "neg_logdet", t)
    np.testing.assert_allclose(value, -0.5 * np.linalg.slogdet(m @ m.T)[1], rtol=1e-12)
    np.testing.assert_allclose(g, -np.linalg.pinv(m).T.reshape(t.shape), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_neg_logdet_rejects_rank_deficient_filters(backend):
    rng = np.random.default_rng(7)
    t = rng.normal(size=(3, 1, 2, 2))
    t[2] = 2 * t[0]
    with pytest.raises(ValueError, match="neg_logdet: the filter matrix is rank-deficient"):
        _run(backend, "neg_logdet", t)
    with pytest.raises(ValueError, match="neg_logdet: the filter matrix is rank-deficient"):
        _run(backend, "neg_logdet", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="filters <= taps"):
        _run(backend, "neg_logdet", rng.normal(size=(5, 1, 2, 2)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_clamp(backend):
    pred, target = np.array([0.0, 1.0, 0.5, 1e-9]), np.array([0.3, 0.6, 0.2, 1.0])
    value, (g, gt) = _run(backend, "bce", pred, target)
    p = np.clip(pred, 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(value, np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p))), rtol=1e-12)
    assert gt is None and g[2] != 0 and np.all(g[[0, 1, 3]] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_with_logits_keeps_the_gradient_where_bce_saturates(backend):
    """For |a| > ~16.1 sigmoid(a) is within 1e-7 of 0 or 1 (from |a| ~ 37 it rounds to 0 or 1 in
    float64, from ~17 to 1 in float32), so ``bce`` of sigmoid(a) is clamped: its value is capped at
    -log(1e-7) ~ 16 per element and its gradient is exactly 0, and chained through sigmoid's
    p (1 - p) it stays 0 (the old DCAE decoder).  The fused op has the true value
    softplus(a) - a t and the gradient (sigmoid(a) - t) / n there."""
    from scipy.special import expit

    a = np.array([40.0, -38.0, 45.0, -50.0, 0.5, -2.0, 800.0, -1000.0])
    t = np.array([0.2, 0.7, 1.0, 0.0, 0.3, 1.0, 0.0, 1.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value, (g, gt) = _run(backend, "bce_with_logits", a, t)
    assert gt is None
    np.testing.assert_allclose(value, np.mean(np.logaddexp(0, a) - a * t), rtol=1e-14)
    np.testing.assert_allclose(g, (expit(a) - t) / a.size, rtol=1e-14, atol=1e-30)
    disagree = [0, 1, 6, 7]  # saturated on the side the target does not take
    assert np.all(np.abs(g[disagree]) >= 0.2 / a.size)

    p = expit(a)
    old_value, (g_bce, _) = _run(backend, "bce", p, t)
    assert np.all(g_bce[disagree] == 0)  # the defect: no gradient where it is needed most
    assert float(old_value) < float(value)  # the clamp also caps the value
    _, (g_chain,) = run_op(get_backend(backend), OPS["sigmoid"], (a,), {}, g_bce)  # through sigmoid
    assert np.all(g_chain[disagree] == 0)
    inside = [4, 5]  # away from saturation the two agree through the chain rule
    np.testing.assert_allclose(g_chain[inside], g[inside], rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_large_reductions_match_reference(dtype):
    """Several Numba blocks and threads: same value as NumPy, same result on every call."""
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(30, 1000)), rng.normal(size=(30, 1000))
    labels = rng.integers(0, 7, size=30)
    for name, inputs, attrs in (("mse", (a, b), {}), ("fidelity", (a, b), {}),
                                ("kmeans_subspace", (a, labels), {"n_clusters": 7})):
        want, _ = _run("reference", name, *inputs, **attrs)
        cast = tuple(x.astype(dtype) if x.dtype.kind == "f" else x for x in inputs)
        got, grads = _run("cpu", name, *cast, **attrs)
        again, grads_again = _run("cpu", name, *cast, **attrs)
        assert got.dtype == dtype and got.shape == ()
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-12)
        assert got == again and np.array_equal(grads[0], grads_again[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments(backend):
    rng = np.random.default_rng(9)
    z, mu = rng.normal(size=(4, 2)), rng.normal(size=(3, 2))
    bad = [
        ("mse", (z, mu), {}, "mse: pred has shape"),
        ("bce", (np.full(3, 0.5), np.ones(3)), {"eps": 0.0}, "eps must lie"),
        ("bce_with_logits", (np.zeros((2, 3)), np.ones(6)), {}, r"bce_with_logits: logits has shape \(2, 3\)"),
        ("bce_with_logits", (np.zeros((0, 3)), np.zeros((0, 3))), {}, "bce_with_logits: logits is empty"),
        ("student_t", (z, rng.normal(size=(3, 5))), {}, "student_t: z has 2 features but mu has 5"),
        ("student_t", (z, mu), {"v": 0.0}, "degrees of freedom"),
        ("dbc_kl", (z, mu, np.full((4, 3), 0.5)), {}, "rows of r must sum to 1"),
        ("dbc_kl", (z, mu, np.full((4, 2), 0.5)), {}, r"r must have shape \(4, 3\)"),
        ("kmeans_compactness", (z, mu, np.array([0, 1, 3, 0])), {"lam": 1.0}, r"assign must lie in \[0, 3\)"),
        ("kmeans_compactness", (z, mu, np.zeros(4)), {"lam": 1.0}, "assign must be an integer array"),
        ("kmeans_subspace", (z, np.array([0, 1, 0])), {"n_clusters": 2}, r"labels must have shape \(4,\)"),
        ("kmeans_subspace", (z, np.zeros(4, dtype=np.int64)), {"n_clusters": 0}, "n_clusters must be"),
        ("soft_cross_entropy", (z.ravel(), z.ravel()), {}, "logits must be a non-empty 2-D array"),
    ]
    for name, inputs, attrs, message in bad:
        with pytest.raises(ValueError, match=message):
            _run(backend, name, *inputs, **attrs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_cross_entropy_large_logits(backend):
    logits, q = np.array([[1000.0, 999.0, 0.0], [-1e4, -1e4 + 2.0, -1e4 + 1.0]]), np.full((2, 3), 1 / 3)
    value, (g, _) = _run(backend, "soft_cross_entropy", logits, q)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(value, -np.sum(q * logp) / 2, rtol=1e-14)
    np.testing.assert_allclose(g, (np.exp(logp) - q) / 2, rtol=1e-13, atol=1e-17)
