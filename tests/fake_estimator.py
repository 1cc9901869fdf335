"""A tiny pure-NumPy estimator following the estimator contract, for fast CLI tests.

Embedding: a random projection W (perturbed per batch in "pretrain"); "cluster" epochs run
mini-batch k-means steps on the embedding.  All randomness from one Generator (saved in
the training state), so interrupted-and-resumed fits equal uninterrupted ones.  For the CLI's
failure paths: ``diverge_at=E`` raises the divergence error (a ``FloatingPointError``, as the real
estimators do) in epoch E, ``save_sleep`` seconds pass inside ``save`` (the final write).
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin

from nbclust.data.io import load_state, save_state


class _Table(tuple):
    """What the command line reads of a ``Params`` table: the ``schedule=True`` entries."""

    schedule = ("epochs", "pretrain_epochs")  # may change on resume


class FakeClusterer(BaseEstimator, ClusterMixin, TransformerMixin):
    _model_free_params = ("verbose", "backend", "sleep", "save_sleep", "diverge_at")

    def __init__(self, n_clusters=10, *, backend="cpu", random_state=None, verbose=0, epochs=3,
                 pretrain_epochs=1, batch_size=64, lr=0.5, alpha=2.0, sleep=0.0, diverge_at=0, save_sleep=0.0):
        self.n_clusters, self.backend, self.random_state, self.verbose = n_clusters, backend, random_state, verbose
        self.epochs, self.pretrain_epochs, self.batch_size, self.lr = epochs, pretrain_epochs, batch_size, lr
        self.alpha, self.sleep, self.diverge_at, self.save_sleep = alpha, sleep, diverge_at, save_sleep

    def _flat(self, X):
        X = np.asarray(X)
        if X.ndim not in (3, 4):
            raise ValueError(f"X must be (N,H,W) or (N,C,H,W), got {X.ndim}-D")
        if X.shape[-1] < 4 or X.shape[-2] < 4:
            raise ValueError(f"images of size {X.shape[-2]}x{X.shape[-1]} are too small for FakeClusterer (needs 4x4)")
        Z = X.reshape(len(X), -1).astype(np.float64) / (255.0 if X.dtype == np.uint8 else 1.0)
        if not np.isfinite(Z).all():
            raise ValueError("X contains NaN or Inf values")
        return Z

    def _embed(self, Z):
        return Z @ self.W_

    def fit(self, X, y=None, *, callback=None, resume=None):
        from nbclust.methods.metrics import ari, cluster_acc, nmi

        if not self.lr > 0 or not self.alpha > 1 or self.batch_size < 1 or self.epochs < 0:
            raise ValueError("invalid hyperparameters")
        Z = self._flat(X)
        if not 2 <= self.n_clusters <= len(Z):
            raise ValueError(f"n_clusters={self.n_clusters} must be in [2, {len(Z)}]")
        self.image_shape_ = tuple(np.shape(X)[1:])
        data = {"shape": list(np.shape(X)), "hash": hashlib.sha1(Z[::7].tobytes()).hexdigest()}
        rng = np.random.default_rng(self.random_state)
        self.W_ = rng.normal(size=(Z.shape[1], 8)) / np.sqrt(Z.shape[1])
        self.cluster_centers_, self.history_, epoch = None, [], 0
        if resume is not None:
            arrays, meta = resume
            free = (*self._model_free_params, *self.hyperparameters.schedule)
            mine = {k: v for k, v in self.get_params().items() if k not in free}
            if meta.get("class") != type(self).__name__ or {k: meta["params"][k] for k in mine} != mine:
                raise ValueError("state is from another method or other hyperparameters")
            if meta["data"] != data:
                raise ValueError("state was made on other data")
            self.W_, self.cluster_centers_ = arrays["W"].copy(), arrays.get("centers")
            rng.bit_generator.state, epoch, self.history_ = meta["rng"], meta["epoch"], list(meta["history"])
        self._rng, self._data = rng, data
        for e in range(epoch, self.pretrain_epochs + self.epochs):
            t0, phase = time.perf_counter(), "pretrain" if e < self.pretrain_epochs else "cluster"
            if phase == "cluster" and self.cluster_centers_ is None:
                self.cluster_centers_ = self._embed(Z[rng.choice(len(Z), self.n_clusters, replace=False)])
            loss, perm = 0.0, rng.permutation(len(Z))
            for i in range(0, len(Z), self.batch_size):
                H = self._embed(Z[perm[i : i + self.batch_size]])
                if phase == "pretrain":
                    self.W_ += 1e-3 * rng.normal(size=self.W_.shape)
                    loss += float((H**2).mean())
                    continue
                a = self._assign(H)
                for k in np.unique(a):
                    self.cluster_centers_[k] += self.lr * (H[a == k].mean(0) - self.cluster_centers_[k])
                loss += float(((H - self.cluster_centers_[a]) ** 2).sum(1).mean())
            time.sleep(self.sleep)
            if e + 1 == self.diverge_at:
                raise FloatingPointError(f"loss became NaN in epoch {e + 1} of phase {phase}; lower --lr")
            record = {"phase": phase, "epoch": e + 1, "loss": loss, "seconds": time.perf_counter() - t0}
            if y is not None and self.cluster_centers_ is not None:
                lab = self._assign(self._embed(Z))
                record.update(acc=cluster_acc(y, lab), nmi=nmi(y, lab), ari=ari(y, lab))
            self.history_.append(record)
            self._epoch = e + 1
            if callback is not None:
                callback(self, record)
        if self.cluster_centers_ is None:
            self.cluster_centers_ = self._embed(Z[: self.n_clusters])
        self.labels_ = self._assign(self._embed(Z))
        return self

    def _assign(self, H):
        C = self.cluster_centers_
        return np.argmin(((H[:, None, :] - C[None]) ** 2).sum(-1), axis=1).astype(np.int64)

    def training_state(self):
        arrays = {"W": self.W_.copy()}
        if self.cluster_centers_ is not None:
            arrays["centers"] = self.cluster_centers_.copy()
        meta = {"class": type(self).__name__, "params": self.get_params(), "rng": self._rng.bit_generator.state,
                "epoch": self._epoch, "history": self.history_, "data": self._data}
        return arrays, meta

    def transform(self, X):
        return self._embed(self._flat(X))

    def predict(self, X):
        return self._assign(self.transform(X))

    def reconstruct(self, X):
        return np.asarray(X)

    def save(self, path):
        time.sleep(self.save_sleep)
        save_state(path, {"W": self.W_, "centers": self.cluster_centers_},
                   {"class": type(self).__name__, "params": self.get_params()})

    @classmethod
    def load(cls, path):
        arrays, meta = load_state(path)
        est = cls(**meta["params"])
        est.W_, est.cluster_centers_ = arrays["W"], arrays["centers"]
        return est


# set outside the class body: the command line reads a class body's ``hyperparameters = ...`` as a
# Params table without importing the module (nbclust.methods.params.read_hyperparameters)
FakeClusterer.hyperparameters = _Table()
