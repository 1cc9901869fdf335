"""``KMeansPixels`` and ``ACPICPixels``: the baselines behind ``--method kmeans`` and ``--method acpic``.

sklearn ``KMeans`` (k-means++ init, ``n_init=20`` restarts, the best inertia kept) on the
flattened images read on the input contract (:mod:`nbclust.methods.inputs`: in [0, 1], uint8 /
255), or on a feature matrix (N, D) as given (``--features``: :meth:`features_input` keeps it flat) or, with
``input_scale="minmax"``, scaled per feature exactly as DCTL scales it, so that the two are compared on the
same input.  It follows the estimator contract
where it applies: one "cluster" epoch reported through ``callback``, ``labels_``,
``cluster_centers_`` (in pixel space, the embedding), ``transform``, ``predict``,
``save``/``load``; there is no training state to checkpoint.  ``ACPICPixels`` is the same
contract around :class:`nbclust.ACPIC` (its ``cluster_centers_`` are the cluster means, and
``predict`` gives the nearest mean: AC-PIC itself has no rule for new samples).
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.exceptions import NotFittedError

from nbclust.data.io import load_state, save_state
from nbclust.methods import inputs
from nbclust.methods.clustering import nearest
from nbclust.methods.params import ANY, COMMON_PARAMS, Declared, Param, Params
from nbclust.methods.scaling import minmax_apply, minmax_statistics

KMEANS_PARAMS = Params(
    COMMON_PARAMS["n_clusters"],
    Param("n_init", int, 20, "k-means restarts (k-means++ seeding), the best inertia kept", ge=1),
    Param("input_scale", str, "none", "scaling of a feature matrix (N, D): each feature to [0, 1] with the "
          "training data's min and range, as DCTL's default (minmax), or none; images are never rescaled",
          choices=("minmax", "none")),
    COMMON_PARAMS["random_state"],
    COMMON_PARAMS["verbose"],
)
ACPIC_PARAMS = Params(
    COMMON_PARAMS["n_clusters"],
    Param("n_neighbors", int, 20, "neighbours K of the k-nearest-neighbour graph (AC-PIC)"),
    Param("a", float, 1.0, "AC-PIC's affinity scale a", flag=False),
    Param("z", float, 0.01, "AC-PIC's path-integral weight z", flag=False),
    Param("random_state", ANY, None, "unused: AC-PIC is deterministic", flag=False, type_doc="int or None"),
    COMMON_PARAMS["verbose"],
)


class KMeansPixels(Declared, ClusterMixin, TransformerMixin, BaseEstimator):
    """sklearn ``KMeans`` on the flattened pixels (scaled to [0, 1]) or on a feature matrix (N, D)."""

    hyperparameters = KMEANS_PARAMS

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images (N, H, W), also (N, C, H, W)
        return tags

    def _flat(self, X, *, fitted=True):
        """(N, n_features) float64: images on the input contract (:mod:`nbclust.methods.inputs`), a feature
        matrix (N, D) as given; and the shape of one sample."""
        name = type(self).__name__
        if fitted and getattr(self, "cluster_centers_", None) is None:
            raise NotFittedError(f"this {name} is not fitted yet; call fit first")
        shapes = "(N, D), (N, H, W) or (N, C, H, W)"
        X = inputs.checked(X, shapes, "X.reshape(1, -1) for one sample")
        if X.ndim > 4:
            raise ValueError(f"X must have shape {shapes}, got {X.ndim}-D data of shape {X.shape}")
        Z = np.asarray(X, dtype=np.float64) if X.ndim == 2 else inputs.image_scale(X, np.float64)
        shape, Z = tuple(int(s) for s in X.shape[1:]), Z.reshape(len(X), -1)
        if fitted:
            if Z.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {Z.shape[1]} features, but {name} is expecting "
                                 f"{self.n_features_in_} features as input")
        return Z, shape

    def fit(self, X, y=None, *, callback=None, resume=None):
        from nbclust.methods.metrics import ari, cluster_acc, nmi

        if resume is not None:
            raise ValueError(f"{type(self).__name__} has no training state to resume from")
        Z, shape = self._flat(X, fitted=False)
        if not isinstance(self.n_clusters, (int, np.integer)) or not 1 <= self.n_clusters <= len(Z):
            raise ValueError(f"n_clusters must be an integer in [1, {len(Z)}], got {self.n_clusters!r}")
        self._validate_hyperparameters()
        Z = self._scaled(Z, len(shape) == 1, fit=True)
        t0 = time.perf_counter()
        record = {"phase": "cluster", "epoch": 1, **self._cluster(Z)}
        self.image_shape_ = shape
        self.n_features_in_ = int(Z.shape[1])
        record["seconds"] = time.perf_counter() - t0
        if y is not None:
            record.update(acc=cluster_acc(y, self.labels_), nmi=nmi(y, self.labels_), ari=ari(y, self.labels_))
        self.history_ = [record]
        if callback is not None:
            callback(self, record)
        return self

    def _scaled(self, Z, is_matrix, *, fit=False):
        """``Z`` min-max scaled per feature where the input is a feature matrix and
        ``input_scale="minmax"`` (statistics of the training data, :mod:`nbclust.methods.scaling`)."""
        if not is_matrix or getattr(self, "input_scale", "none") == "none":  # ACPICPixels: no scaling
            return Z
        if fit:
            self.input_min_, self.input_range_ = minmax_statistics(Z)
        return minmax_apply(Z, self.input_min_, self.input_range_)

    def _cluster(self, Z) -> dict:
        """Set ``labels_`` and ``cluster_centers_`` from the flat data; extra history entries."""
        from sklearn.cluster import KMeans

        km = KMeans(self.n_clusters, n_init=self.n_init, random_state=self.random_state).fit(Z)
        self.labels_ = km.labels_.astype(np.int64)
        self.cluster_centers_ = km.cluster_centers_
        return {"inertia": float(km.inertia_)}

    @staticmethod
    def features_input(F):
        """A feature matrix (N, D) is clustered as it is (see nbclust.data.features.as_estimator_input)."""
        return np.asarray(F)

    def transform(self, X):
        """The flattened [0, 1] pixels, or the (scaled) feature matrix (the space k-means works in)."""
        Z, shape = self._flat(X)
        return self._scaled(Z, len(shape) == 1)

    def predict(self, X):
        return nearest(self.transform(X), self.cluster_centers_)

    def save(self, path):
        meta = {"class": type(self).__name__, "params": self.get_params(), "image_shape": list(self.image_shape_)}
        arrays = {"cluster_centers_": self.cluster_centers_, "labels_": self.labels_}
        if getattr(self, "input_min_", None) is not None:
            arrays.update(input_min_=self.input_min_, input_range_=self.input_range_)
        save_state(path, arrays, meta)

    @classmethod
    def load(cls, path):
        arrays, meta = load_state(path)
        if meta.get("class") != cls.__name__:
            raise ValueError(f"{path}: holds a {meta.get('class')}, not a {cls.__name__}")
        est = cls(**meta["params"])
        est.cluster_centers_, est.labels_ = arrays["cluster_centers_"], arrays["labels_"]
        est.input_min_, est.input_range_ = arrays.get("input_min_"), arrays.get("input_range_")
        est.image_shape_ = tuple(meta["image_shape"])
        est.n_features_in_ = int(est.cluster_centers_.shape[1])
        return est


class ACPICPixels(KMeansPixels):
    """:class:`nbclust.ACPIC` on the flattened pixels or a feature matrix, with the baseline contract."""

    hyperparameters = ACPIC_PARAMS

    def _cluster(self, Z) -> dict:
        from nbclust.methods.acpic import ACPIC

        ac = ACPIC(self.n_clusters, n_neighbors=self.n_neighbors, a=self.a, z=self.z).fit(Z)
        self.labels_ = ac.labels_.astype(np.int64)
        self.cluster_centers_ = np.stack([Z[self.labels_ == k].mean(0) if np.any(self.labels_ == k) else Z.mean(0)
                                          for k in range(self.n_clusters)])  # an empty cluster: the mean
        return {"initial_clusters": int(ac.n_initial_clusters_)}
