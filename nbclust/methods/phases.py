"""The stages of a method's algorithm, as objects: :class:`Phase` (epochs of mini-batch steps) and
:class:`Step` (a one-off computation between them), plus the stages several methods share.

An estimator lists its stages in the order of its paper's algorithm box::

    phases = (ReconstructionPretraining(), KMeansInit(), BoostedSelfTraining())

and :meth:`DeepClusterer.fit <nbclust.methods.base.DeepClusterer.fit>` runs them in turn.
A stage holds no state of a fit: everything it computes goes on the estimator (``est``),
whose training state then carries it through a checkpoint.

A :class:`Phase` runs up to ``budget(est)`` epochs (the estimator attribute named by
``epochs``).  Entering it (not repeated on resume): ``begin(est, X)``, then
``optimizers(est)``; per epoch ``begin_epoch``, then for every mini-batch of
``batches(est, N)`` the base zeroes the gradients, calls ``step(est, X, idx)`` (forward +
backward; its ``{term: float}`` are averaged into the history) and steps the optimisers;
``end_epoch`` returns extra history entries.  ``est.converged_ = True`` ends the phase: set
in ``end_epoch``, or in ``step`` to stop before the optimisers step on that batch.  After
its last epoch: ``end(est, X)``.  Every epoch is one history record ``{"phase": name, ...}``
and a possible checkpoint.

A :class:`Step` runs once, ``run(est, X)``, when the fit reaches it (also on resume, when
the checkpoint is from an earlier phase); it has no epochs, optimisers or history record.

``active(est)`` (default True) drops a stage for some hyperparameters (DCTL's piecemeal
ablation has no joint phase).  ``X`` is the whole training set on the backend.
"""

from __future__ import annotations

import numpy as np

from nbclust.engine import optim
from nbclust.engine.optable import OPS


class Stage:
    """Common to :class:`Phase` and :class:`Step`: a ``name`` and whether it runs."""

    name = "stage"

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def active(self, est) -> bool:
        return True


class Phase(Stage):
    """Epochs of mini-batch training; see the module docstring for the order of the calls."""

    name = "phase"
    epochs = "epochs"  # the estimator attribute holding the epoch budget

    def __init__(self, name: str | None = None, epochs: str | None = None):
        super().__init__(name)
        if epochs is not None:
            self.epochs = epochs

    def budget(self, est) -> int:
        return int(getattr(est, self.epochs))

    def begin(self, est, X) -> None:
        """One-off work on entering the phase (not repeated on resume)."""

    def optimizers(self, est) -> dict:
        """``{name: optimizer}``: on entering the phase, and on resume (then loaded)."""
        return {}

    def batches(self, est, n: int) -> list:
        return est._batches(n)

    def begin_epoch(self, est, X) -> None:
        pass

    def step(self, est, X, idx) -> dict:
        raise NotImplementedError

    def end_epoch(self, est, X) -> dict:
        return {}

    def end(self, est, X) -> None:
        """After the phase's last epoch."""


class Step(Stage):
    """A one-off computation between phases (k-means initialisation, a final clustering)."""

    name = "step"

    def run(self, est, X) -> None:
        raise NotImplementedError


# ----------------------------------------------------------------------- shared stages
class ReconstructionPretraining(Phase):
    """The autoencoder alone: Adam (``lr``) on mse(decoder(encoder(x)), x) (DBC stage I, DCEC)."""

    name = "pretrain"
    epochs = "pretrain_epochs"

    def optimizers(self, est):
        m = est.modules_
        return {"adam": optim.Adam(m["encoder"].parameters() + m["decoder"].parameters(), lr=est.lr)}

    def step(self, est, X, idx):
        enc, dec = est.modules_["encoder"], est.modules_["decoder"]
        x = X[est._backend.asarray(idx)]
        loss, ctx = OPS.mse(est._backend, dec(enc(x)), x)
        enc.backward(dec.backward(ctx.backward()[0]), input_grad=False)
        return {"mse": float(loss)}


class KMeansInit(Step):
    """mu <- k-means centres of the embedding (``n_init`` restarts, seeded from the fit's Generator);
    ``assign_`` <- its labels."""

    name = "kmeans-init"

    def run(self, est, X):
        km = est._kmeans(est._embed_all(X), n_init=est.n_init)
        est.cluster_centers_ = km.cluster_centers_
        est.assign_ = km.labels_.astype(np.int64)
