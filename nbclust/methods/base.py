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
                            ``("verbose", "backend")``; besides them the table's
                            ``Param(schedule=True)`` entries: caps, patiences, thresholds).
    ``_min_size``           smallest supported image side (ValueError below it).
    ``_reads_vectors``      True if a 2-D (N, D) X is N feature vectors, read as the
                            (N, 1, 1, D) map (DCTL); False (default): refused, images only.

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

Input (``_check_X``): the contract of :mod:`nbclust.methods.inputs`.  Images are read as
intensities in [0, 1]: uint8 / 255, uint16 / 65535, bool as 0 / 1, other integers only within
0..255 (as 8-bit), floats only within [0, 1] (no estimator takes [-1, 1]: DEPICT maps [0, 1]
onto it itself); anything else is refused with the way to scale it.  Feature vectors (with
``_reads_vectors``) are taken as given.  NaN, Inf, sparse, complex, empty and 1-sample input
are refused.

Divergence: an epoch stops at the first non-finite loss term (before the optimisers step on
it), array an optimiser wrote (parameters, moment buffers; ``Optimizer.touched``) or centre
with :class:`DivergenceError` (a ``FloatingPointError``): ``"loss became NaN in epoch E of
phase P; lower --lr"``.  The failing epoch never reaches ``callback``.

Training state (``training_state()``, at an epoch boundary): arrays ``net.<module>.<key>``
(parameters and buffers), ``attr.<name>`` (centres and the ``state="array"`` attributes),
``optim.<name>.<key>``; meta: class, hyperparameters, image shape, optimiser
skeletons, the Generator state, phase / epoch counters, history, the ``state="meta"``
attributes and the data fingerprint (shape + SHA-256 of the whole scaled data).  ``fit(...,
resume=state)`` refuses (ValueError) another class, other hyperparameters (all but
``_model_free_params`` and the schedule-only ones, whose change is noted as ``"resumed"`` in
the last history record before the resume) and other data ("the content differs").
``save``/``load`` store the model part only; pickling stores the backend by its name.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.exceptions import NotFittedError

from nbclust.data.io import load_state, save_state
from nbclust.engine.backend import check_backend_name, get_backend
from nbclust.methods import clustering, inputs
from nbclust.methods.params import COMMON_PARAMS, Attr, Declared
from nbclust.methods.phases import Phase, Step

_REGISTRY: dict[str, type] = {}


