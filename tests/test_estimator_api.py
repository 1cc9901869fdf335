"""The estimator contract for every estimator in ``nbclust.methods.ESTIMATORS``.

sklearn conventions (``check_estimator``, clone, pickling), determinism, predict/transform,
save/load, the input contract, validation errors, callback records, divergence, and resume
from a mid-fit training state.
"""

import copy
import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone, is_clusterer
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from nbclust.data.io import load_state, save_state
from nbclust.methods import ESTIMATORS, available
from nbclust.methods.acpic import ACPIC
from nbclust.methods.base import DeepClusterer, DivergenceError, expected_failed_checks
from nbclust.methods.baseline import ACPICPixels, KMeansPixels
from test_methods_a import toy_images

CLASSES = available()
NAMES = [n for n in ESTIMATORS if n in CLASSES]

TINY = {"epochs": 2, "pretrain_epochs": 2, "warmup_epochs": 2, "batch_size": 16, "update_interval": 3, "tol": 0.0}


def tiny(name, **kw):
    """The estimator ``name`` at tiny settings (only the ones it has)."""
    est = CLASSES[name](3, random_state=0, **kw)
    params = est.get_params()
    est.set_params(**{k: v for k, v in TINY.items() if k in params and k not in kw})
    return est


@pytest.fixture(scope="module")
def data():
    X, y = toy_images(n_per=12, k=3, size=8)
    return X, y


@pytest.fixture(scope="module")
def fitted(data):
    """One fitted estimator per name, with its callback records and a mid-fit training state."""
    X, y = data
    out = {}

    def run(name):
        if name not in out:
            records, states = [], []

            def callback(est, record):
                records.append(dict(record))
                states.append(est.training_state())

            est = tiny(name).fit(X, y, callback=callback)
            out[name] = (est, records, states)
        return out[name]

    return run


@pytest.mark.parametrize("name", NAMES)
def test_sklearn_params_and_clone(name):
    est = tiny(name)
    params = est.get_params()
    assert {"n_clusters", "backend", "random_state", "verbose"} <= set(params)
    c = clone(est)
    assert c.get_params() == params and c is not est
    c.set_params(random_state=5)
    assert c.random_state == 5 and est.random_state == 0
    assert not hasattr(est, "labels_")  # __init__ only stores its arguments


@pytest.mark.parametrize("name", NAMES)
def test_fit_results_and_callback(name, data, fitted):
    X, y = data
    est, records, _ = fitted(name)
    assert est.labels_.shape == (len(X),)
    assert est.image_shape_ == (1, 8, 8)
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    Z = est.transform(X)
    assert Z.shape == (len(X), est.cluster_centers_.shape[1])
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    assert records == [{k: v for k, v in r.items()} for r in est.history_]
    for r in records:
        assert isinstance(r["phase"], str) and r["seconds"] >= 0
    if records[-1]["phase"] == "cluster":  # metrics need centres, which pretraining lacks
        assert {"acc", "nmi", "ari"} <= set(records[-1])


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name, data, fitted):
    X, y = data
    est, _, _ = fitted(name)
    again = tiny(name).fit(X, y)
    np.testing.assert_array_equal(again.labels_, est.labels_)
    np.testing.assert_array_equal(again.cluster_centers_, est.cluster_centers_)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, data, fitted, tmp_path):
    X, _ = data
    est, _, _ = fitted(name)
    path = tmp_path / "model.npz"
    est.save(path)
    for loader in (CLASSES[name], DeepClusterer):
        back = loader.load(path)
        assert type(back) is type(est) and back.get_params() == est.get_params()
        np.testing.assert_array_equal(back.predict(X), est.predict(X))
        np.testing.assert_array_equal(back.transform(X), est.transform(X))
    other = next(CLASSES[n] for n in NAMES if n != name)
    with pytest.raises(ValueError, match=name):
        other.load(path)


