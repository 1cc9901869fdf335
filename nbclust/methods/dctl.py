"""DCTL: deep convolutional transform learning with an embedded k-means loss (seed 003).

Objective (eq 5), with the paper's Z (codes as columns) written row-wise here
(``Z`` is (N, d), one row per image), ``A = T2 . (T1 . X)`` the flattened
transform output and ``H`` the one-hot cluster indicators::

    ||A - Z||_F^2 + psi(Z) + lam * sum_i (||T_i||_F^2 - log det T_i)
                  + mu * ||Z - Z H^T (H H^T)^-1 H||_F^2

- Transform (Fig. 1): T1 = ``n_filters`` filters ``kernel_size`` x ``kernel_size``
  ("same" zero padding, no bias: the paper's convolution ``t_m * x`` has none)
  -> max-pool 2 -> SELU -> T2 (same shape, ``n_filters`` input channels)
  -> max-pool 2 -> flatten.  ``n_layers=1`` keeps T1 -> max-pool (the output
  layer of either depth has no activation).
- Choices the paper leaves open (it ran on 32x32-ish DSIFT+PCA inputs):
  ``pool="auto"`` (default) max-pools after a layer only while the pooled map
  keeps a side >= 7, so 28/32-pixel images pool twice as in Fig. 1 but 8x8
  digits keep 8x8x3 = 192 features instead of 2x2x3 = 12 (``"always"``: the
  paper's, ``"never"``).  ``standardize=True`` (default) ends the transform
  with a per-feature standardisation of A (a batch norm without trainable
  scale/shift: batch statistics in the P1 steps, the full-data statistics,
  refreshed after every epoch, for Z's initialisation and for prediction).
  Why: with H fixed, minimising over Z gives Z = A P + A (I - P) / (1 + mu),
  so eq (6) reduces to mu / (1 + mu) * (within-cluster scatter of A) + lam R(T);
  this falls by shrinking A (lam = 0.001 barely resists) or by moving A onto
  its low-variance directions, neither of which helps the clustering.
  Standardised features make the within-cluster scatter relative to the
  total and put every feature on the same scale for k-means.  Measured on
  digits (seeds 0-3): the gain over the paper's architecture (ACC 0.50) comes
  from these initial features (0.74-0.83); training adds <= 0.01.
  ``z_lr`` (default 0.1): Adam step of Z, separate from the filters' ``lr``;
  each row of Z gets one step per epoch, so with ``lr=1e-3`` Z (unit scale
  when standardised) moves ~0.03 in 30 epochs and P1 is far from solved.
- ``psi`` is the non-negativity constraint: Z <- max(Z, 0) after every step.
- log det of a layer: the filter bank (F, C, kh, kw) is the matrix
  M = F x (C kh kw) (the paper stacks the filters as columns of T; T^T = M);
  for a non-square M "log det T" is taken as sum_i log sigma_i(M) =
  1/2 log det(M M^T) (op ``neg_logdet``).  For T2 each filter spans all
  ``n_filters`` input channels, so its row has ``n_filters * kh * kw`` taps.
  Eq (5) writes sum_{i=1..3} but the network has ``n_layers`` banks; the
  sum runs over those.
- The k-means term with H fixed is sum_n ||z_n - mean of z over cluster(n)||^2
  (P = H^T (H H^T)^-1 H is the projection onto cluster-constant rows; op
  ``kmeans_subspace``).

Algorithm (joint, the paper's): Z starts as the transform output of the
initial filters clipped at 0; H from k-means (n_init 10) on Z.  Each epoch is
one alternation: P1 (eq 6) = one pass of Adam mini-batch steps over T1, T2
and the batch rows of Z with H fixed, then P2 (eq 7) = k-means on Z, warm
started from the previous centres (so cluster indices stay aligned), until
the centres move less than ``tol`` (||C_new - C_old||_F / ||C_old||_F).

Mini-batches: a batch B of b rows sees ``||A_B - Z_B||^2 + mu * kmeans(Z_B, H_B)
+ (b / N) * lam * R(T)``: the per-sample terms over the batch only (the
k-means term with the cluster means of the batch rows), the full-data term R
scaled by b/N so that one epoch's batch objectives add up to eq (6) (exact
for ``batch_size >= N``).  Z is updated only on its batch rows, by Adam with a
per-row step count (a row's moments and bias correction advance only when the
row is in a batch, like torch's SparseAdam); T by ``nbclust.optim.Adam``.

Piecemeal ablation (``joint=False``, Table 2 "Piece"): learn T and Z with
mu = 0 for ``pretrain_epochs + epochs`` epochs, then k-means once on Z.
``pretrain_epochs`` (default 0, the paper's joint algorithm) with ``joint=True``
runs that many mu = 0 epochs first; the joint phase then starts from the
learnt Z (H = k-means on it).

Prediction (the paper is transductive): the embedding of an image is its
code max(T(x), 0) (the psi-feasible code minimising the fidelity term), and
its label the nearest centre; ``labels_`` on the training data use the same
rule, so ``predict(X) == labels_``.  They differ from H (``code_labels_``,
the P2 assignment of the learnt Z) on ~8% of digits, with the same accuracy.
"""