class DeepClusterer(Declared, ClusterMixin, TransformerMixin, BaseEstimator):
    """Base of the deep clustering estimators; see the module docstring for the subclass API."""

    hyperparameters = COMMON_PARAMS
    attributes = (
        Attr("labels_", "ndarray of shape (N,)", "cluster of each training image"),
        Attr("cluster_centers_", "ndarray of shape (K, d)", "cluster centres in the embedding"),
        Attr("history_", "list of dict", "one record per epoch: phase, epoch, loss terms, seconds "
             "(and acc, nmi, ari when fitted with labels)"),
        Attr("image_shape_", "tuple", "(C, H, W) of the training images"),
        Attr("n_features_in_", "int", "C * H * W"),
        Attr("modules_", "dict", "the networks, ``{name: nbclust.engine.nn.Module}``"),
    )
    phases: tuple = ()
    _state_attrs: tuple = ()
    _state_meta: tuple = ()
    _model_free_params = ("verbose", "backend")
    _min_size = 8
    _reads_vectors = False  # whether a 2-D (N, D) X is N feature vectors (read as (N, 1, 1, D)) or refused
    _vector_min = 1  # features of a vector input
    _dtype = np.float32

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls
        cls._state_attrs = tuple(a.name for a in cls._all_attributes if a.state == "array")
        cls._state_meta = tuple(a.name for a in cls._all_attributes if a.state == "meta")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images (N, H, W), also (N, C, H, W)
        # two_d_array stays True for the image-only methods too, so that check_estimator runs the checks
        # that apply to them; the others are listed by expected_failed_checks
        return tags

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
        """``X`` as an (N, C, H, W) array of ``_dtype`` on the input contract (:mod:`~nbclust.methods.inputs`):
        images in [0, 1]; with ``_reads_vectors``, (N, D) feature vectors as (N, 1, 1, D), as given."""
        name = type(self).__name__
        shapes = "(N, D), (N, H, W) or (N, C, H, W)" if self._reads_vectors else "(N, H, W) or (N, C, H, W)"
        X = inputs.checked(X, shapes, "X.reshape(1, -1) for one feature vector" if self._reads_vectors
                           else "X[None] for one image")
        if X.ndim == 2 and self._reads_vectors:
            X = X[:, None, None, :]
        elif X.ndim not in (3, 4):
            hint = f": {name} clusters images (a single image is X[None])" if X.ndim == 2 else ""
            raise ValueError(f"X must have shape {shapes}, got {X.ndim}-D data of shape {X.shape}{hint}")
        if X.ndim == 3:
            X = X[:, None]
        vector = self._reads_vectors and X.shape[2] == 1
        X = np.asarray(X, dtype=self._dtype) if vector else inputs.image_scale(X, self._dtype)
        shape = tuple(int(s) for s in X.shape[1:])
        if fitted:
            if shape != tuple(self.image_shape_):
                if vector and self.image_shape_[1] == 1:
                    raise ValueError(f"X has {shape[0] * shape[2]} features, but {name} is expecting "
                                     f"{self.n_features_in_} features as input")
                raise ValueError(f"X has image shape {shape}, the model was fitted on {tuple(self.image_shape_)}")
        elif vector and shape[2] < self._vector_min:
            raise ValueError(f"vectors of {shape[2]} features are too small for {name} "
                             f"(needs at least {self._vector_min})")
        elif not vector and min(shape[1:]) < self._min_size:
            raise ValueError(
                f"images of size {shape[1]}x{shape[2]} are too small for {name} "
                f"(needs at least {self._min_size}x{self._min_size})"
            )
        return X

    @staticmethod
    def _fingerprint(X: np.ndarray) -> dict:
        """Shape and SHA-256 of the whole (scaled) training data: a resume must see the same content."""
        h = hashlib.sha256(np.ascontiguousarray(X).data)
        return {"shape": list(X.shape), "sha256": h.hexdigest()}

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
        if N < 2:
            raise ValueError(f"X has 1 sample(s): {type(self).__name__} needs at least 2")
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
        # an overflow that matters surfaces as a non-finite loss or state (DivergenceError), not as a warning
        with np.errstate(over="ignore", invalid="ignore"):
            terms = self._epoch_terms(phase, X)
        self.phase_epoch_ += 1
        self.epoch_ += 1
        record = {"phase": phase.name, "epoch": self.epoch_, **terms}
        record["seconds"] = time.perf_counter() - t0
        if y is not None:
            labels = self._current_labels(X)
            if labels is not None:
                from nbclust.methods.metrics import ari, cluster_acc, nmi

                record.update(acc=cluster_acc(y, labels), nmi=nmi(y, labels), ari=ari(y, labels))
        self.history_.append(record)
        if self.verbose:
            parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()]
            print(f"[{type(self).__name__}] " + " ".join(parts), file=sys.stderr)
        if callback is not None:
            callback(self, record)

    def _epoch_terms(self, phase, X) -> dict:
        """One epoch of ``phase``: the loss terms averaged over the batches, then ``end_epoch``'s entries.
        DivergenceError at the first non-finite loss, parameter, optimiser buffer or centre."""
        self._set_mode(True)
        phase.begin_epoch(self, X)
        totals: dict[str, float] = {}
        N = X.shape[0]
        epoch = self.epoch_ + 1
        for idx in phase.batches(self, N):
            for m in self.modules_.values():
                m.zero_grad()
            for opt in self.optimizers_.values():
                opt.zero_grad()
            terms = phase.step(self, X, idx)
            if self.converged_:  # the step decided to stop before training on this batch
                break
            _check_finite("loss", terms.values(), epoch, phase.name)  # before the optimisers step on it
            for opt in self.optimizers_.values():
                opt.step()
                _check_finite("training state", opt.touched(), epoch, phase.name, self._backend.xp)
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(idx) / N
        extra = phase.end_epoch(self, X)
        if self.cluster_centers_ is not None:
            _check_finite("cluster centres", [np.asarray(self.cluster_centers_)], epoch, phase.name)
        return {**totals, **extra}

    # ------------------------------------------------------- training state
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

    def _check_meta(self, meta) -> dict:
        """Refuse a state of another class or other model hyperparameters; return the schedule-only ones
        that differ, ``{name: (saved, now)}`` (``Param(schedule=True)``: caps, patiences, thresholds)."""
        if meta.get("class") != type(self).__name__:
            raise ValueError(f"state is from method {meta.get('class')!r}, not {type(self).__name__}")
        mine, theirs = _jsonable(self.get_params()), meta["params"]
        diff = sorted(k for k in set(mine) | set(theirs)
                      if mine.get(k) != theirs.get(k) and k not in self._model_free_params)
        model = [k for k in diff if k not in self.hyperparameters.schedule]
        if model:
            raise ValueError(f"state has other hyperparameters: {', '.join(model)} differ")
        return {k: (theirs.get(k), mine.get(k)) for k in diff}

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
        changed = self._check_meta(meta)
        if meta.get("kind") != "training_state":
            raise ValueError("resume needs a training state (from training_state()), not a saved model")
        saved, mine = meta["data"], self._fingerprint_
        if saved != mine:
            if saved.get("shape") != mine["shape"]:
                raise ValueError(f"state was made on other data: shape {tuple(saved['shape'])}, "
                                 f"not {tuple(mine['shape'])}")
            raise ValueError(f"state was made on other data: the content differs (same shape {tuple(mine['shape'])})")
        if tuple(meta["image_shape"]) != tuple(self.image_shape_):
            raise ValueError("state was made for another image shape")
        self._load_model(arrays, meta)
        self._after_load()
        self.phase_, self.phase_epoch_, self.epoch_ = meta["phase"], meta["phase_epoch"], meta["epoch"]
        self.converged_ = meta["converged"]
        self.history_ = list(meta["history"])
        if changed:  # noted on the last epoch before the resume
            if not self.history_:
                self.history_.append({"phase": self.phase_, "epoch": self.epoch_})
            note = "; ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
            last = self.history_[-1]
            last["resumed"] = f"{last['resumed']}; {note}" if "resumed" in last else note
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
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")
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


