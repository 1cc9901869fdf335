"""DCAE: deep convolutional auto-encoder with embedded clustering (Alqahtani et al., seeds 000/001).

One phase, no pretraining.  Each epoch t (seed 000, section 2.2):

1. with the centres c^{t-1} fixed, SGD on E = E1 + E2 over mini-batches of 100:
   E1 = -(1/N) sum_n sum_p [x log x^ + (1 - x) log(1 - x^)]   (eq 3, summed over pixels p)
   E2 = lambda/(2N) sum_n ||h_n - c*_n||^2,  c*_n the centre nearest to h_n   (eq 4)
2. assign every sample to its nearest centre (eq 6) and move each centre to the
   mean of its samples (eq 7).

Initial centres ("initialized randomly"): the embeddings, by the initial network, of
K distinct samples drawn from the estimator's Generator.  A cluster left empty by
eq 6 is re-seeded at the embedding of the sample farthest from its own centre
(largest first, one sample per empty cluster), so no mean divides by zero.
Optimiser (seed 001): SGD lr 0.006, momentum 0.9, weight decay 5e-4, batch 100,
lambda 0.2, Xavier init, zero biases; the paper runs 500 epochs.

The decoder outputs logits a and x^ = sigmoid(a): E1 is the op ``bce_with_logits``
(max(a, 0) - a x + log1p(exp(-|a|)), Caffe's SigmoidCrossEntropyLoss, which DCAE's
base network used), times P.  Same value and gradient as ``bce`` of a sigmoid output
while x^ stays inside [1e-7, 1 - 1e-7]; but ``bce`` clamps x^ there and gives a zero
gradient where the clamp is active (|a| > ~16), so a pixel saturated on the wrong side
would never recover, while here it gets d E1 / d a = x^ - x.  ``reconstruct`` applies
the sigmoid, so it still returns images in [0, 1].

Two deviations, both options (``PAPER`` holds the paper's reading:
``DCAE(**DCAE.PAPER)``):

* ``activation="relu"`` (default): ReLU hidden layers and a linear embedding, sigmoid
  output; the layers that feed a ReLU start with bias 0.1, not 0: with zero biases the
  decoder's 4-map transposed conv can die in the first epoch (all its ReLU outputs 0, a
  constant reconstruction, ACC ~0.3-0.4: digits seeds 0 and 6 of 0-19; bias 0.01 as well,
  at seeds 5 and 6).  Cause, measurements and the options rejected (MatConvNet's Xavier,
  a smaller step, the base network's 1x1 output layer): :func:`architectures.dcae`.
  The paper's all-sigmoid network (``"sigmoid"``) starts with a near-constant
  embedding (each sigmoid layer shrinks the spread between samples), so SGD first fits
  the mean image and the embedding stays collapsed (spread ~1e-3, E2 ~1e-7) for the
  ~1000 steps of a practical run: digits ACC 0.48 after 50 epochs, below raw k-means.
* ``lr_pixels=64`` (default): E1 is summed over the P pixels (eq 3; MatConvNet sums
  the loss over pixels and averages the gradient over the batch), so its gradient and
  hence the SGD step grow with P.  The step is ``lr * lr_pixels / P``: the paper's 0.006
  for 8x8 images, 0.0005 for 28x28 (0.006 there kills the ReLU network: it stalls at the
  mean image).  ``None``: ``lr`` as given.

Default ``epochs=50`` (digits, seeds 0-4: ACC 0.72-0.84, mean 0.78; ~3 s a fit on 2 idle cores).
"""

from __future__ import annotations

import numpy as np

from nbclust import optim
from nbclust.methods import architectures
from nbclust.methods.base import AutoencoderMixin, DeepClusterer


