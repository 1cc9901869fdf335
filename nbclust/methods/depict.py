"""DEPICT: deep embedded regularized clustering (Ghasedi Dizaji et al., ICCV 2017; seed 004).

The poster gives the model and the objective; the authors' released code
fills the gaps, as read here:

- Noisy encoder: dropout 0.1 on the input -> conv 50 k4 s2 -> LeakyReLU 0.01
  -> dropout 0.1 -> conv 50 k5 s2 pad 2 -> LeakyReLU -> dense ``K`` + tanh
  (the embedding z, d = K = ``n_clusters``).  The clean encoder is the same
  layers (shared weights) without dropout.
- Decoder, mirrored, on the noisy z: dense + LeakyReLU -> reshape ->
  transposed conv 50 k5 s2 pad 2 + LeakyReLU (h^1) -> transposed conv ``C`` k4
  s2 + tanh (x^); inputs are mapped to [-1, 1] by 2x - 1 (X in [0, 1]).
- Softmax head p_ik proportional to exp(theta_k^T z_i + b_k): a multinomial
  logistic regression layer (the poster's formula leaves the bias implicit;
  without it a centroid of large norm captures every sample), theta
  initialised with the k-means centroids c_k (n_init 20) of the pretrained
  clean embedding and b_k = -||c_k||^2 / 2, so that the initial argmax is the
  k-means partition (theta_k^T z + b_k = -||z - c_k||^2 / 2 + const(z)).  The
  first targets Q are the one-hot k-means labels (Algorithm 1 line 1,
  "initialize Q using a clustering algorithm").
- Loss (Algorithm 1 line 3): -(1/N) sum q_ik log p~_ik (noisy-path prediction,
  op ``soft_cross_entropy``) + sum_l w_l mse(z^_l, z_l): reconstruction of the
  input (w = 1) and of each hidden layer h^1, h^2 (w = ``hidden_weight`` 0.1),
  each normalised by its size (op ``mse`` is the mean).  The hidden targets are
  the clean-path activations; the gradient flows through both sides (the
  objective as written; the released Theano code does not stop it).
- Targets from the clean path (Algorithm 1 line 5): ``target="paper"``:
  q_ik proportional to p_ik / (sum_i' p_i'k)^(1/2); ``target="code"``:
  p_ik^2 / sum_i' p_i'k (the released code); rows normalised.  The balance
  prior KL(f||u) enters through this closed-form target.
- Training: the denoising autoencoder is pretrained on the reconstruction
  loss alone (``pretrain_epochs``), then the joint loss; targets are
  recomputed on all data after every epoch, and training stops when the
  fraction of changed target argmax is below ``tol``.  Adam lr 1e-4, batch 100.
- Dropout masks are drawn from the estimator's Generator (saved in the
  training state), not by the layers.

Other image sizes: the layers stay the same; each transposed convolution gets
the ``output_padding`` (0 or 1) that restores its encoder input size
exactly: h1 = (H - 4) // 2 + 1, h2 = (h1 - 1) // 2 + 1, so 28 -> 13 -> 7,
8 -> 3 -> 2, 16 -> 7 -> 4, 32 -> 15 -> 8, 64 -> 31 -> 16 (any side >= 4).

``cluster_centers_`` are the softmax head weights theta (K, d); the label of
an image is argmax_k theta_k^T z + b_k (z the clean embedding), also for ``labels_``.
"""

from __future__ import annotations

import numpy as np

from nbclust.methods.base import AutoencoderMixin, DeepClusterer

_TARGETS = ("paper", "code")


def depict_target(p: np.ndarray, kind: str) -> np.ndarray:
    """Q from the clean predictions P (N, K): Algorithm 1 line 5 ("paper") or the released code ("code")."""
    col = p.sum(axis=0, keepdims=True)
    q = p / np.sqrt(col) if kind == "paper" else p**2 / col
    return q / q.sum(axis=1, keepdims=True)


def _out_pad(size_in: int, size_out: int, k: int, s: int, pad: int) -> int:
    """output_padding making a transposed conv map ``size_out`` back to ``size_in``."""
    return size_in - ((size_out - 1) * s - 2 * pad + k)


