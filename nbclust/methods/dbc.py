"""FCAE-KMS and DBC: discriminatively boosted clustering (Li, Qiao, Zhang, Xi; seed 002).

Stage I (Algorithm 1, both estimators): train the fully convolutional auto-encoder
(Table 2; :func:`nbclust.methods.architectures.fcae`) with the Euclidean loss
(``mse``: the mean of ||x - x^||^2 over pixels, the paper's sum up to a constant
that Adam does not see), then k-means (sklearn, n_init=20, seeded from the
estimator's Generator) on the 1x1 features z = f(x).  ``FCAEKMeans`` stops here
(the paper's FCAE-KMS baseline).

Stage II (Algorithm 2, ``DBC``): drop the decoder; every epoch
  s_ij = (1 + ||z_i - mu_j||^2)^-1 / sum_j' (...)             (eq 1, line 7, v = 1)
  r_ij = (s_ij^alpha / n_j) / sum_j' (s_ij'^alpha / n_j')       (eq 2, line 8)
  n_j  = sum_i s_ij^alpha ("boosted", the paper's), sum_i s_ij ("soft", DEC's) or 1 ("none")
then one pass of mini-batches minimising L = sum_i sum_j r_ij log(r_ij / s_ij)
(eq 3, a SUM over the batch) w.r.t. the encoder and mu with the exact gradients
of eqs (4)-(5) (op ``dbc_kl``); stop when the fraction of changed hard assignments
is below ``tol`` (line 14).  R and S are computed with the encoder in eval mode
(batch norm on its stage I running statistics), and the encoder stays in eval
mode during stage II, so z_i = f(x_i) is the same function in lines 7 and 10.
The paper names no optimiser; we use Adam (``lr`` for stage I, ``cluster_lr``
for stage II).
"""

from __future__ import annotations

import numpy as np

from nbclust import optim
from nbclust.methods import architectures
from nbclust.methods.base import AutoencoderMixin, DeepClusterer

NORMALIZATIONS = ("boosted", "soft", "none")


class FCAEKMeans(AutoencoderMixin, DeepClusterer):
    """FCAE features + k-means (the FCAE-KMS baseline of seed 002); one phase, "pretrain"."""

    _min_size = 8

    def __init__(self, n_clusters=10, *, backend="cpu", random_state=None, verbose=0,
                 pretrain_epochs=50, batch_size=256, lr=1e-3, n_init=20):
        self.n_clusters = n_clusters
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.pretrain_epochs = pretrain_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.n_init = n_init

    def _check_params(self):
        if not (isinstance(self.n_init, (int, np.integer)) and self.n_init >= 1):
            raise ValueError(f"n_init must be an integer >= 1, got {self.n_init!r}")

    def _build(self, image_shape):
        enc, dec = architectures.fcae(image_shape, backend=self._backend.name, dtype=self._dtype,
                                      rng=self._seed())
        return {"encoder": enc, "decoder": dec}

    def _phases(self):
        return [("pretrain", self.pretrain_epochs)]

    def _make_optimizers(self, phase):
        m = self.modules_
        return {"adam": optim.Adam(m["encoder"].parameters() + m["decoder"].parameters(), lr=self.lr)}

    def _embed(self, xb):
        return self.modules_["encoder"](xb)

    def _batch_step(self, phase, X, idx):
        """Stage I: Euclidean reconstruction loss of the FCAE (M1)."""
        enc, dec = self.modules_["encoder"], self.modules_["decoder"]
        x = X[self._backend.asarray(idx)]
        x_hat = dec(enc(x))
        loss, (g, _) = self._loss("mse", x_hat, x)
        enc.backward(dec.backward(g), input_grad=False)
        return {"mse": loss}

    def _stage_one_kmeans(self, X):
        """Algorithm 1 lines 2-3: Z = f(X), mu = k-means centres."""
        km = self._kmeans(self._embed_all(X), n_init=self.n_init)
        self.cluster_centers_ = km.cluster_centers_

    def _finish(self, X):
        if self.cluster_centers_ is None:
            self._stage_one_kmeans(X)


