"""FCAE-KMS and DBC: discriminatively boosted clustering (Li, Qiao, Zhang, Xi; seed 002).

Stage I (Algorithm 1, both estimators): train the fully convolutional auto-encoder
(Table 2; :func:`nbclust.methods.architectures.fcae`) with the Euclidean loss, then k-means
(sklearn, n_init=20, seeded from the estimator's Generator) on the 1x1 features z = f(x).
``FCAEKMeans`` stops here (the paper's FCAE-KMS baseline).

Stage II (Algorithm 2, ``DBC``): drop the decoder; every epoch
  s_ij = (1 + ||z_i - mu_j||^2)^-1 / sum_j' (...)             (eq 1, line 7, v = 1)
  r_ij = (s_ij^alpha / n_j) / sum_j' (s_ij'^alpha / n_j')       (eq 2, line 8)
  n_j  = sum_i s_ij^alpha ("boosted", the paper's), sum_i s_ij ("soft", DEC's) or 1 ("none")
then one pass of mini-batches minimising L = sum_i sum_j r_ij log(r_ij / s_ij)
(eq 3) w.r.t. the encoder and mu with the exact gradients of eqs (4)-(5) (op ``dbc_kl``);
stop when the fraction of changed hard assignments is below ``tol`` (line 14).

How it is trained.  The paper names no optimiser, step, batch size, initialisation or batch-norm
mode, and no DBC code was released; the first author's own Caffe fork is public (GitHub
fengfu-chris/caffe-twns, ``examples/mnist/lenet_tn.prototxt`` and ``lenet_tn_solver.prototxt``), and
its conventions decide (the released code of the authors, as for the other methods):

* ``solver="caffe"`` (default; :func:`caffe_sgd`): SGD, momentum 0.9, weight decay 1e-4, conv
  biases at twice the step, for both stages.  Stage I minimises Caffe's EuclideanLoss
  1/(2N) sum_n ||x_n - x^_n||^2 (summed over pixels, averaged over the batch), stage II eq 3 averaged
  over the batch, as Caffe's losses are.  The file's step 0.01 makes stage I diverge on this loss
  in its first epoch (MNIST-test), so ``lr`` = ``cluster_lr`` = 1e-3, the next power of ten, which
  trains stably.  ``"adam"`` (the default before 2026-12-03, no source): Adam on the mean over
  pixels (stage I) and on eq 3's sum (stage II);
* ``init="caffe"`` (default): Caffe's ``xavier`` filler, U(+-sqrt(3 / fan_in)); ``"glorot"``;
* ``batch_size=50``: the file's training batch;
* ``batch_order``: ``"shuffle"`` (default) or ``"file"``, the data's own order every epoch, as
  Caffe's LMDB data layer reads it.  Not the default although MNIST in Caffe is read so: on data
  stored class by class (a folder of PNG sub-folders) every batch would hold one class;
* ``feature_bn``: ``"running"`` (default) or ``"batch"``, Caffe's ``use_global_stats: false``
  (batch statistics in the test phase too).  Not the default: a feature, and so ``predict``, would
  depend on the images in the same batch;
* ``cluster_bn`` (stage II): ``"frozen"`` (default) keeps the stage I running statistics, so
  z_i = f(x_i) is the same function in lines 7 and 10 and the target R is the one the step
  follows; ``"batch"`` trains on batch statistics, as Caffe's BatchNorm does in its TRAIN phase.

The feature clustered is the output of the feature layer after its BN and ReLU (the sparse
activations of Fig. 4); k-means on the conv's output, after its BN, or after the ReLU, with or
without L2 normalisation measured alike (``docs/results.md``).  What each convention measured,
stage I alone and DBC on MNIST-test and MNIST-full: ``docs/results.md``.
"""

from __future__ import annotations

import numpy as np

from nbclust.engine import nn, optim
from nbclust.engine.optable import OPS
from nbclust.methods import architectures
from nbclust.methods.base import AutoencoderMixin, DeepClusterer, LearnedCentresMixin
from nbclust.methods.clustering import target
from nbclust.methods.params import COMMON_PARAMS, Attr, Param, Params
from nbclust.methods.phases import KMeansInit, Phase, ReconstructionPretraining

CAFFE_MOMENTUM, CAFFE_WEIGHT_DECAY, CAFFE_BIAS_LR = 0.9, 1e-4, 2.0  # caffe-twns examples/mnist/lenet_tn*

