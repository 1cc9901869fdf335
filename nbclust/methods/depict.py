"""DEPICT: deep embedded regularized clustering (Ghasedi Dizaji et al., ICCV 2017; seed 004).

The defaults run the authors' released Theano/Lasagne code (GitHub herandy/DEPICT,
``DEPICT.py`` and ``functions.py``) except for the stopping rule of step 4 and the epoch caps
("Bounded defaults" below); where the poster reads otherwise, its reading is an option.
Network (``build_depict``):

- Noisy encoder: dropout 0.1 on the input -> conv 50 k4 s2 -> LeakyReLU 0.01
  -> dropout 0.1 -> conv 50 k5 s2 pad 2 -> LeakyReLU -> dense ``K`` + tanh
  (the embedding z, d = K = ``n_clusters``).  The clean encoder is the same
  layers (shared weights) without dropout.  Inputs are mapped to [-1, 1]
  (x / 127.5 - 1, i.e. 2x - 1 for X in [0, 1]).
- Decoder, mirrored, on the noisy z: dense + LeakyReLU -> reshape ->
  transposed conv 50 k5 s2 pad 2 + LeakyReLU (h^1) -> transposed conv ``C`` k4
  s2 + tanh (x^).
- Softmax head p_ik proportional to exp(theta_k^T z_i + b_k) (``build_eml``).
- Reconstruction loss (``loss_recons``): mse(x^, x) + ``hidden_weight`` (0.1) x
  [mse(h^1, h_1) + mse(h^2, h_2)], each a mean; the hidden targets are the clean
  path's activations and the gradient flows through both sides (Theano does not
  stop it).  Clustering loss: -(1/N) sum q_ik log p~_ik on the noisy prediction.

Training, the released protocol (the step numbers of ``functions.py``):

1. ``pretrain`` (``train_depict_ae``): Adam 1e-4, batch 100, reconstruction only, on
   a 90% split; after every epoch the clean reconstruction loss of the held-out
   10% is measured, the best weights kept, and training stops after
   ``pretrain_patience`` (100) epochs without improvement (cap ``pretrain_epochs``,
   100; released 4000); the best weights are restored.  The released split is stratified by the
   true labels; nbclust never sees labels, so its split is a random one.
2. Initial clustering (``clustering``) of the clean embedding: ``init="acpic"``
   (:class:`nbclust.ACPIC`, K = 20 (N - 1 on fewer images), a = 1, z = 0.01; the
   released choice for MNIST-test and USPS), ``"kmeans"`` (n_init 40; the released choice for
   MNIST-full, FRGC, YTF, CMU-PIE) or given labels (an array of N ints).
   Head: ``head_init="unit"`` sets theta_k = c_k / ||c_k||, b = 0 (c_k the
   cluster means of z; the k-means branch of the released code; its AC-PIC branch
   divides the transposed centre matrix column-wise, which equals this only for
   a symmetric centre matrix, a slip we do not copy: the warm-up retrains the head
   either way).  ``"distance"`` sets theta_k = c_k, b_k = -||c_k||^2 / 2, so
   that argmax_k is the nearest centre at the start.
3. ``warmup`` (``train_depict``, init): reconstruction + cross-entropy against the
   hard initial labels, a fresh Adam 1e-4, on the 90% split; after every epoch
   the NMI between the clean argmax and the initial labels on the held-out 10%;
   stop after more than ``warmup_patience`` (5) epochs without improvement (cap
   ``warmup_epochs``, 50; released 1000) and restore the best weights.
4. ``cluster`` (Algorithm 1): targets from the clean predictions P,
   ``target="code"``: q_ik proportional to p_ik^2 / f_k, f_k = sum_i p_ik (the released
   ``pred_normalizition_flag``); ``target="paper"``: p_ik / f_k^(1/2) (Algorithm 1
   line 5; on a near-uniform P it gives Q close to P and almost no gradient);
   rows normalised.  Each batch takes a step on reconstruction + cross-entropy
   with the current targets (a fresh Adam 1e-4), then its clean predictions are
   recorded with the updated weights; at the end of the epoch the recorded P
   gives the next targets.  Training stops (``stop``, never after the first epoch,
   which the released code compares with zeros) when fewer than ``tol`` (0.005) of
   the hard assignments argmax_k P changed since the last epoch (``"labels"``, the
   default), or, as released, when the mean squared change of the targets falls
   below ``tol`` (``"targets"``, with ``tol=1e-7``); cap ``epochs`` (100; released 4000).
- Dropout noise: ``noise="per-term"`` draws a separate corruption for each of the
  four loss terms (x, h^1, h^2 reconstruction and the prediction), as the released
  code does (each ``get_output`` call builds its own dropout masks), at the cost of
  four noisy passes; ``"shared"`` uses one noisy pass for every term.
- Every random number (splits, masks, batches, k-means seeds) comes from the
  estimator's Generator.

``weights``: start from pretrained weights and skip step 1: a path to an ``.npz``
(or a mapping) with the authors' Lasagne arrays (``conv1_W`` ... ``deconv1_b``, see
:func:`lasagne_state`).  The released ``results/DEPICT/params`` checkpoint of
MNIST-test is such a file.

Bounded defaults.  The released rule of step 4 cannot fire under the per-term dropout
noise: the recorded P of every epoch carries the noise of that epoch's steps, so the targets'
mean squared change settles at a floor (2e-5 on MNIST-test, 1-3e-5 on another 10000-image
digit set, 1-3e-5 on sklearn's digits) far above 1e-7 and training runs to the cap.  The rule on
the hard assignments (DEC's and DCEC's) asks instead that the partition stop moving; noise that
moves the probabilities without moving an argmax does not hold it up, but the noise also flips a
few images near a boundary every epoch.  Measured on sklearn's digits (defaults, seed 0, one
thread, clustering run to 100 epochs with ``tol=0``): the fraction changed falls from 3.6% in the
first epoch to 0.5% by epoch 20 and then stays at 0.1-0.8% (2-15 of 1797 images an epoch) for
the remaining 80, so DEC's 0.1% lies at the floor and never fired there; ``tol`` = 0.5%, just
above the floor, fires where the trend ends (epoch 24 of that run).  Likewise the held-out
reconstruction of step 1 keeps improving slowly for hundreds of epochs (MNIST-test: 0.069 at
epoch 90, still falling; the authors' checkpoint sits at 0.040), so the released patience does not
fire on a CPU budget.  The caps (100 + 50 + 100 epochs instead of 4000 + 1000 + 4000) bound a
default fit to 250 epochs: measured times in the README (about 20 s an epoch on MNIST-test on one
core).  ``DEPICT(pretrain_epochs=4000, warmup_epochs=1000, epochs=4000, stop="targets",
tol=1e-7)`` is the released protocol (results: ``docs/results.md``); every one of these may also
change when a fit resumes.

Other image sizes: the layers stay the same; each transposed convolution gets
the ``output_padding`` (0 or 1) that restores its encoder input size
exactly: h1 = (H - 4) // 2 + 1, h2 = (h1 - 1) // 2 + 1, so 28 -> 13 -> 7,
8 -> 3 -> 2, 16 -> 7 -> 4, 32 -> 15 -> 8, 64 -> 31 -> 16 (any side >= 4).

``cluster_centers_`` are the softmax head weights theta (K, d); the label of
an image is argmax_k theta_k^T z + b_k (z the clean embedding), also for ``labels_``.
"""


