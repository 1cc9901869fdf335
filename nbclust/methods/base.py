"""``DeepClusterer``: the base class of every nbclust estimator (the estimator contract).

A subclass describes its method; the base runs the epochs, records history,
checkpoints/resumes, saves/loads and validates.  API for subclasses (stable):

Declarations (class attributes)
    ``hyperparameters``     the :class:`~nbclust.methods.params.Params` table (starting
                            with ``COMMON_PARAMS``): constructor, validation, docstring and
                            command-line flags come from it (:mod:`nbclust.methods.params`).
    ``attributes``          :class:`~nbclust.methods.params.Attr` entries of the fitted
                            attributes; those with ``state="array"`` / ``"meta"`` are saved
                            in the training state (arrays, resp. JSON values) and the model.
    ``phases``              the algorithm's stages in order (:mod:`nbclust.methods.phases`):
                            :class:`Phase` objects (epochs of mini-batch steps, each with
                            its own begin / optimizers / step / end) and :class:`Step` objects
                            (one-off work such as a k-means initialisation).
    ``_model_free_params``  hyperparameters that may differ on resume (default
                            ``("verbose", "backend")``).
    ``_min_size``           smallest supported image side (ValueError below it).

Hooks (``X`` is the whole training set on the backend, (N, C, H, W), dtype ``self._dtype``)
    ``_check_params()``                what the table cannot say (cross-parameter rules).
    ``_build(image_shape)``            create the networks; return ``{name: Module}``.
    ``_after_load()``                  re-attach loaded arrays (e.g. centres as a trainable
                                       Parameter); called after a resume or ``load``.
    ``_embed(xb)``                     the embedding of a batch (eval mode; backend array).
    ``_assign(Z)``                     labels from an embedding (numpy); default: nearest
                                       row of ``cluster_centers_``.

Helpers: ``self._rng`` (the single numpy Generator of the fit), ``self._seed()``
(an int drawn from it, for layer initialisers and sklearn's KMeans),
``self._backend``, ``self._dtype``, ``self.modules_``, ``self.optimizers_``,
``self._embed_all(X)`` (embedding of the whole backend array, numpy),
``self._batches(n)`` (shuffled index batches from ``self._rng``),
``self._kmeans(Z, n_init)`` (sklearn KMeans seeded from ``self._rng``).  Ops and losses are
called through the op table: ``loss, ctx = OPS.mse(self._backend, pred, x)``, ``ctx.backward()``.

Mini-batches are drawn per epoch by ``self._rng.permutation``; the Generator's
state is part of the training state, so a resumed fit replays the same batches.
Draw every random number of a fit (dropout masks included) from ``self._rng``.

Training state (``training_state()``, at an epoch boundary): arrays ``net.<module>.<key>``
(parameters and buffers), ``attr.<name>`` (centres and the ``state="array"`` attributes),
``optim.<name>.<key>``; meta: class, hyperparameters, image shape, optimiser
skeletons, the Generator state, phase / epoch counters, history, the ``state="meta"``
attributes and the data fingerprint (shape + SHA-1 of a row subsample).  ``fit(...,
resume=state)`` refuses (ValueError) another class, other hyperparameters (all but
``_model_free_params``) and other data.  ``save``/``load`` store the model part only.
"""

from __future__ import annotations

import hashlib
import sys
import time

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin

from nbclust.backend import check_backend_name, get_backend
from nbclust.io import load_state, save_state
from nbclust.methods import clustering
from nbclust.methods.params import COMMON_PARAMS, Attr, Declared
from nbclust.methods.phases import Phase, Step

_REGISTRY: dict[str, type] = {}


