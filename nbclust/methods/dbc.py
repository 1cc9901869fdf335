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
is below ``tol`` (line 14).

Choices the paper leaves open (it names no optimiser, step or batch-norm mode; no code
was released), with what each rests on:

* Optimiser: Adam for both stages, at the stage I step ``lr`` = ``cluster_lr`` = 1e-3.
  The paper derives one update rule for both stages and gives no second step size; its
  Fig. 6-7 show the soft scores polarising and the embedding regrouping within 2-4
  epochs ("we can ideally learn from S to R each time").  At 1e-4 stage II moves far
  slower than that (MNIST-test smoke subset: 5% of assignments change in epoch 1 and
  under 2% after; at 1e-3, 10% then 5%), so 1e-4, an extra assumption, is not the default.
  Because eq 3 is a sum over the batch, plain SGD's step would scale with the batch;
  Adam's does not, which is one more reason to keep Adam.
* Batch norm in stage II (``cluster_bn``): ``"frozen"`` (default) keeps the stage I
  running statistics, so z_i = f(x_i) is the same function in lines 7 and 10 and the
  target R is the one the step follows; ``"batch"`` trains on batch statistics, as
  Caffe's BatchNorm does in its TRAIN phase, while R (line 7) uses the running ones.
  Measured equal within noise (smoke subset, 20 epochs: 0.663 frozen, 0.665 batch).
* The feature clustered is the output of the feature layer after its BN and ReLU (the
  sparse activations of Fig. 4).  Measured: k-means on the feature conv's output, after
  its BN, or after the ReLU, with or without L2 normalisation, all give ACC 0.52-0.61 on
  MNIST-full over 20 epochs of stage I (``docs/results.md``), so the choice does not
  explain the gap to the paper's FCAE-KMS 0.794.
"""

from __future__ import annotations

import numpy as np

from nbclust import optim
from nbclust.methods import architectures
from nbclust.methods.base import AutoencoderMixin, DeepClusterer, LearnedCentresMixin
from nbclust.methods.clustering import target
from nbclust.methods.params import COMMON_PARAMS, Attr, Param, Params
from nbclust.methods.phases import KMeansInit, Phase, ReconstructionPretraining

FCAE_PARAMS = COMMON_PARAMS + Params(
    Param("pretrain_epochs", int, 50, "stage I epochs: the FCAE's reconstruction training (Algorithm 1 line 1)",
          ge=0, schedule=True),
    Param("batch_size", int, 256, "mini-batch size", ge=1),
    Param("lr", float, 1e-3, "Adam step size of stage I", gt=0),
    Param("n_init", int, 20, "k-means restarts on the stage I features (Algorithm 1 lines 2-3)", ge=1),
)
DBC_PARAMS = FCAE_PARAMS + Params(
    Param("epochs", int, 50, "stage II epochs: boosted self-training (Algorithm 2)", ge=0, schedule=True),
    Param("cluster_lr", float, 1e-3, "Adam step size of stage II (the paper names one optimiser, no second "
          "step)", gt=0),
    Param("cluster_bn", str, "frozen", "batch norm in stage II: frozen stage I statistics (lines 7 and 10 "
          "the same function) or batch statistics (Caffe's TRAIN phase)", choices=("frozen", "batch")),
    Param("alpha", float, 2.0, "boosting exponent alpha of the target R (eq 2)", gt=1),
    Param("normalization", str, "boosted", "n_j of eq 2: sum_i s_ij^alpha (boosted), sum_i s_ij (soft, DEC's) "
          "or 1 (none)", choices=("boosted", "soft", "none")),
    Param("tol", float, 1e-3, "stop stage II when fewer than this fraction of hard assignments change "
          "(Algorithm 2 line 14)", ge=0, lt=1, schedule=True),
)


class BoostedSelfTraining(Phase):
    """Stage II, Algorithm 2: the encoder alone and the centres mu, trained on KL(R || S)."""

    name = "cluster"
    epochs = "epochs"

    def begin(self, est, X):  # line 5: theta <- theta_e*, mu <- the k-means centres
        est.assign_ = est._assign(est._embed_all(X))
        est._centres_as_parameter()

    def optimizers(self, est):
        return {"adam": optim.Adam(est.modules_["encoder"].parameters() + [est._mu], lr=est.cluster_lr)}

    def begin_epoch(self, est, X):
        S = est.soft_assign(est._embed_all(X))  # line 7, eq 1
        est.target_ = target(S, est.alpha, est.normalization)  # line 8, eq 2
        if est.cluster_bn == "frozen":
            est.modules_["encoder"].eval()

    def step(self, est, X, idx):
        b, enc = est._backend, est.modules_["encoder"]
        z = enc(X[b.asarray(idx)])  # line 10
        r = b.asarray(est.target_[idx], est._dtype)
        loss, (g_z, g_mu, _) = est._loss("dbc_kl", z, est._mu.data, r, v=1.0)  # eqs 3-5
        enc.backward(g_z, input_grad=False)  # line 11
        est._mu.grad += g_mu
        return {"kl": loss / len(idx)}

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
        ReconstructionPretraining(),  # Algorithm 1 line 1
        KMeansInit(),  # Algorithm 1 lines 2-3: Z = f(X), mu = k-means centres
    )
    _min_size = 8

    def _build(self, image_shape):
        enc, dec = architectures.fcae(image_shape, backend=self._backend.name, dtype=self._dtype,
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
        ReconstructionPretraining(),  # stage I: Algorithm 1 line 1
        KMeansInit(),  # Algorithm 1 lines 2-3
        BoostedSelfTraining(),  # stage II: Algorithm 2
    )