from __future__ import annotations

import numpy as np

from nbclust.methods.base import DeepClusterer


class DCTLTransform:
    """The deep convolutional transform and the eq-(6) batch objective with its gradients.

    ``pool``: per layer, whether a 2x2 max-pool follows it; ``standardize``: None, or
    the feature count d of a final batch norm (its weight/bias are not trained).
    """

    def __init__(self, in_channels: int, *, n_layers=2, n_filters=3, kernel_size=9, pool=(True, True),
                 standardize=None, backend="cpu", dtype=np.float32, rng=None):
        from nbclust import nn

        kw = dict(backend=backend, dtype=dtype, rng=rng)
        layers = []
        for i in range(n_layers):
            if i:
                layers.append(nn.SELU(**kw))
            layers.append(nn.Conv2d(in_channels if i == 0 else n_filters, n_filters, kernel_size,
                                    padding="same", bias=False, **kw))
            if pool[i]:
                layers.append(nn.MaxPool2d(2, **kw))
        layers.append(nn.Flatten(**kw))
        self.norm = None
        if standardize is not None:  # the feature count d
            self.norm = nn.BatchNorm1d(standardize, **kw)  # its affine weight/bias stay 1/0 (not trained)
            layers.append(self.norm)
        self.net = nn.Sequential(*layers)
        self.filters = [m.weight for m in layers if isinstance(m, nn.Conv2d)]  # T1 (, T2)
        self.b = self.net._backend

    def forward(self, x):
        return self.net.forward(x)

    def set_feature_stats(self, chunks):
        """Set the eval statistics of the standardisation to the (biased) mean and variance
        of the un-normalised features of ``chunks`` (an iterable of input batches)."""
        xp = self.b.xp
        feats = []
        for h in chunks:
            for layer in self.net.layers[:-1]:
                h = layer.forward(h)
            feats.append(h)
        f = xp.concatenate(feats)
        self.norm._buffers["running_mean"] = f.mean(0)
        self.norm._buffers["running_var"] = f.var(0)

    def _op(self, name, *inputs, **attrs):
        value, ctx = self.b.op(name).forward(*inputs, **attrs)
        grads = self.b.op(name).backward(self.b.xp.ones((), dtype=value.dtype), ctx)
        return float(value), grads

    def batch_loss(self, x, z, labels, *, lam, mu, n_clusters, reg_scale=1.0):
        """Terms of the batch objective; accumulates the T gradients and returns dL/dz.

        ``L = ||A - z||^2 + mu * kmeans(z, labels) + reg_scale * lam * sum_i (||T_i||^2 - log det T_i)``
        (``labels=None`` or ``mu=0``: no k-means term).
        """
        a = self.net.forward(x)
        fid, (g_a, g_z) = self._op("fidelity", a, z)
        self.net.backward(g_a, input_grad=False)
        terms = {"fidelity": fid}
        reg = 0.0
        for p in self.filters:
            fro, (g_fro,) = self._op("frobenius", p.data)
            nld, (g_nld,) = self._op("neg_logdet", p.data)
            reg += fro + nld
            p.grad += (reg_scale * lam) * (g_fro + g_nld)
        terms["reg"] = reg_scale * lam * reg
        if labels is not None and mu > 0:
            km, (g_km, _) = self._op("kmeans_subspace", z, labels, n_clusters=n_clusters)
            g_z = g_z + mu * g_km
            terms["kmeans"] = mu * km
        terms["loss"] = sum(terms.values())
        return terms, g_z