# scikit-learn's estimator checks that fit (or transform) a 2-D (N, D) feature matrix
_FEATURE_MATRIX_CHECKS = (
    "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_dtype_object",
    "check_pipeline_consistency", "check_estimators_nan_inf", "check_estimators_pickle",
    "check_f_contiguous_array_estimator", "check_transformer_data_not_an_array", "check_transformer_general",
    "check_clustering", "check_methods_sample_order_invariance", "check_methods_subset_invariance",
    "check_fit2d_1sample", "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent",
    "check_fit_check_is_fitted", "check_n_features_in", "check_fit2d_predict1d",
)


def expected_failed_checks(est) -> dict:
    """``{check: reason}`` of the scikit-learn checks that cannot apply to ``est``, for
    ``check_estimator(est, expected_failed_checks=...)`` and ``parametrize_with_checks``.

    The estimators that cluster feature vectors (DCTL, the baselines) pass every check.  Those
    that convolve images (DCAE, DBC, FCAEKMeans, DEPICT, DCEC) refuse a 2-D (N, D) matrix, which
    is what these checks fit, and pass the others (parameters, cloning, tags, errors before fit,
    NaN, sparse, complex and empty input); the same contract on images is tested in
    ``tests/test_estimator_api.py``.
    """
    if not isinstance(est, DeepClusterer) or est._reads_vectors:
        return {}
    side = est._min_size
    reason = (f"fits a 2-D (N, D) feature matrix: {type(est).__name__} convolves images (N, H, W) of at least "
              f"{side}x{side} pixels and refuses such data")
    return dict.fromkeys(_FEATURE_MATRIX_CHECKS, reason)


class DivergenceError(FloatingPointError):
    """Training diverged: a loss term, a parameter or a centre became NaN or inf (usually: too large a step).

    The fit stops at the first one (a loss is checked before the optimisers step on it, the
    parameters after every step, the centres after every epoch), before the failing epoch reaches
    ``callback``: the last state a callback received is the last good epoch's.  ``epoch`` (counted
    over the whole fit, as in ``history_``) and ``phase`` say where.
    """

    def __init__(self, message: str, epoch: int | None = None, phase: str | None = None):
        super().__init__(message)
        self.epoch, self.phase = epoch, phase

    def __reduce__(self):
        return type(self), (str(self), self.epoch, self.phase)


def _check_finite(what: str, values, epoch: int, phase: str, xp=np) -> None:
    """DivergenceError ``"{what} became NaN in epoch E of phase P; lower --lr"`` (or inf) unless every
    value (numbers, or arrays of the module ``xp``) is finite."""
    for v in values:
        if isinstance(v, (int, float, np.number)):
            if math.isfinite(v):
                continue
            kind = "NaN" if math.isnan(v) else "inf"
        elif v.dtype.kind != "f" or bool(xp.isfinite(v).all()):
            continue
        else:
            kind = "NaN" if bool(xp.isnan(v).any()) else "inf"
        raise DivergenceError(f"{what} became {kind} in epoch {epoch} of phase {phase}; lower --lr", epoch, phase)


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
        from nbclust.engine.nn import Parameter

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