class DBC(FCAEKMeans):
    """Discriminatively boosted clustering: FCAE (stage I) then boosted self-training (stage II)."""

    _state_attrs = ("assign_",)

    def __init__(self, n_clusters=10, *, backend="cpu", random_state=None, verbose=0,
                 pretrain_epochs=50, epochs=50, batch_size=256, lr=1e-3, cluster_lr=1e-4,
                 alpha=2.0, normalization="boosted", tol=1e-3, n_init=20):
        super().__init__(n_clusters, backend=backend, random_state=random_state, verbose=verbose,
                         pretrain_epochs=pretrain_epochs, batch_size=batch_size, lr=lr, n_init=n_init)
        self.epochs = epochs
        self.cluster_lr = cluster_lr
        self.alpha = alpha
        self.normalization = normalization
        self.tol = tol

    def _check_params(self):
        super()._check_params()
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 1):
            raise ValueError(f"alpha must be a number > 1, got {self.alpha!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")
        if not (isinstance(self.cluster_lr, (int, float)) and np.isfinite(self.cluster_lr) and self.cluster_lr > 0):
            raise ValueError(f"cluster_lr must be a positive number, got {self.cluster_lr!r}")

    def _phases(self):
        return [("pretrain", self.pretrain_epochs), ("cluster", self.epochs)]

    def _start_phase(self, phase, X):
        if phase == "cluster":  # Algorithm 2 line 5: theta <- theta_e*, mu <- k-means centres
            self._stage_one_kmeans(X)
            self.assign_ = self._assign(self._embed_all(X))
            self._after_load()

    def _after_load(self):
        self._centres_as_parameter()

    def _make_optimizers(self, phase):
        if phase == "pretrain":
            return super()._make_optimizers(phase)
        return {"adam": optim.Adam(self.modules_["encoder"].parameters() + [self._mu], lr=self.cluster_lr)}

    def target(self, S: np.ndarray) -> np.ndarray:
        """R from S (eq 2): r_ij proportional to s_ij^alpha / n_j, rows normalised."""
        boosted = S**self.alpha
        n = {"boosted": boosted.sum(0), "soft": S.sum(0), "none": np.ones(S.shape[1])}[self.normalization]
        R = boosted / n
        return R / R.sum(1, keepdims=True)

    def soft_assign(self, Z: np.ndarray) -> np.ndarray:
        """S (eq 1, v = 1) of embeddings Z (numpy) with the current centres."""
        d2 = ((Z[:, None, :] - self.cluster_centers_[None]) ** 2).sum(-1)
        q = 1.0 / (1.0 + d2)
        return q / q.sum(1, keepdims=True)

    def _begin_epoch(self, phase, X):
        if phase == "cluster":
            self.target_ = self.target(self.soft_assign(self._embed_all(X)))  # lines 7-8
            self.modules_["encoder"].eval()

    def _batch_step(self, phase, X, idx):
        if phase == "pretrain":
            return super()._batch_step(phase, X, idx)
        b, enc = self._backend, self.modules_["encoder"]
        z = enc(X[b.asarray(idx)])  # line 10
        r = b.asarray(self.target_[idx], self._dtype)
        loss, (g_z, g_mu, _) = self._loss("dbc_kl", z, self._mu.data, r, v=1.0)  # eqs 3-5
        enc.backward(g_z, input_grad=False)  # line 11
        self._mu.grad += g_mu
        return {"kl": loss / len(idx)}

    def _end_epoch(self, phase, X):
        if phase == "pretrain":
            return {}
        self.cluster_centers_ = self._backend.to_numpy(self._mu.data).astype(np.float64)
        labels = self._assign(self._embed_all(X))
        changed = float(np.mean(labels != self.assign_))
        self.assign_ = labels
        self.converged_ = changed < self.tol  # line 14
        return {"changed": changed}