FCAE_PARAMS = COMMON_PARAMS + Params(
    Param("pretrain_epochs", int, 50, "stage I epochs: the FCAE's reconstruction training (Algorithm 1 line 1)",
          ge=0, schedule=True),
    Param("batch_size", int, 50, "mini-batch size (the first author's Caffe files: 50)", ge=1),
    Param("lr", float, 1e-3, "step size of stage I", gt=0),
    Param("solver", str, "caffe", "optimiser of both stages: Caffe's SGD as the first author's "
          "Caffe files set it (momentum 0.9, weight decay 1e-4, bias step x2, Euclidean loss 1/2 sum), or Adam",
          choices=("caffe", "adam")),
    Param("init", str, "caffe", "FCAE weights: Caffe's xavier U(+-sqrt(3 / fan_in)) as the first author's Caffe "
          "files, or Glorot-uniform", choices=("caffe", "glorot")),
    Param("batch_order", str, "shuffle", "mini-batches drawn at random each epoch, or in the data's own order "
          "every epoch (Caffe's LMDB data layer)", choices=("shuffle", "file")),
    Param("feature_bn", str, "running", "batch norm when features are extracted: running statistics, or the "
          "statistics of each batch of batch_size images in the data's order (Caffe's use_global_stats: false)",
          choices=("running", "batch")),
    Param("n_init", int, 20, "k-means restarts on the stage I features (Algorithm 1 lines 2-3)", ge=1),
)
DBC_PARAMS = FCAE_PARAMS + Params(
    Param("epochs", int, 50, "stage II epochs: boosted self-training (Algorithm 2)", ge=0, schedule=True),
    Param("cluster_lr", float, 1e-3, "step size of stage II (the paper names one optimiser, no second step)",
          gt=0),
    Param("cluster_bn", str, "frozen", "batch norm in stage II: frozen stage I statistics (lines 7 and 10 "
          "the same function) or batch statistics (Caffe's TRAIN phase)", choices=("frozen", "batch")),
    Param("alpha", float, 2.0, "boosting exponent alpha of the target R (eq 2)", gt=1),
    Param("normalization", str, "boosted", "n_j of eq 2: sum_i s_ij^alpha (boosted), sum_i s_ij (soft, DEC's) "
          "or 1 (none)", choices=("boosted", "soft", "none")),
    Param("tol", float, 1e-3, "stop stage II when fewer than this fraction of hard assignments change "
          "(Algorithm 2 line 14)", ge=0, lt=1, schedule=True),
)


def caffe_sgd(modules, lr, extra=()) -> dict:
    """Caffe's SGD as the first author's Caffe files set it (GitHub fengfu-chris/caffe-twns,
    ``examples/mnist/lenet_tn.prototxt`` and ``lenet_tn_solver.prototxt``): momentum 0.9, weight
    decay 1e-4 on every parameter (``decay_mult`` 1, Caffe's default), conv biases at twice the
    step (``lr_mult: 2``).  Caffe's update v = m v - lr (g + wd w), w += v is torch's rule for a
    fixed step.  ``extra``: more parameters at the base step (the centres mu)."""
    base, biases = list(extra), []
    for module in modules:
        for layer in module.layers:
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                base.append(layer.weight)
                biases.append(layer.bias)
            else:
                base += layer.parameters()
    kw = dict(momentum=CAFFE_MOMENTUM, weight_decay=CAFFE_WEIGHT_DECAY)
    return {"sgd": optim.SGD(base, lr, **kw), "sgd_bias": optim.SGD(biases, lr * CAFFE_BIAS_LR, **kw)}


class FCAEPretraining(ReconstructionPretraining):
    """Stage I, Algorithm 1 line 1: the FCAE on the Euclidean loss, with Caffe's SGD or Adam.

    Caffe's SGD minimises Caffe's EuclideanLoss, 1/(2 N) sum_n ||x_n - x^_n||^2 (summed over pixels,
    averaged over the batch), whose gradient is P/2 times that of the mean over pixels, which Adam
    minimises (the paper's sum up to a constant Adam does not see).
    """

    def optimizers(self, est):
        if est.solver == "adam":
            return super().optimizers(est)
        return caffe_sgd((est.modules_["encoder"], est.modules_["decoder"]), est.lr)

    def batches(self, est, n):
        return est._ordered_batches(n)

    def step(self, est, X, idx):
        if est.solver == "adam":
            return super().step(est, X, idx)
        enc, dec = est.modules_["encoder"], est.modules_["decoder"]
        x = X[est._backend.asarray(idx)]
        loss, ctx = OPS.mse(est._backend, dec(enc(x)), x)
        g, _ = ctx.backward()
        half_pixels = int(np.prod(x.shape[1:])) / 2.0
        enc.backward(dec.backward(g * half_pixels), input_grad=False)
        return {"mse": float(loss), "euclidean": float(loss) * half_pixels}  # the objective: Caffe's loss