class DCAE(AutoencoderMixin, DeepClusterer):
    """Deep convolutional auto-encoder with embedded k-means clustering (eqs 3-7).

    Architecture and its size rule: :func:`nbclust.methods.architectures.dcae`.
    """

    PAPER = {"activation": "sigmoid", "lr_pixels": None, "epochs": 500}

    _min_size = 6

    def __init__(self, n_clusters=10, *, backend="cpu", random_state=None, verbose=0, epochs=50,
                 batch_size=100, lr=0.006, momentum=0.9, weight_decay=5e-4, lam=0.2, embedding_dim=10,
                 activation="relu", lr_pixels=64):
        self.n_clusters = n_clusters
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lam = lam
        self.embedding_dim = embedding_dim
        self.activation = activation
        self.lr_pixels = lr_pixels

    def _check_params(self):
        if self.activation not in ("sigmoid", "relu"):
            raise ValueError(f"activation must be 'sigmoid' or 'relu', got {self.activation!r}")
        lp = self.lr_pixels
        if lp is not None and not (isinstance(lp, (int, np.integer)) and lp >= 1):
            raise ValueError(f"lr_pixels must be None or an integer >= 1, got {self.lr_pixels!r}")
        if not (isinstance(self.lam, (int, float)) and self.lam >= 0):
            raise ValueError(f"lam must be a number >= 0, got {self.lam!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.embedding_dim, (int, np.integer)) and self.embedding_dim >= 1):
            raise ValueError(f"embedding_dim must be an integer >= 1, got {self.embedding_dim!r}")

    def _build(self, image_shape):
        enc, dec = architectures.dcae(image_shape, self.embedding_dim, activation=self.activation,
                                      backend=self._backend.name, dtype=self._dtype, rng=self._seed())
        return {"encoder": enc, "decoder": dec}

    def _phases(self):
        return [("cluster", self.epochs)]

    def _make_optimizers(self, phase):
        params = self.modules_["encoder"].parameters() + self.modules_["decoder"].parameters()
        return {"sgd": optim.SGD(params, self.step_size(), momentum=self.momentum, weight_decay=self.weight_decay)}

    def step_size(self) -> float:
        """The SGD step: ``lr``, times ``lr_pixels / P`` (P = values per image) unless ``lr_pixels`` is None."""
        if self.lr_pixels is None:
            return float(self.lr)
        return float(self.lr) * self.lr_pixels / int(np.prod(self.image_shape_))

    def _start_phase(self, phase, X):
        pick = self._rng.choice(X.shape[0], self.n_clusters, replace=False)
        self.cluster_centers_ = self._embed_all(X[np.sort(pick)])

    def _embed(self, xb):
        return self.modules_["encoder"](xb)

    def _decode(self, z):
        """x^ = sigmoid(decoder logits), in [0, 1]."""
        y, _ = self._backend.op("sigmoid").forward(self.modules_["decoder"](z))
        return y

    def _batch_step(self, phase, X, idx):
        enc, dec, b = self.modules_["encoder"], self.modules_["decoder"], self._backend
        x = X[b.asarray(idx)]
        h = enc(x)
        logits = dec(h)  # x^ = sigmoid(logits), fused into the loss
        n_pixels = int(np.prod(x.shape[1:]))
        e1, (g_logits, _) = self._loss("bce_with_logits", logits, x)  # eq 3 (mean), times pixels: sum over p
        c = b.asarray(self.cluster_centers_, self._dtype)
        d = (h * h).sum(1)[:, None] - 2 * h @ c.T + (c * c).sum(1)[None, :]
        nearest = b.xp.argmin(d, axis=1).astype(np.int64)  # c*_n (eq 6 with c^{t-1})
        e2, (g_h, _, _) = self._loss("kmeans_compactness", h, c, nearest, lam=self.lam)  # eq 4
        g_h = g_h + dec.backward(g_logits * n_pixels)
        enc.backward(g_h, input_grad=False)
        return {"E1": e1 * n_pixels, "E2": e2, "loss": e1 * n_pixels + e2}

    def _end_epoch(self, phase, X):
        H = self._embed_all(X)
        labels = self._assign(H)  # eq 6
        self.cluster_centers_ = update_centers(H, labels, self.cluster_centers_)  # eq 7
        return {}


def update_centers(H: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Means of the assigned samples (eq 7); empty clusters re-seeded at the farthest samples."""
    K = centers.shape[0]
    counts = np.bincount(labels, minlength=K)
    sums = np.zeros_like(centers)
    np.add.at(sums, labels, H)
    new = sums / np.maximum(counts, 1)[:, None]
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        far = np.argsort(-((H - centers[labels]) ** 2).sum(1), kind="stable")
        new[empty] = H[far[: empty.size]]
    return new