class DeepClusterer(Declared, BaseEstimator, ClusterMixin, TransformerMixin):
    """Base of the deep clustering estimators; see the module docstring for the subclass API."""

    hyperparameters = COMMON_PARAMS
    attributes = (
        Attr("labels_", "ndarray of shape (N,)", "cluster of each training image"),
        Attr("cluster_centers_", "ndarray of shape (K, d)", "cluster centres in the embedding"),
        Attr("history_", "list of dict", "one record per epoch: phase, epoch, loss terms, seconds "
             "(and acc, nmi, ari when fitted with labels)"),
        Attr("image_shape_", "tuple", "(C, H, W) of the training images"),
        Attr("n_features_in_", "int", "C * H * W"),
        Attr("modules_", "dict", "the networks, ``{name: nbclust.nn.Module}``"),
    )
    phases: tuple = ()
    _state_attrs: tuple = ()
    _state_meta: tuple = ()
    _model_free_params = ("verbose", "backend")
    _min_size = 8
    _dtype = np.float32

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls
        cls._state_attrs = tuple(a.name for a in cls._all_attributes if a.state == "array")
        cls._state_meta = tuple(a.name for a in cls._all_attributes if a.state == "meta")

    # ------------------------------------------------------------------ hooks
    def _check_params(self):
        pass

    def _build(self, image_shape):
        raise NotImplementedError

    def _after_load(self):
        """Hook: re-attach loaded arrays (e.g. centres as trainable parameters)."""

    def _embed(self, xb):
        raise NotImplementedError

    def _assign(self, Z):
        return clustering.nearest(Z, self.cluster_centers_)

    # ---------------------------------------------------------- validation
    def _validate(self):
        check_backend_name(self.backend)
        self._backend = get_backend(self.backend)
        self._validate_hyperparameters()
        self._check_params()

    def _check_X(self, X, *, fitted=False) -> np.ndarray:
        """(N, C, H, W) float array in [0, 1]-ish scale: uint8 / 255, floats checked finite."""
        X = np.asarray(X) if not isinstance(X, np.ndarray) else X
        if X.ndim not in (3, 4):
            raise ValueError(f"X must have shape (N, H, W) or (N, C, H, W), got {X.ndim}-D data of shape {X.shape}")
        if X.shape[0] == 0:
            raise ValueError("X is empty (no images)")
        if X.dtype.kind not in "uif" or X.dtype == np.bool_:
            raise ValueError(f"X must be numeric image data, got dtype {X.dtype}")
        if X.ndim == 3:
            X = X[:, None]
        scale = 1.0 / 255.0 if X.dtype == np.uint8 else 1.0
        X = np.asarray(X, dtype=self._dtype) * self._dtype(scale) if scale != 1.0 else np.asarray(X, dtype=self._dtype)
        if X.dtype.kind == "f" and not np.isfinite(X).all():
            raise ValueError("X contains NaN or Inf values")
        shape = tuple(int(s) for s in X.shape[1:])
        if fitted:
            if shape != tuple(self.image_shape_):
                raise ValueError(f"X has image shape {shape}, the model was fitted on {tuple(self.image_shape_)}")
        elif min(shape[1:]) < self._min_size:
            raise ValueError(
                f"images of size {shape[1]}x{shape[2]} are too small for {type(self).__name__} "
                f"(needs at least {self._min_size}x{self._min_size})"
            )
        return X

    @staticmethod
    def _fingerprint(X: np.ndarray) -> dict:
        flat = X.reshape(X.shape[0], -1)
        rows = flat[:: max(1, flat.shape[0] // 64)]
        h = hashlib.sha1(np.ascontiguousarray(rows).tobytes())
        h.update(np.ascontiguousarray(flat[-1]).tobytes())
        return {"shape": list(X.shape), "hash": h.hexdigest()}

    # ---------------------------------------------------------------- helpers
    def _seed(self) -> int:
        return int(self._rng.integers(0, 2**31 - 1))

    def _batches(self, n: int):
        perm = self._rng.permutation(n)
        return [perm[i : i + self.batch_size] for i in range(0, n, self.batch_size)]

    def _kmeans(self, Z: np.ndarray, n_init: int = 20, init="k-means++"):
        """sklearn KMeans on ``Z`` seeded from the Generator, single-threaded (:func:`clustering.kmeans`)."""
        return clustering.kmeans(Z, self.n_clusters, self._seed(), n_init=n_init, init=init)

    def _set_mode(self, training: bool):
        for m in self.modules_.values():
            m.train() if training else m.eval()

    def _embed_all(self, X, batch: int = 512) -> np.ndarray:
        self._set_mode(False)
        b = self._backend
        out = [b.to_numpy(self._embed(X[i : i + batch])) for i in range(0, X.shape[0], batch)]
        self._set_mode(True)
        return np.concatenate(out).astype(np.float64)

    def _current_labels(self, X):
        """Monitoring labels (or None before centres exist)."""
        if getattr(self, "cluster_centers_", None) is None:
            return None
        return self._assign(self._embed_all(X))

    # -------------------------------------------------------------------- fit
    def fit(self, X, y=None, *, callback=None, resume=None):
        """Train on ``X`` ((N,H,W) or (N,C,H,W)); ``y`` only for monitoring; see the contract."""
        self._validate()
        Xn = self._check_X(X)
        N = Xn.shape[0]
        if self.n_clusters > N:
            raise ValueError(f"n_clusters={self.n_clusters} exceeds the number of images ({N})")
        if y is not None:
            y = np.asarray(y).ravel()
            if len(y) != N:
                raise ValueError(f"y has {len(y)} labels for {N} images")
        self.image_shape_ = tuple(int(s) for s in Xn.shape[1:])
        self.n_features_in_ = int(np.prod(self.image_shape_))
        self._fingerprint_ = self._fingerprint(Xn)
        Xd = self._backend.asarray(Xn, dtype=self._dtype)
        del Xn
        self._init_fit_state()
        if resume is not None:
            self._restore(*resume)
        else:
            self.modules_ = self._build(self.image_shape_)
        self._train(Xd, y, callback)
        self.labels_ = self._assign(self._embed_all(Xd))
        self._drop_fit_state()
        return self

    def _init_fit_state(self):
        self._rng = np.random.default_rng(self.random_state)
        self.history_ = []
        self.cluster_centers_ = None
        for name in (*self._state_attrs, *self._state_meta):
            setattr(self, name, None)
        self.phase_, self.phase_epoch_, self.epoch_ = None, 0, 0
        self.converged_ = False
        self.optimizers_ = {}

    def _drop_fit_state(self):
        self.optimizers_ = {}

    def _stages(self) -> list:
        """The active stages of ``phases``, in order."""
        return [s for s in self.phases if s.active(self)]

    def _phase(self, name: str) -> Phase:
        for stage in self._stages():
            if isinstance(stage, Phase) and stage.name == name:
                return stage
        raise ValueError(f"{type(self).__name__} has no phase {name!r}")

    def epoch_budget(self) -> int:
        """The most epochs a fit can run: the sum of its phases' budgets (stopping rules may end it sooner)."""
        return sum(s.budget(self) for s in self._stages() if isinstance(s, Phase))

    def _train(self, X, y, callback):
        stages = self._stages()
        names = [s.name for s in stages]
        start = names.index(self.phase_) if self.phase_ in names else 0  # resume: the phase of the state
        for stage in stages[start:]:
            if isinstance(stage, Step):
                stage.run(self, X)
                continue
            if self.phase_ != stage.name:  # entering the phase afresh
                self.phase_, self.phase_epoch_, self.converged_ = stage.name, 0, False
                stage.begin(self, X)
                self.optimizers_ = stage.optimizers(self)
            budget = stage.budget(self)
            while self.phase_epoch_ < budget and not self.converged_:
                self._run_epoch(stage, X, y, callback)
            stage.end(self, X)

    def _run_epoch(self, phase, X, y, callback):
        t0 = time.perf_counter()
        self._set_mode(True)
        phase.begin_epoch(self, X)
        totals: dict[str, float] = {}
        N = X.shape[0]
        for idx in phase.batches(self, N):
            for m in self.modules_.values():
                m.zero_grad()
            for opt in self.optimizers_.values():
                opt.zero_grad()
            terms = phase.step(self, X, idx)
            if self.converged_:  # the step decided to stop before training on this batch
                break
            for opt in self.optimizers_.values():
                opt.step()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(idx) / N
        extra = phase.end_epoch(self, X)
        self.phase_epoch_ += 1
        self.epoch_ += 1
        record = {"phase": phase.name, "epoch": self.epoch_, **totals, **extra}
        record["seconds"] = time.perf_counter() - t0
        if y is not None:
            labels = self._current_labels(X)
            if labels is not None:
                from nbclust.metrics import ari, cluster_acc, nmi

                record.update(acc=cluster_acc(y, labels), nmi=nmi(y, labels), ari=ari(y, labels))
        self.history_.append(record)
        if self.verbose:
            parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()]
            print(f"[{type(self).__name__}] " + " ".join(parts), file=sys.stderr)
        if callback is not None:
            callback(self, record)

    # ------------------------------------------------------- training state
    def _model_params(self) -> dict:
        return {k: v for k, v in self.get_params().items() if k not in self._model_free_params}

    def training_state(self):
        """``(arrays, meta)``: everything needed to resume (call at an epoch boundary).

        The arrays are copies: training on after the call does not change a state
        kept in memory (the CLI keeps the latest one for Ctrl-C).
        """
        arrays: dict[str, np.ndarray] = {}
        meta = self._model_meta(arrays)
        opt_meta = {}
        for name, opt in self.optimizers_.items():
            opt_meta[name] = _flatten(f"optim.{name}.", opt.state_dict(), arrays)
        meta.update(
            kind="training_state",
            optimizers=opt_meta,
            rng=self._rng.bit_generator.state,
            phase=self.phase_,
            phase_epoch=self.phase_epoch_,
            epoch=self.epoch_,
            converged=bool(self.converged_),
            history=_jsonable(self.history_),
            data=self._fingerprint_,
            extra_meta={k: _jsonable(getattr(self, k)) for k in self._state_meta},
        )
        return {k: np.array(v, copy=True) for k, v in arrays.items()}, meta

    def _model_meta(self, arrays) -> dict:
        for mname, module in self.modules_.items():
            for k, v in module.state_dict().items():
                arrays[f"net.{mname}.{k}"] = np.asarray(v)
        for name in ("cluster_centers_", *self._state_attrs):
            v = getattr(self, name, None)
            if v is not None:
                arrays[f"attr.{name}"] = self._backend.to_numpy(v)
        return {
            "class": type(self).__name__,
            "params": _jsonable(self.get_params()),
            "image_shape": list(self.image_shape_),
        }

    def _check_meta(self, meta):
        if meta.get("class") != type(self).__name__:
            raise ValueError(f"state is from method {meta.get('class')!r}, not {type(self).__name__}")
        mine = _jsonable(self._model_params())
        theirs = {k: v for k, v in meta["params"].items() if k not in self._model_free_params}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ValueError(f"state has other hyperparameters: {', '.join(diff)} differ")

    def _load_model(self, arrays, meta):
        self.image_shape_ = tuple(meta["image_shape"])
        self.n_features_in_ = int(np.prod(self.image_shape_))
        self._rng = np.random.default_rng(self.random_state)
        self.modules_ = self._build(self.image_shape_)
        for mname, module in self.modules_.items():
            prefix = f"net.{mname}."
            module.load_state_dict({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
        for name in ("cluster_centers_", *self._state_attrs):
            v = arrays.get(f"attr.{name}")
            setattr(self, name, None if v is None else np.array(v))

    def _restore(self, arrays, meta):
        self._check_meta(meta)
        if meta.get("kind") != "training_state":
            raise ValueError("resume needs a training state (from training_state()), not a saved model")
        if meta["data"] != self._fingerprint_:
            raise ValueError(
                f"state was made on other data (shape {meta['data']['shape']}), not on this X "
                f"(shape {self._fingerprint_['shape']})"
            )
        if tuple(meta["image_shape"]) != tuple(self.image_shape_):
            raise ValueError("state was made for another image shape")
        self._load_model(arrays, meta)
        self._after_load()
        self.phase_, self.phase_epoch_, self.epoch_ = meta["phase"], meta["phase_epoch"], meta["epoch"]
        self.converged_ = meta["converged"]
        self.history_ = list(meta["history"])
        for k, v in meta["extra_meta"].items():
            setattr(self, k, v)
        if self.phase_ is not None:
            self.optimizers_ = self._phase(self.phase_).optimizers(self)
            for name, opt in self.optimizers_.items():
                opt.load_state_dict(_unflatten(meta["optimizers"][name], arrays))
        self._rng.bit_generator.state = meta["rng"]

    # ------------------------------------------------------ predict & co.
    def _check_fitted(self):
        if getattr(self, "modules_", None) is None or getattr(self, "cluster_centers_", None) is None:
            raise ValueError(f"this {type(self).__name__} is not fitted yet; call fit first")
        if not hasattr(self, "_backend"):
            self._backend = get_backend(self.backend)

    def transform(self, X):
        """The embedding (N, d) of ``X``."""
        self._check_fitted()
        Xd = self._backend.asarray(self._check_X(X, fitted=True), dtype=self._dtype)
        return self._embed_all(Xd)

    def predict(self, X):
        """Cluster labels of ``X`` from the trained model (equal to ``labels_`` on the training data)."""
        return self._assign(self.transform(X))

    def fit_predict(self, X, y=None, **kwargs):
        return self.fit(X, y, **kwargs).labels_

    # -------------------------------------------------------- save & load
    def save(self, path):
        """Write the fitted model (class, hyperparameters, networks, centres) to ``path`` (npz + JSON)."""
        self._check_fitted()
        arrays: dict[str, np.ndarray] = {}
        meta = self._model_meta(arrays)
        meta["kind"] = "model"
        arrays["labels_"] = np.asarray(self.labels_)
        save_state(path, arrays, meta)

    @classmethod
    def load(cls, path):
        """A fitted estimator from a file written by :meth:`save` (any subclass via the base)."""
        arrays, meta = load_state(path)
        name = meta.get("class")
        if name not in _REGISTRY:  # its module not imported yet: the registry knows where it is
            from nbclust import methods

            if name in methods.ESTIMATORS:
                getattr(methods, name)
        if name not in _REGISTRY:
            raise ValueError(f"{path}: unknown estimator class {name!r}")
        target = _REGISTRY[name]
        if cls is not DeepClusterer and target is not cls:
            raise ValueError(f"{path}: holds a {name}, not a {cls.__name__}")
        est = target(**meta["params"])
        est._backend = get_backend(est.backend)
        est._load_model(arrays, meta)
        est._after_load()
        est.labels_ = arrays.get("labels_")
        est.history_ = []
        return est


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def _flatten(prefix: str, obj, arrays: dict):
    """JSON skeleton of a nested dict/list; arrays moved into ``arrays`` under ``prefix`` keys."""
    if isinstance(obj, dict):
        return {"__dict__": [[str(k), _flatten(f"{prefix}{k}.", v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(f"{prefix}{i}.", v, arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, np.ndarray) or hasattr(obj, "get"):
        key = prefix.rstrip(".")
        arrays[key] = obj.get() if hasattr(obj, "get") else np.asarray(obj)
        return {"__array__": key}
    return _jsonable(obj)


def _unflatten(skel, arrays):
    if isinstance(skel, dict):
        if "__array__" in skel:
            return np.array(arrays[skel["__array__"]])
        if "__list__" in skel:
            return [_unflatten(v, arrays) for v in skel["__list__"]]
        if "__dict__" in skel:
            return {_key(k): _unflatten(v, arrays) for k, v in skel["__dict__"]}
    return skel


def _key(k: str):
    return int(k) if k.lstrip("-").isdigit() else k


class LearnedCentresMixin:
    """Centres mu learnt by gradient (``self._mu``, a Parameter) and Student's t soft assignments.

    For the self-training methods (DBC, DCEC): after a resume or ``load`` the centres become
    the Parameter again; ``soft_assign(Z)`` is eq 1 of DEC/DBC with the current centres.
    Put the mixin before :class:`DeepClusterer` in the bases.
    """

    def soft_assign(self, Z: np.ndarray) -> np.ndarray:
        """S (N, K): Student's t (v = 1) soft assignment of embeddings ``Z`` (numpy) to the centres."""
        return clustering.soft_assign(Z, self.cluster_centers_)

    def _after_load(self):
        self._centres_as_parameter()

    def _centres_as_parameter(self):
        """``self._mu``: the centres as a trainable Parameter (None before there are centres)."""
        from nbclust.nn import Parameter

        if self.cluster_centers_ is not None:
            mu = self._backend.asarray(self.cluster_centers_, self._dtype)
            self._mu = Parameter(mu, self._backend.xp.zeros_like(mu))

    def _centres_from_mu(self):
        """``cluster_centers_`` <- the learnt mu (float64 numpy)."""
        self.cluster_centers_ = self._backend.to_numpy(self._mu.data).astype(np.float64)


class AutoencoderMixin:
    """``reconstruct(X)`` for the methods built on an autoencoder (plots, inspection).

    ``_decode(z)`` maps the encoder output back to images; the default runs the
    ``"decoder"`` module.  Put the mixin before :class:`DeepClusterer` in the bases.
    """

    def reconstruct(self, X) -> np.ndarray:
        """The autoencoder's output for ``X`` (N, C, H, W), on the scale the model sees (uint8 / 255)."""
        self._check_fitted()
        Xd = self._backend.asarray(self._check_X(X, fitted=True), dtype=self._dtype)
        self._set_mode(False)
        try:
            out = [self._backend.to_numpy(self._decode(self._embed(Xd[i : i + 512])))
                   for i in range(0, Xd.shape[0], 512)]
        finally:
            self._set_mode(True)
        return np.concatenate(out).astype(np.float64)

    def _decode(self, z):
        return self.modules_["decoder"](z)

