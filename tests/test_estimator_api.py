"""The estimator contract for every estimator in ``nbclust.methods.ESTIMATORS``.

sklearn conventions, determinism, predict/transform, save/load, validation errors,
callback records, and resume from a mid-fit training state.
"""

import numpy as np
import pytest
from sklearn.base import clone

from nbclust.io import load_state, save_state
from nbclust.methods import ESTIMATORS, available
from nbclust.methods.base import DeepClusterer
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
    ("n_clusters", 1), ("n_clusters", 1000), ("lr", -0.1), ("lr", 0), ("epochs", -1),
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
    with pytest.raises(ValueError, match=param if param != "n_clusters" or value < 2 else "n_clusters"):
        est.fit(X)


@pytest.mark.parametrize("name", NAMES)
def test_invalid_inputs(name, data):
    X, y = data
    est = tiny(name)
    bad = X.astype(np.float32) / 255
    bad[0, 0, 0] = np.nan
    cases = [
        (X[0], "shape"), (X[:, None, None], "shape"), (bad, "NaN"),
        (np.zeros((4, 3, 3), np.uint8), "too small"), (X[:0], "empty"),
    ]
    for Xb, msg in cases:
        with pytest.raises(ValueError, match=msg):
            est.fit(Xb)
    with pytest.raises(ValueError, match="labels"):
        est.fit(X, y[:-1])


@pytest.mark.parametrize("name", NAMES)
def test_predict_before_fit_and_wrong_shape(name, data, fitted):
    X, _ = data
    with pytest.raises(ValueError, match="not fitted"):
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
