"""DCAE: deep convolutional auto-encoder with embedded clustering (Alqahtani et al., seeds 000/001).

No pretraining.  Initial centres ("initialized randomly"): the embeddings, by the initial
network, of K distinct samples drawn from the estimator's Generator.  Then each epoch t
(seed 000, section 2.2):

1. with the centres c^{t-1} fixed, SGD on E = E1 + E2 over mini-batches of 100:
   E1 = -(1/N) sum_n sum_p [x log x^ + (1 - x) log(1 - x^)]   (eq 3, summed over pixels p)
   E2 = lambda/(2N) sum_n ||h_n - c*_n||^2,  c*_n the centre nearest to h_n   (eq 4)
2. assign every sample to its nearest centre c^{t-1} (eq 6), and move each centre to the
   mean of the new embeddings h^t(x_n) of the samples it held (eq 7).

Which samples eq 7 averages (``center_update``).  Seed 000: "the cluster center is updated
using the sample assignment computed in the previous epoch", c_m^t = sum_{x_n in c_m^{t-1}}
h^t(x_n) / |c_m^{t-1}|, "where c_m^{t-1} is all samples that belong to the mth cluster at the
previous epoch".  Two readings of the set c_m^{t-1}:

* ``"current"`` (default): the samples eq 6 just gave to centre c_m^{t-1}, the centre of the
  previous epoch.  Eq 6 defines membership against c^{t-1}, so the "assignment computed" with
  the previous epoch's centres is this one, and eq 7 is a Lloyd step on h^t.
* ``"previous"``: the members of cluster m when epoch t-1 ended (assigned against c^{t-2}).
  Then labels_{t+1} = eq 6 (c^t) and c^t = mean of h^t over labels_{t-1}: each partition is
  built from the one two epochs back, never from the one before it, so the odd and the even
  epochs run two separate Lloyd chains whose labels need not correspond.  Measured on
  MNIST-test (ReLU network, 30 epochs): 77% of the assignments change every epoch and ACC
  alternates 0.52 / 0.59 to the end, where ``"current"`` settles (7% changes by epoch 11).
  The assignment of epoch 0 is that of the initial embedding to the initial centres.

A cluster left empty by eq 6 is re-seeded at the embedding of the sample farthest from
its own centre (largest first, one sample per empty cluster), so no mean divides by zero.
Optimiser (seed 001): SGD lr 0.006, momentum 0.9, weight decay 5e-4, batch 100,
lambda 0.2, Xavier init, zero biases; the paper runs 500 epochs.

The decoder outputs logits a and x^ = sigmoid(a): E1 is the op ``bce_with_logits``
(max(a, 0) - a x + log1p(exp(-|a|)), Caffe's SigmoidCrossEntropyLoss, which DCAE's
base network used), times P.  Same value and gradient as ``bce`` of a sigmoid output
while x^ stays inside [1e-7, 1 - 1e-7]; but ``bce`` clamps x^ there and gives a zero
gradient where the clamp is active (|a| > ~16), so a pixel saturated on the wrong side
would never recover, while here it gets d E1 / d a = x^ - x.  ``reconstruct`` applies
the sigmoid, so it still returns images in [0, 1].

Two deviations, both options (``DCAE.PAPER`` holds the paper's reading:
``DCAE(**DCAE.PAPER)``):

* ``activation="relu"`` (default): ReLU hidden layers; the embedding keeps the paper's
  sigmoid and the output is the sigmoid of the logits.  The layers that feed a ReLU start
  with bias 0.1, not 0: with zero biases the decoder's 4-map transposed conv can die in the
  first epoch (all its ReLU outputs 0, a constant reconstruction).  Cause and the options
  rejected: :func:`architectures.dcae`.  The paper's all-sigmoid network (``"sigmoid"``)
  starts with a near-constant embedding (each sigmoid layer shrinks the spread between
  samples by ~4x), and at the paper's step its decoder saturates in the first steps (below):
  on MNIST (60000 images, step 0.006) E1 sat at a constant grey image (304; the mean image
  would score 206) for all of the 9 epochs run (5400 steps) with the embedding's spread
  ~1e-3 and E2 ~1e-7.
  Why the embedding keeps its sigmoid: E2 is not scale-invariant.  A linear embedding (the
  ReLU network before 2026-11-28) lets E1 spread h freely (MNIST-test, lambda = 0: per-
  dimension std 0.1 -> 12 in 6 epochs), E2 grows with the square of that scale, and SGD
  answers by shrinking h: at lambda = 0.2 the std fell to 1e-3 within the first epoch and
  E1 stayed at a constant grey image (306.7).  With h in (0, 1)^d, E2 <= lambda d / 2 = 1 against
  E1 ~ 100-300, and E1 trains as without E2 (230 -> 125 in 12 epochs).
* ``lr_pixels=64`` (default): E1 is summed over the P pixels (eq 3; MatConvNet sums
  the loss over pixels and averages the gradient over the batch), so its gradient and
  hence the SGD step grow with P.  The step is ``lr * lr_pixels / P``: the paper's 0.006
  for 8x8 images, 0.0005 for 28x28 (0.006 there stalls the ReLU network at the mean
  image).  ``None``: ``lr`` as given.

One ambiguity, an option: ``init``.  Seed 001 initialises "using Xavier method [16]" in
MatConvNet.  MatConvNet's "xavier" is U(+-sqrt(3 / (kh kw in))), ``in`` the layer's input
channels, transposed convs included (``"matconvnet"``, default: the paper's toolbox); ref
[16] (Glorot & Bengio) is U(+-sqrt(6 / (fan_in + fan_out))) (``"glorot"``, the default
before 2026-11-28).  Measured with the ReLU network: E1 lower at every epoch with
``"matconvnet"`` (MNIST-test: 224.5 / 123.2 / 103.2 against 230.7 / 129.0 / 106.4 at epochs
1 / 10 / 50), ACC equal within noise (50 epochs: 0.535 against 0.536 through the runner);
digits, 30 epochs, seeds 0-9: mean 0.754 against 0.726, min 0.673 against 0.662.  The all-sigmoid network at step 0.006
stays at the mean image with ``"glorot"`` (E1 306.8 for 12 epochs); with MatConvNet's
bounds it left the mean image at epoch 7 in one draw of the weights (std of the embedding
0.007 -> 0.24, E1 185 by epoch 13, ACC 0.56 at epoch 60) but not in the estimator's draws
at seeds 0-3 (32-40 epochs each), and counting a transposed conv's fan on its output channels (torch's and Caffe's
convention) it stayed there for 10 epochs.

The base network as its own files define it (options, ``network="caffe"``, ``init="caffe"``,
``bias_lr``).  Seed 001 "adopt[s] the base architecture proposed in [14]" (Turchenko & Luczak's
Caffe model; ``train-mnistCAE10sym0202.prototxt`` and ``solver-mnistCAE10sym020203.prototxt``, copy
in GitHub haider8645/master-thesis at 3fce88b).  Those files answer what the paper leaves open: the
code layer ``ip2encode`` is linear, the 4-map 17x17 deconvolution keeps its sigmoid and a 1x1
deconvolution merges the maps into the logits (``network="caffe"``, :func:`architectures.dcae`);
Caffe's fillers (``init="caffe"``, :func:`architectures.caffe_fillers`); biases at 3 times the step
(``blobs_lr: 3``: ``bias_lr=3``); and the solver: step 0.006, weight decay 5e-4, no momentum, the
loss summed over pixels and averaged over the batch (``lr_pixels=784`` at 28x28 with
``momentum=0``).  Caffe's SGD (v = m v - lr (g + wd w), w += v) and MatConvNet's ``cnn_train.m``
(the same, with the gradient divided by the batch size) are torch's rule for a fixed step, so
``optim.SGD`` is both (tested; a torch twin of the base network follows nbclust's to 1e-12 over 30
SGD steps).  Why the paper's momentum 0.9 at 0.006 does not train (measured, the paper's network
on MNIST-test): the summed loss gives the 12x12 transposed conv's bias a gradient of norm 10-350 in
the first steps, so within 5 SGD steps its sigmoid is 0 for 99.8% of the values (mean activation
0.004) and stays there; with no input the last transposed conv outputs its bias, the spatially
constant grey image of E1 = 306.7 (p = 0.13, the mean pixel; the mean image itself would score
205.7).  With the base network's solver (no momentum) nothing saturates at the start and E1 falls
(265 -> 139 in 30 epochs at lambda = 0); at momentum 0.9 the same network saturates its 17x17
layer instead and sits at 308.  Defaults stay the ReLU network above: at equal epochs its E1 is
lower (103 against 148 at epoch 50).

Measured results (digits, ReLU and sigmoid networks; the base network on MNIST): ``docs/results.md``.
"""

