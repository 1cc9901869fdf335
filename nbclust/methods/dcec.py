"""DCEC: deep convolutional embedded clustering (Guo, Liu, Zhu, Yin, ICONIP 2017), as in its reference code.

The baseline the seed papers compare with.  Phase "pretrain": the convolutional
auto-encoder (:func:`nbclust.methods.architectures.dcec`) trained with MSE by Adam.
Phase "cluster": mu <- k-means centres of the embedding (n_init=20), then per
mini-batch (Adam, same lr)

  q_ij = (1 + ||z_i - mu_j||^2)^-1 / sum_j' (...)            (Student t, v = 1)
  L    = mse(x, x^) + gamma * KL(P || Q)                       (gamma = 0.1, batchmean KL)

with the target p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'), f_j = sum_i q_ij,
recomputed on the whole data every ``update_interval`` (140) mini-batches; at each
update the run stops when the fraction of changed hard labels is below ``tol``
(0.001), before training on that batch, as the reference code does.  The batch
counter runs across epochs; ``epochs`` caps the number of passes (the reference's
``maxiter`` = 2e4 batches is about 73 epochs of MNIST-70000).  Unlike the reference
code, which walks the data in a fixed order, batches are shuffled every epoch.
"""

from __future__ import annotations

import numpy as np

from nbclust import optim
from nbclust.methods import architectures
from nbclust.methods.base import AutoencoderMixin, DeepClusterer


class DCEC(AutoencoderMixin, DeepClusterer):
    """Convolutional auto-encoder + DEC-style self-training with a kept reconstruction loss."""

    _min_size = 8
    _state_attrs = ("target_", "assign_")
    _state_meta = ("iter_",)

    def __init__(self, n_clusters=10, *, backend="cpu", random_state=None, verbose=0,
                 pretrain_epochs=200, epochs=100, batch_size=256, lr=1e-3, gamma=0.1,
                 update_interval=140, tol=1e-3, embedding_dim=10, n_init=20):
        self.n_clusters = n_clusters
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.gamma = gamma
        self.update_interval = update_interval
        self.tol = tol
        self.embedding_dim = embedding_dim
        self.n_init = n_init

    def _check_params(self):
        if not (isinstance(self.gamma, (int, float)) and self.gamma >= 0):
            raise ValueError(f"gamma must be a number >= 0, got {self.gamma!r}")
        for name in ("update_interval", "embedding_dim", "n_init"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")

    def _build(self, image_shape):
        enc, dec = architectures.dcec(image_shape, self.embedding_dim, backend=self._backend.name,
                                      dtype=self._dtype, rng=self._seed())
        return {"encoder": enc, "decoder": dec}

    def _phases(self):
        return [("pretrain", self.pretrain_epochs), ("cluster", self.epochs)]

    def _start_phase(self, phase, X):
        if phase == "cluster":
            km = self._kmeans(self._embed_all(X), n_init=self.n_init)
            self.cluster_centers_ = km.cluster_centers_
            self.assign_ = km.labels_.astype(np.int64)
            self.iter_ = 0
            self._after_load()

    def _after_load(self):
        self._centres_as_parameter()

    def _make_optimizers(self, phase):
        params = self.modules_["encoder"].parameters() + self.modules_["decoder"].parameters()
        if phase == "cluster":
            params = params + [self._mu]
        return {"adam": optim.Adam(params, lr=self.lr)}

    def _embed(self, xb):
        return self.modules_["encoder"](xb)

    def soft_assign(self, Z: np.ndarray) -> np.ndarray:
        """Q (Student t, v = 1) of embeddings Z (numpy) with the current centres."""
        q = 1.0 / (1.0 + ((Z[:, None, :] - self.cluster_centers_[None]) ** 2).sum(-1))
        return q / q.sum(1, keepdims=True)

    @staticmethod
    def target(Q: np.ndarray) -> np.ndarray:
        """DEC's target p_ij proportional to q_ij^2 / f_j, f_j = sum_i q_ij, rows normalised."""
        P = Q**2 / Q.sum(0)
        return P / P.sum(1, keepdims=True)

    def _update_target(self, X):
        self.cluster_centers_ = self._backend.to_numpy(self._mu.data).astype(np.float64)
        Q = self.soft_assign(self._embed_all(X))
        self.target_ = self.target(Q)
        labels = Q.argmax(1)
        changed = float(np.mean(labels != self.assign_))
        self.assign_ = labels
        if self.iter_ > 0 and changed < self.tol:
            self.converged_ = True

    def _batch_step(self, phase, X, idx):
        b, enc, dec = self._backend, self.modules_["encoder"], self.modules_["decoder"]
        if phase == "cluster":
            if self.iter_ % self.update_interval == 0:
                self._update_target(X)
                if self.converged_:
                    return {}
            self.iter_ += 1
        x = X[b.asarray(idx)]
        z = enc(x)
        recon, (g_xhat, _) = self._loss("mse", dec(z), x)
        g_z = dec.backward(g_xhat)
        if phase == "pretrain":
            enc.backward(g_z, input_grad=False)
            return {"mse": recon}
        st = b.op("student_t")
        q, ctx = st.forward(z, self._mu.data, v=1.0)
        p = b.asarray(self.target_[idx], self._dtype)
        kl, (_, g_q) = self._loss("kl_div", p, q)
        g_zq, g_mu = st.backward(g_q * self.gamma, ctx)
        enc.backward(g_z + g_zq, input_grad=False)
        self._mu.grad += g_mu
        return {"mse": recon, "kl": kl, "loss": recon + self.gamma * kl}

    def _end_epoch(self, phase, X):
        if phase == "cluster":
            self.cluster_centers_ = self._backend.to_numpy(self._mu.data).astype(np.float64)
        return {}
