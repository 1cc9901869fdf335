"""DCEC: deep convolutional embedded clustering (Guo, Liu, Zhu, Yin, ICONIP 2017), as in its reference code.

The baseline the seed papers compare with.

1. ``pretrain``: the convolutional auto-encoder
   (:func:`nbclust.methods.architectures.dcec`) trained with MSE by Adam.
2. mu <- k-means centres of the embedding (n_init=20).
3. ``cluster``: per mini-batch (Adam, same lr)

     q_ij = (1 + ||z_i - mu_j||^2)^-1 / sum_j' (...)            (Student t, v = 1)
     L    = mse(x, x^) + gamma * KL(P || Q)                       (gamma = 0.1, batchmean KL)

   with the target p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'), f_j = sum_i q_ij,
   recomputed on the whole data every ``update_interval`` (140) mini-batches; at each
   update the run stops when the fraction of changed hard labels is below ``tol``
   (0.001), before training on that batch, as the reference code does.

The batch counter runs across epochs; ``epochs`` caps the number of passes (the
reference's ``maxiter`` = 2e4 batches is about 73 epochs of MNIST-70000).  Unlike the
reference code, which walks the data in a fixed order, batches are shuffled every epoch.
"""

from __future__ import annotations

import numpy as np

from nbclust.engine import optim
from nbclust.engine.optable import OPS
from nbclust.methods import architectures
from nbclust.methods.base import AutoencoderMixin, DeepClusterer, LearnedCentresMixin
from nbclust.methods.clustering import dec_target
from nbclust.methods.params import COMMON_PARAMS, Attr, Param, Params
from nbclust.methods.phases import KMeansInit, Phase, ReconstructionPretraining

DCEC_PARAMS = COMMON_PARAMS + Params(
    Param("pretrain_epochs", int, 200, "autoencoder pretraining epochs (step 1)", ge=0, schedule=True),
    Param("epochs", int, 100, "cap of the clustering epochs (step 3)", ge=0, schedule=True),
    Param("batch_size", int, 256, "mini-batch size", ge=1),
    Param("lr", float, 1e-3, "Adam step size of both phases", gt=0),
    Param("gamma", float, 0.1, "weight gamma of the clustering loss KL(P || Q)", ge=0),
    Param("update_interval", int, 140, "mini-batches between target updates", ge=1),
    Param("tol", float, 1e-3, "stop when fewer than this fraction of hard labels change at a target update",
          ge=0, lt=1, schedule=True),
    Param("embedding_dim", int, 10, "size of the embedding z", ge=1),
    Param("n_init", int, 20, "k-means restarts of the initial centres (step 2)", ge=1),
)


class SelfTraining(Phase):
    """Step 3: reconstruction + gamma KL(P || Q), the target P refreshed every ``update_interval`` batches."""

    name = "cluster"
    epochs = "epochs"

    def begin(self, est, X):
        est.iter_ = 0
        est._centres_as_parameter()

    def optimizers(self, est):
        params = est.modules_["encoder"].parameters() + est.modules_["decoder"].parameters() + [est._mu]
        return {"adam": optim.Adam(params, lr=est.lr)}

    def update_target(self, est, X):
        """P from Q on the whole data; converged when few hard labels changed since the last update."""
        est._centres_from_mu()
        Q = est.soft_assign(est._embed_all(X))
        est.target_ = dec_target(Q)
        labels = Q.argmax(1)
        changed = float(np.mean(labels != est.assign_))
        est.assign_ = labels
        if est.iter_ > 0 and changed < est.tol:
            est.converged_ = True

    def step(self, est, X, idx):
        if est.iter_ % est.update_interval == 0:
            self.update_target(est, X)
            if est.converged_:
                return {}
        est.iter_ += 1
        b, enc, dec = est._backend, est.modules_["encoder"], est.modules_["decoder"]
        x = X[b.asarray(idx)]
        z = enc(x)
        recon, recon_ctx = OPS.mse(b, dec(z), x)
        g_z = dec.backward(recon_ctx.backward()[0])
        q, q_ctx = OPS.student_t(b, z, est._mu.data, v=1.0)
        p = b.asarray(est.target_[idx], est._dtype)
        kl, kl_ctx = OPS.kl_div(b, p, q)
        g_zq, g_mu = q_ctx.backward(kl_ctx.backward()[1] * est.gamma)
        enc.backward(g_z + g_zq, input_grad=False)
        est._mu.grad += g_mu
        recon, kl = float(recon), float(kl)
        return {"mse": recon, "kl": kl, "loss": recon + est.gamma * kl}

    def end_epoch(self, est, X):
        est._centres_from_mu()
        return {}


class DCEC(LearnedCentresMixin, AutoencoderMixin, DeepClusterer):
    """Convolutional auto-encoder + DEC-style self-training with a kept reconstruction loss."""

    hyperparameters = DCEC_PARAMS
    attributes = (
        Attr("target_", "ndarray of shape (N, K)", "the target P of the last update", state="array"),
        Attr("assign_", "ndarray of shape (N,)", "hard labels at the last target update", state="array"),
        Attr("iter_", "int", "mini-batches of the clustering phase so far", state="meta"),
    )
    phases = (
        ReconstructionPretraining(),  # 1
        KMeansInit(),  # 2
        SelfTraining(),  # 3
    )
    _min_size = 8

    def _build(self, image_shape):
        enc, dec = architectures.dcec(image_shape, self.embedding_dim, backend=self._backend.name,
                                      dtype=self._dtype, rng=self._seed())
        return {"encoder": enc, "decoder": dec}

    def _embed(self, xb):
        return self.modules_["encoder"](xb)