from __future__ import annotations

import numpy as np

from nbclust.engine import optim
from nbclust.engine.optable import OPS
from nbclust.methods import architectures
from nbclust.methods.base import AutoencoderMixin, DeepClusterer
from nbclust.methods.clustering import nearest, update_centers
from nbclust.methods.params import COMMON_PARAMS, Attr, Param, Params
from nbclust.methods.phases import Phase, Step

DCAE_PARAMS = COMMON_PARAMS + Params(
    Param("epochs", int, 50, "training epochs", ge=0, paper=500, schedule=True),
    Param("batch_size", int, 100, "mini-batch size", ge=1),
    Param("lr", float, 0.006, "SGD step size for 8x8 images (seed 001), scaled by lr_pixels / P", gt=0),
    Param("momentum", float, 0.9, "SGD momentum (seed 001)", ge=0, lt=1),
    Param("weight_decay", float, 5e-4, "SGD weight decay (seed 001)", ge=0),
    Param("lam", float, 0.2, "weight lambda of the k-means loss E2 (eq 4)", ge=0),
    Param("embedding_dim", int, 10, "size of the embedding h", ge=1),
    Param("activation", str, "relu", "hidden activations (the embedding is a sigmoid either way)",
          choices=("relu", "sigmoid"), paper="sigmoid"),
    Param("network", str, "paper", "the paper's network (sigmoid embedding, b x b transposed conv to the image) or "
          "its base network's Caffe files (linear code layer, 4-map b x b transposed conv, 1x1 merge)",
          choices=("paper", "caffe")),
    Param("init", str, "matconvnet", "weights: MatConvNet's xavier, U(+-sqrt(3 / (kh kw in))) (the paper's "
          "toolbox), Glorot-uniform (its ref [16]) or the base network's Caffe fillers (xavier on fan_in, "
          "sparse N(0, 1) dense layers)", choices=("matconvnet", "glorot", "caffe")),
    Param("bias_lr", float, 1.0, "step multiplier of the biases (the base network's Caffe files: blobs_lr 3)", gt=0),
    Param("center_update", str, "current", "eq 7 averages the new embeddings over the clusters eq 6 just "
          "found against the previous centres (a Lloyd step) or over those of the previous epoch",
          choices=("current", "previous")),
    Param("lr_pixels", int, 64, "the SGD step is lr * lr_pixels / P (P values per image); None: lr",
          ge=1, none=True, paper=None),
)