from __future__ import annotations

import numpy as np

from nbclust.engine.optable import OPS
from nbclust.methods.base import AutoencoderMixin, DeepClusterer
from nbclust.methods.clustering import depict_target
from nbclust.methods.params import ARRAY, COMMON_PARAMS, PATH, Attr, Param, Params
from nbclust.methods.phases import Phase, Step

DEPICT_PARAMS = COMMON_PARAMS + Params(
    Param("target", str, "code", "target distribution: p^2 / f (code, the released code) or p / f^(1/2) "
          "(paper, Algorithm 1 line 5)", choices=("code", "paper"), paper="paper"),
    Param("init", (str, ARRAY), "acpic", "initial clustering of the pretrained clean embedding (step 2), or "
          "given labels (an array of N ints)", choices=("acpic", "kmeans")),
    Param("head_init", str, "unit", "softmax head from the initial centres c_k: theta_k = c_k / ||c_k||, b = 0 "
          "(unit, the released code) or theta_k = c_k, b_k = -||c_k||^2 / 2 (distance)",
          choices=("unit", "distance")),
    Param("noise", str, "per-term", "dropout corruption: one per loss term (per-term, the released code) or "
          "one noisy pass for all terms (shared)", choices=("per-term", "shared")),
    Param("weights", (PATH, dict), None, "pretrained autoencoder in the authors' Lasagne layout (.npz or "
          "mapping of arrays); skips pretraining", none=True),
    Param("dropout", float, 0.1, "dropout rate of the input and the first hidden layer", ge=0, lt=1),
    Param("hidden_weight", float, 0.1, "weight of the hidden layers' reconstruction terms", ge=0),
    Param("pretrain_epochs", int, 100, "cap of the pretraining epochs (step 1; released: 4000)", ge=0,
          schedule=True),
    Param("pretrain_patience", int, 100, "stop pretraining after this many epochs without a better held-out "
          "reconstruction", ge=0, schedule=True),
    Param("warmup_epochs", int, 50, "cap of the warm-up epochs on the hard initial labels (step 3; released: "
          "1000)", ge=0, schedule=True),
    Param("warmup_patience", int, 5, "stop the warm-up after more than this many epochs without a better "
          "held-out NMI", ge=0, schedule=True),
    Param("epochs", int, 100, "cap of the clustering epochs (step 4; released: 4000)", ge=0, schedule=True),
    Param("batch_size", int, 100, "mini-batch size", ge=1),
    Param("lr", float, 1e-4, "Adam step size of every stage", gt=0),
    Param("stop", str, "labels", "stopping rule of step 4: fewer than tol of the hard assignments change between "
          "epochs (labels, DEC's rule) or the targets' mean squared change is below tol (targets, the released "
          "code, with tol=1e-7)", choices=("labels", "targets"), schedule=True),
    Param("tol", float, 5e-3, "threshold of the stopping rule of step 4 (stop)", ge=0, lt=1, schedule=True),
    Param("validation_fraction", float, 0.1, "held-out share of the images for the stopping rules of steps 1 "
          "and 3", gt=0, lt=1),
)