class DEPICTNet:
    """Encoders (noisy/clean, shared weights), decoder and softmax head; the loss with its gradients."""

    def __init__(self, image_shape, n_clusters, *, dropout=0.1, hidden_weight=0.1,
                 backend="cpu", dtype=np.float32, rng=None):
        from nbclust import nn

        C, H, W = image_shape
        h1 = ((H - 4) // 2 + 1, (W - 4) // 2 + 1)
        h2 = ((h1[0] - 1) // 2 + 1, (h1[1] - 1) // 2 + 1)
        op1 = tuple(_out_pad(a, b, 4, 2, 0) for a, b in zip((H, W), h1))
        op2 = tuple(_out_pad(a, b, 5, 2, 2) for a, b in zip(h1, h2))
        flat, K = 50 * h2[0] * h2[1], n_clusters
        kw = dict(backend=backend, dtype=dtype, rng=rng)
        self.enc1 = nn.Sequential(nn.Conv2d(C, 50, 4, stride=2, **kw), nn.LeakyReLU(0.01, **kw))
        self.enc2 = nn.Sequential(nn.Conv2d(50, 50, 5, stride=2, padding=2, **kw), nn.LeakyReLU(0.01, **kw))
        self.enc3 = nn.Sequential(nn.Flatten(**kw), nn.Linear(flat, K, **kw), nn.Tanh(**kw))
        self.dec3 = nn.Sequential(nn.Linear(K, flat, **kw), nn.LeakyReLU(0.01, **kw), nn.Reshape((50, *h2), **kw))
        self.dec2 = nn.Sequential(nn.ConvTranspose2d(50, 50, 5, stride=2, padding=2, output_padding=op2, **kw),
                                  nn.LeakyReLU(0.01, **kw))
        self.dec1 = nn.Sequential(nn.ConvTranspose2d(50, C, 4, stride=2, output_padding=op1, **kw), nn.Tanh(**kw))
        self.head = nn.Linear(K, K, **kw)
        self.clean = [m.shared_copy() for m in (self.enc1, self.enc2, self.enc3)]
        self.dropout, self.hidden_weight = dropout, hidden_weight
        self.b, self.dtype = self.enc1._backend, np.dtype(dtype)

    @property
    def modules(self) -> dict:
        names = ("enc1", "enc2", "enc3", "dec3", "dec2", "dec1", "head")
        return {n: getattr(self, n) for n in names}

    def embed(self, x):
        """Clean embedding z of images x in [0, 1]."""
        h = 2 * x - 1
        for m in self.clean:
            h = m.forward(h)
        return h

    def draw_masks(self, shape, rng: np.random.Generator) -> tuple:
        """Dropout masks (input, first hidden layer) for a batch of image ``shape`` (N, C, H, W)."""
        h1 = (shape[0], 50, (shape[2] - 4) // 2 + 1, (shape[3] - 4) // 2 + 1)
        return tuple(self.b.asarray(rng.random(s) >= self.dropout, dtype=self.dtype) for s in (shape, h1))

    def _drop(self, x, mask):
        return self.b.op("dropout").forward(x, mask, p=self.dropout)

    def loss(self, x, masks, q=None):
        """Terms of the loss on the batch ``x``; accumulates every parameter gradient.

        ``q=None`` (pretraining): reconstruction only; else plus the clustering
        cross-entropy of the noisy prediction against the targets ``q`` (N, K).
        """
        xs, ones = 2 * x - 1, self.b.xp.ones((), dtype=self.dtype)
        c1, c2, c3 = self.clean
        h1c = c1.forward(xs)
        h2c = c2.forward(h1c)
        x0, _ = self._drop(xs, masks[0])
        h1n, ctx1 = self._drop(self.enc1.forward(x0), masks[1])
        zn = self.enc3.forward(self.enc2.forward(h1n))
        r2 = self.dec3.forward(zn)
        r1 = self.dec2.forward(r2)
        xr = self.dec1.forward(r1)
        w = self.hidden_weight
        terms, grads = {}, {}
        for name, (pred, target), weight in (("rec_x", (xr, xs), 1.0), ("rec_h1", (r1, h1c), w),
                                             ("rec_h2", (r2, h2c), w)):
            val, ctx = self.b.op("mse").forward(pred, target)
            gp, gt = self.b.op("mse").backward(ones * weight, ctx)
            terms[name], grads[name] = weight * float(val), (gp, gt)
        g_z = self.dec3.backward(self.dec2.backward(self.dec1.backward(grads["rec_x"][0]) + grads["rec_h1"][0])
                                 + grads["rec_h2"][0])
        if q is not None:
            logits = self.head.forward(zn)
            val, ctx = self.b.op("soft_cross_entropy").forward(logits, q)
            terms["cluster"] = float(val)
            g_z = g_z + self.head.backward(self.b.op("soft_cross_entropy").backward(ones, ctx)[0])
        g_h1n = self.enc2.backward(self.enc3.backward(g_z))
        self.enc1.backward(self.b.op("dropout").backward(g_h1n, ctx1)[0], input_grad=False)
        c1.backward(c2.backward(grads["rec_h2"][1]) + grads["rec_h1"][1], input_grad=False)
        terms["loss"] = sum(terms.values())
        return terms


class DEPICT(AutoencoderMixin, DeepClusterer):
    """DEPICT (Ghasedi Dizaji et al., ICCV 2017); see the module docstring."""

    _state_attrs = ("target_",)
    _min_size = 4  # the k4 s2 valid convolution

    def __init__(self, n_clusters=10, *, backend="cpu", random_state=None, verbose=0,
                 target="paper", dropout=0.1, hidden_weight=0.1, pretrain_epochs=50, epochs=50,
                 batch_size=100, lr=1e-4, tol=0.001):
        self.n_clusters = n_clusters
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.target = target
        self.dropout = dropout
        self.hidden_weight = hidden_weight
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.tol = tol

    def _check_params(self):
        if self.target not in _TARGETS:
            raise ValueError(f"target must be one of {', '.join(_TARGETS)}, got {self.target!r}")
        if not (isinstance(self.dropout, (int, float, np.floating)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        hw = self.hidden_weight
        if not (isinstance(hw, (int, float, np.floating)) and np.isfinite(hw) and hw >= 0):
            raise ValueError(f"hidden_weight must be a finite number >= 0, got {hw!r}")

    def _build(self, image_shape):
        self.net_ = DEPICTNet(image_shape, self.n_clusters, dropout=self.dropout,
                              hidden_weight=self.hidden_weight, backend=self.backend,
                              dtype=self._dtype, rng=self._rng)
        return self.net_.modules

    def _phases(self):
        return [("pretrain", self.pretrain_epochs), ("cluster", self.epochs)]

    def _make_optimizers(self, phase):
        from nbclust.optim import Adam

        names = list(self.modules_) if phase == "cluster" else [n for n in self.modules_ if n != "head"]
        return {"adam": Adam([p for n in names for p in self.modules_[n].parameters()], lr=self.lr)}

    def _logits(self, Z) -> np.ndarray:
        b = self._backend
        head = self.net_.head
        return Z @ b.to_numpy(head.weight.data).T.astype(np.float64) + b.to_numpy(head.bias.data)

    def _predictions(self, X) -> np.ndarray:
        """Clean-path P (N, K) in float64."""
        logits = self._logits(self._embed_all(X))
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def _set_centres(self, theta):
        self.cluster_centers_ = np.array(theta, dtype=np.float64)

    def _start_phase(self, phase, X):
        if phase != "cluster":
            return
        km = self._kmeans(self._embed_all(X))
        c = km.cluster_centers_
        self.net_.head.weight.data[...] = self._backend.asarray(c, dtype=self._dtype)
        self.net_.head.bias.data[...] = self._backend.asarray(-0.5 * (c**2).sum(1), dtype=self._dtype)
        self._set_centres(km.cluster_centers_)
        self.target_ = np.eye(self.n_clusters)[km.labels_]  # Algorithm 1 line 1: Q from k-means

    def _batch_step(self, phase, X, idx):
        xb = X[idx]
        masks = self.net_.draw_masks(xb.shape, self._rng)
        q = None if phase == "pretrain" else self._backend.asarray(self.target_[idx], dtype=self._dtype)
        return self.net_.loss(xb, masks, q)

    def _end_epoch(self, phase, X):
        if phase != "cluster":
            return {}
        self._set_centres(self._backend.to_numpy(self.net_.head.weight.data))
        old = self.target_.argmax(axis=1)
        self.target_ = depict_target(self._predictions(X), self.target)
        changed = float(np.mean(self.target_.argmax(axis=1) != old))
        self.converged_ = changed < self.tol
        return {"changed": changed}

    def _embed(self, xb):
        return self.net_.embed(xb)

    def _decode(self, z):
        """The mirrored decoder's tanh output mapped back from [-1, 1] to [0, 1]."""
        net = self.net_
        return (net.dec1(net.dec2(net.dec3(z))) + 1) / 2

    def _assign(self, Z):
        return np.argmax(self._logits(Z), axis=1).astype(np.int64)