@pytest.mark.parametrize("name", NAMES)
def test_resume_matches_uninterrupted(name, data, fitted, tmp_path):
    X, y = data
    est, records, states = fitted(name)
    for k in sorted({1, len(states) // 2}):  # after the first epoch, and mid-fit
        path = tmp_path / f"state{k}.npz"
        save_state(path, *states[k - 1])
        resumed = tiny(name).fit(X, y, resume=load_state(path))
        np.testing.assert_array_equal(resumed.labels_, est.labels_)
        strip = lambda h: [{a: b for a, b in r.items() if a != "seconds"} for r in h]  # noqa: E731
        assert strip(resumed.history_) == strip(est.history_)


@pytest.mark.parametrize("name", NAMES)
def test_resume_mismatch_is_refused(name, data, fitted):
    X, y = data
    _, _, states = fitted(name)
    state = states[0]
    with pytest.raises(ValueError, match="other data"):
        tiny(name).fit(X[::-1].copy(), resume=state)
    with pytest.raises(ValueError, match="hyperparameters"):
        tiny(name, batch_size=7).fit(X, resume=state)
    other = next(n for n in NAMES if n != name)
    with pytest.raises(ValueError, match=name):
        tiny(other).fit(X, resume=state)


BAD_PARAMS = [
    ("n_clusters", 0), ("n_clusters", 1000), ("lr", -0.1), ("lr", 0), ("epochs", -1),
    ("pretrain_epochs", -1), ("batch_size", 0), ("alpha", 1.0), ("normalization", "foo"),
    ("tol", -1.0), ("backend", "foo"), ("lam", -1.0), ("gamma", -1.0), ("n_init", 0),
]


@pytest.mark.parametrize(
    "name,param,value",
    [(n, p, v) for n in NAMES for p, v in BAD_PARAMS if p in CLASSES[n]().get_params()],
)
def test_invalid_hyperparameters(name, param, value, data):
    X, _ = data
    est = tiny(name)
    est.set_params(**{param: value})  # accepted by set_params, refused by fit
    with pytest.raises(ValueError, match=param):
        est.fit(X)


@pytest.mark.parametrize("name", NAMES)
def test_invalid_inputs(name, data):
    X, y = data
    est = tiny(name)
    bad = X.astype(np.float32) / 255
    bad[0, 0, 0] = np.nan
    cases = [
        (X[0, 0], "Reshape your data"), (X[:, None, None], "shape"), (bad, "NaN"),
        (np.zeros((4, 3, 3), np.uint8), "too small"), (X[:0], "empty"), (X[:1], "1 sample"),
        (X.astype(complex), "Complex data not supported"), (X.astype(np.int64) * 1000, r"\[0, 255000\]"),
        (X.astype(np.float32), r"float images must lie in \[0, 1\]; divide 8-bit data by 255"),
        (X / 255.0 - 0.5, r"float images must lie in \[0, 1\]; rescale it"),
    ]
    for Xb, msg in cases:
        with pytest.raises(ValueError, match=msg):
            est.fit(Xb)
    with pytest.raises(ValueError, match="labels"):
        est.fit(X, y[:-1])


@pytest.mark.parametrize("name", NAMES)
def test_predict_before_fit_and_wrong_shape(name, data, fitted):
    X, _ = data
    with pytest.raises(NotFittedError, match="not fitted"):
        tiny(name).predict(X)
    est, _, _ = fitted(name)
    with pytest.raises(ValueError, match="image shape"):
        est.predict(np.zeros((2, 9, 9), np.uint8))


@pytest.mark.parametrize("name", NAMES)
def test_accepts_memmap_with_channel_axis(name, data, tmp_path):
    X, _ = data
    np.save(tmp_path / "x.npy", X[:, None])
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    est = tiny(name).fit(mm)
    assert est.image_shape_ == (1, 8, 8) and est.labels_.shape == (len(X),)


AUTOENCODERS = {"DCAE", "FCAEKMeans", "DBC", "DCEC", "DEPICT"}


@pytest.mark.parametrize("name", NAMES)
def test_reconstruct_only_for_autoencoders(name, data, fitted):
    X, _ = data
    est, _, _ = fitted(name)
    assert hasattr(est, "reconstruct") == (name in AUTOENCODERS)
    if name in AUTOENCODERS:
        rec = est.reconstruct(X[:5])
        assert rec.shape == (5, 1, *X.shape[1:]) and np.isfinite(rec).all()
        # a decoder that ignored its input would give the same image for every sample
        assert np.ptp(rec, axis=0).max() > 0


# ------------------------------------------------------------------ scikit-learn's checks
def _check_estimator_instances():
    """Every estimator at tiny settings (``ACPIC`` with 3 neighbours: the checks fit 10-100 samples)."""
    out = [tiny(name) for name in NAMES]
    return out + [KMeansPixels(3, n_init=2), ACPICPixels(3, n_neighbors=3), ACPIC(3, n_neighbors=3)]


@parametrize_with_checks(_check_estimator_instances(), expected_failed_checks=expected_failed_checks)
def test_sklearn_check_estimator(estimator, check):
    """scikit-learn's check_estimator; the image-only estimators' expected failures are the checks that
    fit a 2-D (N, D) matrix (``expected_failed_checks`` says why), the same contract on images is below."""
    check(estimator)


@pytest.mark.parametrize("est", _check_estimator_instances(), ids=lambda e: type(e).__name__)
def test_is_clusterer_and_transformer(est):
    assert is_clusterer(est)
    assert hasattr(est, "fit_predict") and (hasattr(est, "transform") or isinstance(est, ACPIC))


@pytest.mark.parametrize("name", NAMES)
def test_pickle_deepcopy_joblib_round_trip(name, data, fitted, tmp_path):
    """Fitted estimators round-trip with identical predict and transform (the backend by its name)."""
    X, _ = data
    est, _, _ = fitted(name)
    joblib.dump(est, tmp_path / "est.joblib")
    copies = [pickle.loads(pickle.dumps(est)), copy.deepcopy(est), joblib.load(tmp_path / "est.joblib")]
    for back in copies:
        assert back._backend is est._backend  # re-resolved, not a copy of a module
        np.testing.assert_array_equal(back.predict(X), est.predict(X))
        np.testing.assert_array_equal(back.transform(X), est.transform(X))
        np.testing.assert_array_equal(back.labels_, est.labels_)


@pytest.mark.parametrize("name", NAMES)
def test_predict_invariant_to_subsets_and_order(name, data, fitted):
    """check_methods_subset_invariance / sample_order_invariance, on images."""
    X, _ = data
    est, _, _ = fitted(name)
    full = est.predict(X)
    np.testing.assert_array_equal(np.concatenate([est.predict(X[i:i + 1]) for i in range(len(X))]), full)
    perm = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_array_equal(est.predict(X[perm]), full[perm])
    np.testing.assert_allclose(est.transform(X[perm]), est.transform(X)[perm], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_fit_sets_only_private_or_fitted_attributes(name, data):
    """check_dont_overwrite_parameters and check_n_features_in, on images."""
    X, _ = data
    est = tiny(name)
    before = dict(est.__dict__)
    est.fit(X)
    added = [k for k in est.__dict__ if k not in before and not (k.startswith("_") or k.endswith("_"))]
    assert not added
    assert all(est.__dict__[k] is v for k, v in before.items())
    assert est.n_features_in_ == X.shape[1] * X.shape[2]


# ------------------------------------------------------------------ the input contract
def _labels(name, X):
    return tiny(name).fit(X).labels_


@pytest.mark.parametrize("name", NAMES)
def test_input_scale_by_dtype(name, data):
    """uint8 / 255, uint16 / 65535, other integers within 0..255 as 8-bit, floats in [0, 1] as given:
    the same pixels give the same labels in every dtype."""
    X, _ = data
    want = _labels(name, X)
    for same in (X.astype(np.uint16) * 257, X.astype(np.int64), X.astype(np.float32) / np.float32(255)):
        np.testing.assert_array_equal(_labels(name, same), want, err_msg=str(same.dtype))


@pytest.mark.parametrize("name", NAMES)
def test_2d_input(name, data):
    """A feature matrix (N, D) is N vectors for the estimators that read vectors (like (N, 1, 1, D)),
    refused with the reason by those that convolve images."""
    X, _ = data
    F = X.reshape(len(X), -1).astype(np.float64) * 3.0 - 100.0  # features: any finite values
    if not CLASSES[name]._reads_vectors:
        with pytest.raises(ValueError, match=f"2-D data of shape .*{name} clusters images"):
            tiny(name).fit(F)
        return
    est = tiny(name).fit(F)
    np.testing.assert_array_equal(est.labels_, tiny(name).fit(F[:, None, None, :]).labels_)
    np.testing.assert_array_equal(est.predict(F), est.labels_)
    with pytest.raises(ValueError, match=f"X has 63 features, but {name} is expecting 64 features as input"):
        est.predict(F[:, 1:])


@pytest.mark.parametrize("cls", [KMeansPixels, ACPICPixels])
def test_baselines_input_contract(cls, data):
    X, _ = data
    est = cls(3, random_state=0)
    want = est.fit(X).labels_
    np.testing.assert_array_equal(cls(3, random_state=0).fit(X.astype(np.uint16) * 257).labels_, want)
    with pytest.raises(ValueError, match="divide 8-bit data by 255"):
        cls(3).fit(X.astype(np.float64))
    F = X.reshape(len(X), -1) * 3.0 - 100.0  # a feature matrix: as given
    np.testing.assert_array_equal(cls(3, random_state=0).fit(F).labels_, want)
    with pytest.raises(NotFittedError):
        cls(3).predict(X)


# ------------------------------------------------------------------ divergence
@pytest.mark.parametrize("name", NAMES)
def test_huge_step_stops_at_once(name, data):
    """lr = 1e8: the fit stops in its first epoch with DivergenceError (a FloatingPointError), and no
    epoch reaches the callback."""
    X, y = data
    records = []
    with pytest.raises(FloatingPointError,
                       match=r"^(loss|training state) became (NaN|inf) in epoch 1 of phase \w+; lower --lr$") as info:
        tiny(name, lr=1e8).fit(X, y, callback=lambda est, r: records.append(r))
    assert isinstance(info.value, DivergenceError) and info.value.epoch == 1 and records == []


def test_dcae_divergence_message(data):
    X, _ = data
    with pytest.raises(DivergenceError) as info:
        tiny("DCAE", lr=1e8).fit(X)
    assert str(info.value) == "loss became NaN in epoch 1 of phase cluster; lower --lr"


@pytest.mark.parametrize("name", NAMES)
def test_divergence_keeps_the_last_good_state(name, data):
    """A step blown up in epoch 2 stops the fit there; the callback's last state is epoch 1's, finite,
    and resumes (with the step back) to the labels of an undisturbed fit."""
    X, y = data
    states = []

    def callback(est, record):
        states.append(est.training_state())
        for opt in est.optimizers_.values():
            opt.lr = 1e12  # from epoch 2 on

    with pytest.raises(DivergenceError, match="in epoch 2 of phase") as info:
        tiny(name).fit(X, y, callback=callback)
    assert info.value.epoch == 2 and len(states) == 1
    arrays, meta = states[0]
    assert meta["epoch"] == 1 and all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")
    resumed = tiny(name).fit(X, y, resume=states[0])
    np.testing.assert_array_equal(resumed.labels_, tiny(name).fit(X, y).labels_)


# ------------------------------------------------------------------ resume: data identity, schedule
@pytest.mark.parametrize("name", ["DCAE", "DCTL"])
def test_resume_checks_the_whole_content(name, data, fitted):
    """One changed pixel anywhere is another data set ("content differs"); an equal copy is the same."""
    X, y = data
    _, _, states = fitted(name)
    changed = X.copy()
    changed[len(X) // 2 + 1, 3, 3] ^= 1  # a row between the ones a subsample would hash
    with pytest.raises(ValueError, match=r"other data: the content differs \(same shape \(36, 1, 8, 8\)\)"):
        tiny(name).fit(changed, resume=states[0])
    with pytest.raises(ValueError, match=r"other data: shape \(36, 1, 8, 8\), not \(35, 1, 8, 8\)"):
        tiny(name).fit(X[:35], resume=states[0])
    tiny(name).fit(X.copy(), resume=states[0])


@pytest.mark.parametrize("name", NAMES)
def test_resume_with_changed_schedule(name, data, fitted):
    """Caps, patiences and stopping thresholds may change on resume (noted in history_); the rest may not."""
    X, y = data
    est, records, states = fitted(name)
    schedule = CLASSES[name].hyperparameters.schedule
    assert "epochs" in schedule or "pretrain_epochs" in schedule
    changes = {k: est.get_params()[k] + 1 for k in schedule if k.endswith("epochs")}
    resumed = tiny(name, **changes).fit(X, y, resume=states[0])
    note = resumed.history_[0]["resumed"]
    assert note == "; ".join(f"{k} {v - 1} -> {v}" for k, v in sorted(changes.items()))
    assert len(resumed.history_) > len(records)  # the raised caps ran more epochs
    model = next(k for k in ("lr", "batch_size") if k not in schedule)
    with pytest.raises(ValueError, match=f"hyperparameters: {model} differ"):
        tiny(name, **{model: est.get_params()[model] * 2}).fit(X, resume=states[0])