class BoostedSelfTraining(Phase):
    """Stage II, Algorithm 2: the encoder alone and the centres mu, trained on KL(R || S)."""

    name = "cluster"
    epochs = "epochs"

    def begin(self, est, X):  # line 5: theta <- theta_e*, mu <- the k-means centres
        est.assign_ = est._assign(est._embed_all(X))
        est._centres_as_parameter()

    def optimizers(self, est):
        if est.solver == "caffe":
            return caffe_sgd((est.modules_["encoder"],), est.cluster_lr, extra=[est._mu])
        return {"adam": optim.Adam(est.modules_["encoder"].parameters() + [est._mu], lr=est.cluster_lr)}

    def batches(self, est, n):
        return est._ordered_batches(n)

    def begin_epoch(self, est, X):
        S = est.soft_assign(est._embed_all(X))  # line 7, eq 1
        est.target_ = target(S, est.alpha, est.normalization)  # line 8, eq 2
        if est.cluster_bn == "frozen":
            est.modules_["encoder"].eval()

    def step(self, est, X, idx):
        b, enc = est._backend, est.modules_["encoder"]
        z = enc(X[b.asarray(idx)])  # line 10
        r = b.asarray(est.target_[idx], est._dtype)
        loss, ctx = OPS.dbc_kl(b, z, est._mu.data, r, v=1.0)  # eq 3
        g_z, g_mu, _ = ctx.backward()  # eqs 4-5
        if est.solver == "caffe":  # Caffe's losses average over the batch
            g_z, g_mu = g_z / len(idx), g_mu / len(idx)
        enc.backward(g_z, input_grad=False)  # line 11
        est._mu.grad += g_mu
        return {"kl": float(loss) / len(idx)}

    def end_epoch(self, est, X):
        est._centres_from_mu()
        labels = est._assign(est._embed_all(X))
        changed = float(np.mean(labels != est.assign_))
        est.assign_ = labels
        est.converged_ = changed < est.tol  # line 14
        return {"changed": changed}


class FCAEKMeans(AutoencoderMixin, DeepClusterer):
    """FCAE features + k-means (the FCAE-KMS baseline of seed 002): stage I only."""

    hyperparameters = FCAE_PARAMS
    phases = (
        FCAEPretraining(),  # Algorithm 1 line 1
        KMeansInit(),  # Algorithm 1 lines 2-3: Z = f(X), mu = k-means centres
    )
    _min_size = 8

    def _ordered_batches(self, n: int) -> list:
        """Mini-batch indices: reshuffled each epoch, or the data's order (``batch_order="file"``)."""
        if self.batch_order == "shuffle":
            return self._batches(n)
        return [np.arange(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]

    def _embed_all(self, X, batch: int = 512) -> np.ndarray:
        """Features of ``X``; with ``feature_bn="batch"`` every batch norm uses the statistics of
        its own batch, consecutive batches of about ``batch_size`` images in the order of ``X``
        (Caffe's BatchNorm with ``use_global_stats: false``, the first author's setting), and
        the running statistics are left as they were."""
        if self.feature_bn == "running":
            return super()._embed_all(X, batch)
        n = X.shape[0]
        if n < 2:
            raise ValueError("feature_bn='batch' needs at least 2 images (batch statistics)")
        enc, b = self.modules_["encoder"], self._backend
        kept = enc.state_dict()
        enc.train()
        try:
            parts = np.array_split(np.arange(n), max(1, n // self.batch_size))
            out = [b.to_numpy(self._embed(X[b.asarray(idx)])) for idx in parts]
        finally:
            enc.load_state_dict(kept)
        return np.concatenate(out).astype(np.float64)

    def _build(self, image_shape):
        enc, dec = architectures.fcae(image_shape, init=self.init, backend=self._backend.name, dtype=self._dtype,
                                      rng=self._seed())
        return {"encoder": enc, "decoder": dec}

    def _embed(self, xb):
        return self.modules_["encoder"](xb)


class DBC(LearnedCentresMixin, FCAEKMeans):
    """Discriminatively boosted clustering: FCAE (stage I) then boosted self-training (stage II)."""

    hyperparameters = DBC_PARAMS
    attributes = (
        Attr("assign_", "ndarray of shape (N,)", "hard assignments after the last epoch (line 14 compares them)",
             state="array"),
        Attr("target_", "ndarray of shape (N, K)", "the target R of the last epoch (eq 2)"),
    )
    phases = (
        FCAEPretraining(),  # stage I: Algorithm 1 line 1
        KMeansInit(),  # Algorithm 1 lines 2-3
        BoostedSelfTraining(),  # stage II: Algorithm 2
    )