_TERMS = ("rec_x", "rec_h1", "rec_h2", "cluster")


def lasagne_state(arrays) -> dict:
    """The authors' Lasagne arrays as nbclust state dicts ``{module: {key: array}}``.

    Lasagne's Conv2DLayer and Deconv2DLayer convolve (``flip_filters=True``), so
    every kernel is flipped for nbclust's cross-correlation; dense weights are
    (in, out) there and (out, in) here.  Deconv weights are (in, out, kh, kw) in both.
    """
    flip = lambda w: np.ascontiguousarray(np.asarray(w)[..., ::-1, ::-1])  # noqa: E731
    try:
        return {
            "enc1": {"0.weight": flip(arrays["conv1_W"]), "0.bias": arrays["conv1_b"]},
            "enc2": {"0.weight": flip(arrays["conv2_W"]), "0.bias": arrays["conv2_b"]},
            "enc3": {"1.weight": np.asarray(arrays["enc_dense_W"]).T, "1.bias": arrays["enc_dense_b"]},
            "dec3": {"0.weight": np.asarray(arrays["dec_dense_W"]).T, "0.bias": arrays["dec_dense_b"]},
            "dec2": {"0.weight": flip(arrays["deconv2_W"]), "0.bias": arrays["deconv2_b"]},
            "dec1": {"0.weight": flip(arrays["deconv1_W"]), "0.bias": arrays["deconv1_b"]},
        }
    except KeyError as e:
        raise ValueError(f"weights: missing the Lasagne array {e.args[0]!r}") from None


def _out_pad(size_in: int, size_out: int, k: int, s: int, pad: int) -> int:
    """output_padding making a transposed conv map ``size_out`` back to ``size_in``."""
    return size_in - ((size_out - 1) * s - 2 * pad + k)