class DCTL(DeepClusterer):
    """Deep convolutional transform learning + k-means (Goel et al., ICIP 2022); see the module doc.

    ``cluster_centers_`` are the k-means centres of the codes Z (K, d),
    ``codes_`` the learnt Z, ``transform(X)`` the codes max(T(x), 0).
    """

    _state_attrs = ("codes_", "code_labels_", "_zm", "_zv", "_zt")
    _min_size = 4  # pool="always": two 2x2 max-pools ("same" convolutions work at any size)

    def __init__(self, n_clusters=10, *, backend="cpu", random_state=None, verbose=0,
                 lam=0.001, mu=1.0, n_layers=2, joint=True, n_filters=3, kernel_size=9,
                 pool="auto", standardize=True, pretrain_epochs=0, epochs=30, batch_size=256, lr=1e-3,
                 z_lr=0.1, tol=1e-4):
        self.n_clusters = n_clusters
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.lam = lam
        self.mu = mu
        self.n_layers = n_layers
        self.joint = joint
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.pool = pool
        self.standardize = standardize
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.z_lr = z_lr
        self.tol = tol

    # ------------------------------------------------------------ hooks
    def _check_params(self):
        if self.n_layers not in (1, 2) or isinstance(self.n_layers, bool):
            raise ValueError(f"n_layers must be 1 or 2, got {self.n_layers!r}")
        for name in ("lam", "mu"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating)) and np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.joint, (bool, np.bool_)):
            raise ValueError(f"joint must be True or False, got {self.joint!r}")
        if not isinstance(self.n_filters, (int, np.integer)) or self.n_filters < 1:
            raise ValueError(f"n_filters must be an integer >= 1, got {self.n_filters!r}")
        k = self.kernel_size
        if not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1 ('same' padding), got {k!r}")
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise ValueError(f"standardize must be True or False, got {self.standardize!r}")
        zl = self.z_lr
        if zl is not None and not (isinstance(zl, (int, float, np.floating)) and np.isfinite(zl) and zl > 0):
            raise ValueError(f"z_lr must be None or a positive number, got {zl!r}")
        if self.pool not in ("auto", "always", "never"):
            raise ValueError(f"pool must be 'auto', 'always' or 'never', got {self.pool!r}")

    def _pooling(self, side):
        """Which layers max-pool 2x2: all ("always", the paper), none ("never"), or ("auto")
        a layer pools only while the pooled map keeps a side >= 7 (28 and 32 pixel images
        pool twice as in the paper; 8x8 digits keep their 8x8 maps)."""
        if self.pool != "auto":
            return (self.pool == "always",) * self.n_layers
        flags = []
        for _ in range(self.n_layers):
            flags.append(side // 2 >= 7)
            side = side // 2 if flags[-1] else side
        return tuple(flags)

    def _build(self, image_shape):
        C = image_shape[0]
        taps = C * self.kernel_size**2
        if self.n_filters > taps:
            raise ValueError(
                f"n_filters={self.n_filters} exceeds the {taps} taps of a {C}-channel "
                f"{self.kernel_size}x{self.kernel_size} filter: log det T would be -inf"
            )
        pool = self._pooling(min(image_shape[1:]))
        side = [s // 2**sum(pool) for s in image_shape[1:]]
        self.transform_ = DCTLTransform(
            C, n_layers=self.n_layers, n_filters=self.n_filters, kernel_size=self.kernel_size,
            pool=pool, standardize=self.n_filters * side[0] * side[1] if self.standardize else None,
            backend=self.backend, dtype=self._dtype, rng=self._rng)
        return {"transform": self.transform_.net}

    def _phases(self):
        if not self.joint:
            return [("pretrain", self.pretrain_epochs + self.epochs)]
        return [("pretrain", self.pretrain_epochs), ("cluster", self.epochs)]

    def _make_optimizers(self, phase):
        from nbclust.optim import Adam

        return {"T": Adam(self.transform_.filters, lr=self.lr)}

    def _start_phase(self, phase, X):
        xp = self._backend.xp
        if self.codes_ is None:  # the joint phase keeps the Z learnt in a pre-training phase
            self._set_feature_stats(X)
            Z = np.maximum(self._transform_all(X), 0.0)
            self.codes_ = self._backend.asarray(Z, dtype=self._dtype)
            self._zm, self._zv = xp.zeros_like(self.codes_), xp.zeros_like(self.codes_)
            self._zt = np.zeros(Z.shape[0], dtype=np.int64)
        if phase == "cluster":
            Z = self._backend.to_numpy(self.codes_).astype(np.float64)
            km = self._kmeans(Z, n_init=10)
            self.cluster_centers_ = km.cluster_centers_
            self.code_labels_ = km.labels_.astype(np.int64)

    def _batch_step(self, phase, X, idx):
        N = X.shape[0]
        labels = None
        if phase == "cluster":
            labels = self._backend.asarray(self.code_labels_[idx], dtype=np.int64)
        z = self.codes_[idx]
        terms, g_z = self.transform_.batch_loss(
            X[idx], z, labels, lam=self.lam, mu=self.mu if phase == "cluster" else 0.0,
            n_clusters=self.n_clusters, reg_scale=len(idx) / N)
        self._z_step(idx, g_z)
        return terms

    def _z_step(self, idx, g):
        """Adam on the batch rows of Z (per-row step counts), then the psi projection Z >= 0."""
        xp, b1, b2, eps = self._backend.xp, 0.9, 0.999, 1e-8
        t = self._zt[idx] + 1
        self._zt[idx] = t
        m = b1 * self._zm[idx] + (1 - b1) * g
        v = b2 * self._zv[idx] + (1 - b2) * g * g
        self._zm[idx], self._zv[idx] = m, v
        bc1 = self._backend.asarray(1 - b1**t, dtype=self._dtype)[:, None]
        bc2 = self._backend.asarray(np.sqrt(1 - b2**t), dtype=self._dtype)[:, None]
        lr = self.lr if self.z_lr is None else self.z_lr
        step = (lr / bc1) * m / (xp.sqrt(v) / bc2 + eps)
        self.codes_[idx] = xp.maximum(self.codes_[idx] - step, 0)

    def _end_epoch(self, phase, X):
        self._set_feature_stats(X)
        if phase != "cluster":
            return {}
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        Z = self._backend.to_numpy(self.codes_).astype(np.float64)
        old = self.cluster_centers_
        with threadpool_limits(1):  # as in DeepClusterer._kmeans: OpenMP spinning is slow under load
            km = KMeans(self.n_clusters, init=old, n_init=1, random_state=self._seed()).fit(Z)  # P2, eq (7)
        self.cluster_centers_ = km.cluster_centers_
        self.code_labels_ = km.labels_.astype(np.int64)
        shift = float(np.linalg.norm(km.cluster_centers_ - old) / max(np.linalg.norm(old), 1e-12))
        self.converged_ = shift < self.tol
        return {"center_shift": shift}

    def _finish(self, X):
        if not self.joint:  # piecemeal: k-means once on the learnt codes
            km = self._kmeans(self._backend.to_numpy(self.codes_), n_init=10)
            self.cluster_centers_ = km.cluster_centers_
            self.code_labels_ = km.labels_.astype(np.int64)

    def _set_feature_stats(self, X, batch: int = 512):
        if self.transform_.norm is not None:
            self.transform_.set_feature_stats(X[i:i + batch] for i in range(0, X.shape[0], batch))

    def _transform_all(self, X, batch: int = 512) -> np.ndarray:
        """T(X) (eval mode: a standardisation uses the full-data statistics)."""
        b = self._backend
        self._set_mode(False)
        parts = [b.to_numpy(self.transform_.forward(X[i:i + batch])) for i in range(0, X.shape[0], batch)]
        self._set_mode(True)
        return np.concatenate(parts).astype(np.float64)

    def _embed(self, xb):
        return self._backend.xp.maximum(self.transform_.forward(xb), 0)

    def _after_load(self):
        if getattr(self, "codes_", None) is not None:
            self.codes_ = self._backend.asarray(self.codes_, dtype=self._dtype)
            self._zm = self._backend.asarray(self._zm, dtype=self._dtype)
            self._zv = self._backend.asarray(self._zv, dtype=self._dtype)