class RandomCentres(Step):
    """Initial centres: the embeddings of K distinct samples by the initial network."""

    name = "init"

    def run(self, est, X):
        pick = est._rng.choice(X.shape[0], est.n_clusters, replace=False)
        est.cluster_centers_ = est._embed_all(X[np.sort(pick)])
        est.assign_ = est._assign(est._embed_all(X))  # the epoch-0 assignment eq 7 first averages over


class EmbeddedKMeans(Phase):
    """Each epoch: SGD on E1 + E2 with the centres fixed (step 1), then eqs 6-7 (step 2)."""

    name = "cluster"
    epochs = "epochs"

    def optimizers(self, est):
        named = est.modules_["encoder"].named_parameters() + est.modules_["decoder"].named_parameters()
        weights = [p for n, p in named if not n.endswith("bias")]
        biases = [p for n, p in named if n.endswith("bias")]
        sgd = dict(momentum=est.momentum, weight_decay=est.weight_decay)  # MatConvNet's and Caffe's rule too
        return {"sgd": optim.SGD(weights, est.step_size(), **sgd),
                "sgd_bias": optim.SGD(biases, est.step_size() * est.bias_lr, **sgd)}

    def step(self, est, X, idx):
        enc, dec, b = est.modules_["encoder"], est.modules_["decoder"], est._backend
        x = X[b.asarray(idx)]
        h = enc(x)
        logits = dec(h)  # x^ = sigmoid(logits), fused into the loss
        n_pixels = int(np.prod(x.shape[1:]))
        e1, e1_ctx = OPS.bce_with_logits(b, logits, x)  # eq 3 (mean), times pixels: sum over p
        c = b.asarray(est.cluster_centers_, est._dtype)
        c_star = nearest(h, c)  # c*_n (eq 6 with c^{t-1})
        e2, e2_ctx = OPS.kmeans_compactness(b, h, c, c_star, lam=est.lam)  # eq 4
        g_h = e2_ctx.backward()[0] + dec.backward(e1_ctx.backward()[0] * n_pixels)
        enc.backward(g_h, input_grad=False)
        e1, e2 = float(e1), float(e2)
        return {"E1": e1 * n_pixels, "E2": e2, "loss": e1 * n_pixels + e2}

    def end_epoch(self, est, X):
        H = est._embed_all(X)
        labels = est._assign(H)  # eq 6, with c^{t-1}
        members = est.assign_ if est.center_update == "previous" else labels
        est.cluster_centers_ = update_centers(H, members, est.cluster_centers_)  # eq 7
        changed = float(np.mean(labels != est.assign_))
        est.assign_ = labels
        return {"changed": changed}


class DCAE(AutoencoderMixin, DeepClusterer):
    """Deep convolutional auto-encoder with embedded k-means clustering (eqs 3-7).

    Architecture and its size rule: :func:`nbclust.methods.architectures.dcae`.
    """

    hyperparameters = DCAE_PARAMS
    attributes = (
        Attr("assign_", "ndarray of shape (N,)", "assignments of the last epoch (eq 6); eq 7 of the next "
             "epoch averages over them", state="array"),
    )
    phases = (RandomCentres(), EmbeddedKMeans())
    _min_size = 6

    def _build(self, image_shape):
        enc, dec = architectures.dcae(image_shape, self.embedding_dim, network=self.network,
                                      activation=self.activation, init=self.init, backend=self._backend.name,
                                      dtype=self._dtype, rng=self._seed())
        return {"encoder": enc, "decoder": dec}

    def step_size(self) -> float:
        """The SGD step: ``lr``, times ``lr_pixels / P`` (P = values per image) unless ``lr_pixels`` is None."""
        if self.lr_pixels is None:
            return float(self.lr)
        return float(self.lr) * self.lr_pixels / int(np.prod(self.image_shape_))

    def _embed(self, xb):
        return self.modules_["encoder"](xb)

    def _decode(self, z):
        """x^ = sigmoid(decoder logits), in [0, 1]."""
        y, _ = OPS.sigmoid(self._backend, self.modules_["decoder"](z))
        return y