class DEPICTNet:
    """Encoders (noisy/clean, shared weights), decoder and softmax head; the loss with its gradients."""

    def __init__(self, image_shape, n_clusters, *, dropout=0.1, hidden_weight=0.1, noise="per-term",
                 backend="cpu", dtype=np.float32, rng=None):
        from nbclust.engine import nn

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
        noisy = [self.enc1, self.enc2, self.enc3, self.dec3, self.dec2, self.dec1, self.head]
        # one set of shared-weight copies per noisy pass: each keeps its own forward context
        n_pass = len(_TERMS) if noise == "per-term" else 1
        self.passes = [noisy] + [[m.shared_copy() for m in noisy] for _ in range(n_pass - 1)]
        self.dropout, self.hidden_weight, self.noise = dropout, hidden_weight, noise
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

    def reconstruction_error(self, x) -> float:
        """The clean path's reconstruction loss (the released ``loss_recons_clean``), forward only."""
        xs = 2 * x - 1
        h1 = self.clean[0].forward(xs)
        h2 = self.clean[1].forward(h1)
        r2 = self.dec3.forward(self.clean[2].forward(h2))
        r1 = self.dec2.forward(r2)
        xr = self.dec1.forward(r1)
        w = self.hidden_weight
        e = [float(OPS.mse(self.b, out, target)[0]) for out, target in ((xr, xs), (r1, h1), (r2, h2))]
        return e[0] + w * e[1] + w * e[2]

    def _masks(self, shape, rng: np.random.Generator) -> tuple:
        """Dropout masks (input, first hidden layer) for a batch of image ``shape`` (N, C, H, W)."""
        h1 = (shape[0], 50, (shape[2] - 4) // 2 + 1, (shape[3] - 4) // 2 + 1)
        return tuple(self.b.asarray(rng.random(s) >= self.dropout, dtype=self.dtype) for s in (shape, h1))

    def _drop(self, x, mask):
        return OPS.dropout(self.b, x, mask, p=self.dropout)

    def _noisy_forward(self, mods, xs, masks, terms):
        """One corrupted pass through the copies ``mods``, computing the outputs ``terms`` need."""
        e1, e2, e3, d3, d2, d1, head = mods
        x0, _ = self._drop(xs, masks[0])
        h1, ctx1 = self._drop(e1.forward(x0), masks[1])
        z = e3.forward(e2.forward(h1))
        out = {}
        if {"rec_x", "rec_h1", "rec_h2"} & terms:
            out["rec_h2"] = d3.forward(z)
        if {"rec_x", "rec_h1"} & terms:
            out["rec_h1"] = d2.forward(out["rec_h2"])
        if "rec_x" in terms:
            out["rec_x"] = d1.forward(out["rec_h1"])
        if "cluster" in terms:
            out["cluster"] = head.forward(z)
        return {t: out[t] for t in terms}, ctx1

    def _noisy_backward(self, mods, grads, ctx1):
        """Back through one noisy pass; ``grads`` maps each of its outputs to d loss / d output."""
        e1, e2, e3, d3, d2, d1, head = mods

        def add(a, b):
            return b if a is None else a + b

        g1 = grads.get("rec_h1")
        if "rec_x" in grads:
            g1 = add(g1, d1.backward(grads["rec_x"]))
        g2 = grads.get("rec_h2")
        if g1 is not None:
            g2 = add(g2, d2.backward(g1))
        g_z = None if g2 is None else d3.backward(g2)
        if "cluster" in grads:
            g_z = add(g_z, head.backward(grads["cluster"]))
        g_h1 = e2.backward(e3.backward(g_z))
        e1.backward(ctx1.backward(g_h1)[0], input_grad=False)

    def loss(self, x, rng: np.random.Generator, q=None):
        """Terms of the loss on the batch ``x``; accumulates every parameter gradient.

        ``q=None`` (pretraining): reconstruction only; else plus the clustering
        cross-entropy of the noisy prediction against the targets ``q`` (N, K).
        Masks are drawn from ``rng``: one corruption per term (``per-term``) or one in all.
        """
        xs, ones = 2 * x - 1, self.b.xp.ones((), dtype=self.dtype)
        c1, c2, _ = self.clean
        h1c = c1.forward(xs)
        h2c = c2.forward(h1c)
        terms = [t for t in _TERMS if q is not None or t != "cluster"]
        groups = [[t] for t in terms] if len(self.passes) > 1 else [terms]
        targets = {"rec_x": (xs, 1.0), "rec_h1": (h1c, self.hidden_weight), "rec_h2": (h2c, self.hidden_weight)}
        values, g_h1c, g_h2c = {}, 0, 0
        for mods, group in zip(self.passes, groups):
            out, ctx1 = self._noisy_forward(mods, xs, self._masks(x.shape, rng), set(group))
            grads = {}
            for t in group:
                if t == "cluster":
                    val, ctx = OPS.soft_cross_entropy(self.b, out[t], q)
                    grads[t] = ctx.backward(ones)[0]
                    values[t] = float(val)
                    continue
                target, weight = targets[t]
                val, ctx = OPS.mse(self.b, out[t], target)
                grads[t], g_target = ctx.backward(ones * weight)
                values[t] = weight * float(val)
                if t == "rec_h1":
                    g_h1c = g_h1c + g_target
                elif t == "rec_h2":
                    g_h2c = g_h2c + g_target
            self._noisy_backward(mods, grads, ctx1)
        c1.backward(c2.backward(g_h2c) + g_h1c, input_grad=False)
        values["loss"] = sum(values.values())
        return values



# ------------------------------------------------------------------ the released protocol
class Pretraining(Phase):
    """1. Reconstruction only, on the 90% split; keep the weights of the best held-out
    reconstruction, stop ``pretrain_patience`` epochs after it, restore it."""

    name = "pretrain"
    epochs = "pretrain_epochs"

    def budget(self, est):
        return 0 if est.weights is not None else est.pretrain_epochs

    def begin(self, est, X):  # the held-out 10%
        n = X.shape[0]
        n_val = max(1, int(round(est.validation_fraction * n)))
        est.val_idx_ = np.sort(est._rng.permutation(n)[:n_val])
        est.best_score_, est.since_best_, est.best_params_ = np.inf, 0, None

    def optimizers(self, est):
        return est._adam(head=False)

    def batches(self, est, n):
        return est._train_split_batches(n)

    def step(self, est, X, idx):
        return est.net_.loss(X[idx], est._rng, None)

    def end_epoch(self, est, X):
        v = est.val_idx_
        est._set_mode(False)
        err = sum(est.net_.reconstruction_error(X[v[i : i + 500]]) * len(v[i : i + 500])
                  for i in range(0, len(v), 500)) / len(v)
        est._set_mode(True)
        est._track_best(err, False, est.pretrain_patience)
        return {"val_rec": err}

    def end(self, est, X):
        est._restore_best()


class InitialClustering(Step):
    """2. Cluster the clean embedding (``init``) and set the softmax head from the centres (``head_init``)."""

    name = "init"

    def run(self, est, X):
        Z = est._embed_all(X)
        labels, c = est._initial_labels(Z)
        if est.head_init == "unit":
            theta, bias = c / np.linalg.norm(c, axis=1, keepdims=True).clip(1e-12), np.zeros(len(c))
        else:
            theta, bias = c, -0.5 * (c**2).sum(1)
        est.net_.head.weight.data[...] = est._backend.asarray(theta, dtype=est._dtype)
        est.net_.head.bias.data[...] = est._backend.asarray(bias, dtype=est._dtype)
        est._set_centres(theta)
        est.init_labels_ = labels


class Warmup(Phase):
    """3. Reconstruction + cross-entropy against the hard initial labels, on the 90% split; keep the
    weights of the best held-out NMI with the initial labels, stop after more than
    ``warmup_patience`` epochs without one, restore it."""

    name = "warmup"
    epochs = "warmup_epochs"

    def begin(self, est, X):
        est.target_ = np.eye(est.n_clusters)[est.init_labels_]
        est.best_score_, est.since_best_, est.best_params_ = est._val_nmi(X), 0, est._snapshot()

    def optimizers(self, est):
        return est._adam(head=True)

    def batches(self, est, n):
        return est._train_split_batches(n)

    def step(self, est, X, idx):
        return est.net_.loss(X[idx], est._rng, est._backend.asarray(est.target_[idx], dtype=est._dtype))

    def end_epoch(self, est, X):
        score = est._val_nmi(X)
        est._track_best(score, True, est.warmup_patience)
        est._set_centres(est._backend.to_numpy(est.net_.head.weight.data))
        return {"val_nmi": score}

    def end(self, est, X):
        est._restore_best()


class Clustering(Phase):
    """4. Algorithm 1: targets Q from the clean predictions P (``target``); each batch a step on
    reconstruction + cross-entropy with Q, then its clean predictions with the updated weights;
    the epoch's predictions give the next Q; stop when Q settles (``tol``)."""

    name = "cluster"
    epochs = "epochs"

    def begin(self, est, X):  # epoch 0 targets from the clean predictions
        P = est._predictions(X)
        est.target_, est.assign_ = depict_target(P, est.target), P.argmax(1)
        est.best_params_, est._pending = None, None
        est.p_epoch_ = np.zeros_like(est.target_)

    def optimizers(self, est):
        return est._adam(head=True)

    def step(self, est, X, idx):
        est._record_pending(X)
        est._pending = idx
        return est.net_.loss(X[idx], est._rng, est._backend.asarray(est.target_[idx], dtype=est._dtype))

    def end_epoch(self, est, X):
        est._record_pending(X)
        est._set_centres(est._backend.to_numpy(est.net_.head.weight.data))
        new = depict_target(est.p_epoch_, est.target)
        change = float(np.mean((new - est.target_) ** 2))
        labels = est.p_epoch_.argmax(1)
        changed = float(np.mean(labels != est.assign_))
        est.converged_ = est.phase_epoch_ > 0 and (changed if est.stop == "labels" else change) < est.tol
        est.target_, est.assign_ = new, labels
        return {"target_mse": change, "changed": changed}


class DEPICT(AutoencoderMixin, DeepClusterer):
    """DEPICT (Ghasedi Dizaji et al., ICCV 2017) as its released code runs it; see the module docstring."""

    hyperparameters = DEPICT_PARAMS
    attributes = (
        Attr("net_", "DEPICTNet", "the encoders, decoder and softmax head"),
        Attr("val_idx_", "ndarray", "the held-out images of steps 1 and 3", state="array"),
        Attr("init_labels_", "ndarray of shape (N,)", "the initial clustering (step 2)", state="array"),
        Attr("target_", "ndarray of shape (N, K)", "the current targets Q", state="array"),
        Attr("assign_", "ndarray of shape (N,)", "the hard assignments of the last clustering epoch (argmax of "
             "its recorded P)", state="array"),
        Attr("p_epoch_", "ndarray of shape (N, K)", "the clean predictions recorded during the current epoch",
             state="array"),
        Attr("best_params_", "ndarray or None", "the weights of the best held-out score of the stage",
             state="array"),
        Attr("best_score_", "float", "the best held-out score of the stage", state="meta"),
        Attr("since_best_", "int", "epochs since the best held-out score", state="meta"),
    )
    phases = (Pretraining(), InitialClustering(), Warmup(), Clustering())
    _min_size = 4  # the k4 s2 valid convolution

    def _check_params(self):
        if not isinstance(self.init, str):
            labels = np.asarray(self.init)
            if labels.ndim != 1 or labels.dtype.kind not in "iu":
                raise ValueError(f"init labels must be a 1-D integer array, got shape {labels.shape} of {labels.dtype}")
            if labels.min() < 0 or labels.max() >= self.n_clusters:
                raise ValueError(f"init labels must lie in [0, n_clusters={self.n_clusters})")

    def fit(self, X, y=None, **kwargs):
        n = len(X)
        if not isinstance(self.init, str) and len(self.init) != n:
            raise ValueError(f"init has {len(self.init)} labels for {n} images")
        return super().fit(X, y, **kwargs)

    # --------------------------------------------------------------- network
    def _build(self, image_shape):
        self.net_ = DEPICTNet(image_shape, self.n_clusters, dropout=self.dropout, hidden_weight=self.hidden_weight,
                              noise=self.noise, backend=self.backend, dtype=self._dtype, rng=self._rng)
        if self.weights is not None:
            arrays = self.weights if isinstance(self.weights, dict) else np.load(self.weights)
            for name, state in lasagne_state(arrays).items():
                self.net_.modules[name].load_state_dict(state)
        return self.net_.modules

    def _adam(self, head: bool) -> dict:
        """A fresh Adam (``lr``) on every weight; the head's only once it exists (steps 3-4)."""
        from nbclust.engine.optim import Adam

        names = [n for n in self.modules_ if head or n != "head"]
        return {"adam": Adam([p for n in names for p in self.modules_[n].parameters()], lr=self.lr)}

    def _train_split_batches(self, n):
        """Shuffled batches of the 90% split (steps 1 and 3)."""
        train = np.setdiff1d(np.arange(n), self.val_idx_)
        perm = train[self._rng.permutation(len(train))]
        return [perm[i : i + self.batch_size] for i in range(0, len(perm), self.batch_size)]

    # ------------------------------------------------------------- helpers
    def _params(self):
        return [p for m in self.modules_.values() for p in m.parameters()]

    def _snapshot(self):
        """Every weight, flattened: the best weights of a stage (kept in the training state)."""
        b = self._backend
        return np.concatenate([b.to_numpy(p.data).ravel() for p in self._params()])

    def _restore_best(self):
        if self.best_params_ is None:
            return
        start = 0
        for p in self._params():
            n = int(np.prod(p.shape))
            p.data[...] = self._backend.asarray(self.best_params_[start : start + n].reshape(p.shape), self._dtype)
            start += n

    def _track_best(self, score, higher_is_better, patience):
        """Keep the weights of the best held-out ``score``; converge after ``patience`` epochs without one."""
        better = score > self.best_score_ if higher_is_better else score < self.best_score_
        if better:
            self.best_score_, self.since_best_, self.best_params_ = float(score), 0, self._snapshot()
        else:
            self.since_best_ += 1
        self.converged_ = self.since_best_ > patience

    def _logits(self, Z) -> np.ndarray:
        b = self._backend
        head = self.net_.head
        return Z @ b.to_numpy(head.weight.data).T.astype(np.float64) + b.to_numpy(head.bias.data)

    def _softmax(self, logits) -> np.ndarray:
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def _predictions(self, X) -> np.ndarray:
        """Clean-path P (N, K) in float64."""
        return self._softmax(self._logits(self._embed_all(X)))

    def _set_centres(self, theta):
        self.cluster_centers_ = np.array(theta, dtype=np.float64)

    def _initial_labels(self, Z):
        """Step 2: the initial partition and its centres."""
        if not isinstance(self.init, str):
            labels = np.asarray(self.init, dtype=np.int64)
        elif self.init == "kmeans":
            km = self._kmeans(Z, n_init=40)
            return km.labels_.astype(np.int64), km.cluster_centers_
        else:
            from nbclust.methods.acpic import ACPIC

            labels = ACPIC(self.n_clusters, n_neighbors=min(20, len(Z) - 1)).fit_predict(Z).astype(np.int64)
        centres = np.stack([Z[labels == k].mean(0) if np.any(labels == k) else np.zeros(Z.shape[1])
                            for k in range(self.n_clusters)])
        return labels, centres

    def _val_nmi(self, X) -> float:
        from nbclust.methods.metrics import nmi

        v = self.val_idx_
        return nmi(self.init_labels_[v], np.argmax(self._predictions(X[v]), axis=1))

    def _record_pending(self, X):
        """Clean predictions of the last batch, with the weights its step produced."""
        idx = getattr(self, "_pending", None)
        if idx is not None:
            self.p_epoch_[idx] = self._predictions(X[idx])
            self._pending = None

    def _after_load(self):
        self._pending = None

    def _embed(self, xb):
        return self.net_.embed(xb)

    def _decode(self, z):
        """The mirrored decoder's tanh output mapped back from [-1, 1] to [0, 1]."""
        net = self.net_
        return (net.dec1(net.dec2(net.dec3(z))) + 1) / 2

    def _assign(self, Z):
        return np.argmax(self._logits(Z), axis=1).astype(np.int64)
