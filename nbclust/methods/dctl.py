"""DCTL: deep convolutional transform learning with an embedded k-means loss (seed 003).

Goel, Majumdar, Chouzenoux, Chierchia, "Deep convolutional K-means clustering",
ICIP 2022.  Objective (eq 5), with the paper's Z (codes as columns) written
row-wise here (``Z`` is (N, d), one row per sample), ``A = T2 . (T1 . X)`` the
flattened transform output and ``H`` the one-hot cluster indicators::

    ||A - Z||_F^2 + psi(Z) + lam * sum_i (||T_i||_F^2 - log det T_i)
                  + mu * ||Z - Z H^T (H H^T)^-1 H||_F^2

solved by alternating P1 (eq 6: Adam on T1, T2, Z with H fixed) and P2 (eq 7:
k-means for H).  The paper leaves the scaling, the k-means schedule and the
final labels open; the authors' group released code for the same model
(DeConFCluster, github.com/pooja290992/DeConFCluster, commit 2010065,
``codes/Deconf_3L_kmeans_clustering-UCI_Mfeat_Final.py``, cited below as
"Mfeat.py"; its piecemeal twin ``..._Final_piece_meal.py``; and DeConFuse,
github.com/pooja290992/DeConFuse, commit 4421c21, ``codes/DeConFuse.py``).
The defaults follow that code; the paper's literal reading stays available:

Input (``reading``)
    The paper clusters DSIFT features reduced by PCA to 300 dimensions (Sec. 4)
    with "3 filters of sizes 9x9 ... max-pooling kernel 2x2"; on a 300-d vector
    that is ambiguous.  A vector input arrives as (N, D), (N, 1, D) or (N, C, 1, D)
    (a flat matrix is read as the height-1 map (N, 1, 1, D), what ``python -m
    nbclust.fit --features dsift-pca`` hands an image estimator) and is read as
    - ``"1d"`` (default): a 1-D signal, convolved along the vector with kernel
      9, as the released code convolves its feature vectors (Mfeat.py l. 97-106
      ``nn.Conv1d(..., kernel_size=ksize)``, l. 136-158 ``F.conv1d(...,
      padding=ksize//2)``; DeConFuse.py l. 74-78, 94-102).  Among Mfeat's six
      views is one of Karhunen-Loeve (PCA) coefficients, convolved like the
      others: 1-D filters along PCA coefficients are the group's own practice.
      Realised as conv2d with kernel (1, 9) (and max-pool (1, 2) where pooled)
      on the (N, C, 1, D) map (no new op); T2's 1 x 9 filters over 3 channels are
      stored as (3, 1, 3, 9) and run as a 3 x 9 convolution of the (N, 1, 3, W)
      map without vertical padding, the same sums through the faster kernel.
    - ``"2d"``: the vector reshaped to an h x w map (h the largest divisor of D
      with h <= sqrt(D): 300 -> 15 x 20), then 9 x 9 filters and 2 x 2 pooling
      as for images (the paper's sizes taken literally).
    Images (height > 1) always get the 2-D transform (``reading`` is unused).

Input scaling (``input_scale``, feature vectors only)
    - ``"minmax"`` (default): each feature mapped to [0, 1] with the minimum and
      range of the training data (``input_min_``, ``input_range_``; reused by
      ``transform`` / ``predict``; a constant feature maps to 0).  Mfeat.py
      normalises every view before the transform (l. 757-758
      ``X[vw_idx] = normalizeData(X[vw_idx].T)``, an (N, d) matrix) with a helper
      that is in none of the group's releases (DeConFCluster, DeConFuse, ConFuse,
      DeConDFFuse, all commits).  Its kind follows from the losses the released
      notebooks print: rerunning the released code (seed 42, its configuration),
      the epoch losses under [0, 1] min-max scaling (Mfeat piecemeal 340 / 280 /
      270 for epochs 1-3, the notebook's 335 / 282 / 273) match; z-scores
      (409-460 / 307-316 / 288-290), per-sample L2 (261 / 258) and no scaling
      (5e7 in the first batch) do not.  Per-feature rather than per-sample
      min-max: the group's own scaler (DeConFuse ``codes/data_processing.py`` at
      43dcb07, l. 200-204, ``mode='myMaxMin'``).  The paper says nothing; the
      first author's own clustering code feeds its k-means baseline and its
      model the same unscaled data (DeepClustering ``datasets.py``, DDLK.py).
    - ``"none"``: the features as given.
    Images (height > 1) are never rescaled: they are already in [0, 1].  The
    k-means baseline takes the same option (``KMeansPixels(input_scale=...)``,
    ``--method kmeans --param input_scale=minmax``; :mod:`nbclust.methods.scaling`), so
    that DCTL and k-means can be compared on one input.

Transform (Fig. 1)
    T1 = ``n_filters`` filters ("same" zero padding, no bias: eq 1's ``t_m * x``
    has none; the released code also calls ``F.conv1d`` without its bias)
    -> max-pool -> SELU -> T2 (``n_filters`` input channels) -> max-pool ->
    flatten; ``n_layers=1`` keeps T1 -> max-pool; the output layer has no
    activation (as Mfeat.py's last conv).  ``pool="auto"`` (default) never pools
    a feature vector, as the released code on its feature vectors (Mfeat.py
    ``model_configs``: ``maxpool_list = [(False, False, False)]``; max-pooling
    neighbouring PCA coefficients keeps the larger of two unrelated numbers), and
    pools an image after a layer while the pooled side stays >= 7: 28/32-pixel
    images pool twice as in Fig. 1, 8 x 8 digits keep their 8 x 8 maps;
    ``"always"`` (the paper's, vectors too: pooled along the vector for ``"1d"``),
    ``"never"``.  Filter counts and sizes are the paper's (Sec. 4: 3 filters of
    size 9 per layer, pooling 2); Mfeat.py's configuration uses 2, 4, 8 filters
    of sizes 5, 3, 3 and no pooling (l. 652, 655), batch 128, 40 epochs (l.
    647-648).

Initial filters (``init``)
    - ``"torch"`` (default): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C kh kw,
      the draw of the released code (Mfeat.py ``init_T``: the weight of a fresh
      ``nn.Conv1d``, torch's kaiming_uniform with a = sqrt(5)); the group's
      released transform learning code starts from a random transform too
      (github.com/maggujyoti, ``GreedyDeepTransformLearning``,
      ``RobustTransformLearning``: ``rng(1); T = randn(numOfAtoms, size(X,1))``).
      The paper says nothing, so the code decides.  A random bank mixes
      neighbouring coefficients with random weights: the start's partition is
      not the input's.
    - ``"impulse"``: filter f of a bank with C input channels is a unit impulse
      on channel f mod C at the (f div C)-th nearest tap to the centre, times
      1/sqrt(2) (:func:`initial_filters`).  For T1 on a vector or a grey image
      that is the centre, one tap right and one left: T1 x = (x, x shifted by
      +1, x shifted by -1) / sqrt(2), so ||T1 x - T1 y||^2 = (3/2) ||x - y||^2 up
      to the samples a shift pushes into the zero padding: unpooled (vectors,
      8 x 8 digits), k-means on the start's outputs is k-means on the input (a
      max-pool keeps the larger neighbour).  T2 (3 filters over 3 channels)
      starts as the identity / sqrt(2), and SELU is linear on non-negative
      inputs (min-max scaled vectors, images), so the 2-layer start is a scaled
      tight frame as well (on signed input, ``input_scale="none"``, SELU bends
      the negative half).  Every singular value of every bank is 1/sqrt(2), the
      minimiser of s^2 - log s: the regulariser starts at its minimum, and on
      non-negative input Z = max(T(X), 0) = T(X) zeroes the data term too, so T
      gets no gradient until the k-means term has moved Z (the first joint
      epoch leaves T as it is; piecemeal, without that term, never moves it).
      Within the paper's model (eq 5 constrains the filters only through the
      regulariser), and the start transform learning itself uses (the penalty
      is borrowed from [15], Sec. 2.2; Ravishankar and Bresler's released demos
      start from an orthonormal transform, ``W0=kron(dctmtx(sqrt(n)),
      dctmtx(sqrt(n))); %2D DCT initialization for the transform``, of which a
      bank of shifted impulses is the convolutional counterpart); the first
      joint partition is then k-means of the input, as the first author's
      joint clustering code starts H (github.com/anuraggoel70/DeepClustering,
      DDLK.py: "H initialization", ``KMeans(n_clusters,
      init="k-means++").fit_predict(x)``).  Needs C <= F <= C kh kw.

Loss scaling (``loss_scale``)
    - ``"code"`` (default): each mini-batch B (b rows, d features) minimises
      ``mean_{B x d} (A_B - Z_B)^2 + mu * mean_{B x d} (Z_B - Z_B P_B)^2
      + lam * sum_i (||T_i||_F^2 - sum log sigma(T_i))``: the data and k-means
      terms are element means (Mfeat.py l. 315-331 and 373-385 ``Y.pow(2).mean()``,
      l. 411-416 ``loss_kmeans`` ``.mean()``; DeConFuse.py l. 202, 228) and the
      regulariser is added unscaled to every batch loss (Mfeat.py l. 419-436
      ``computeLoss``: ``conv_loss_frobenius() * mu + conv_loss_logdet() * lam``;
      DeConFuse.py l. 248-256).  Why it matters: Adam is invariant to the scale
      of the whole loss, not to the relative scale of its terms; with sums the
      data term of a batch is ~b d times its mean while the regulariser is O(1),
      so eq 6's lam = 0.001 log-det term had no effect (measured on Yale B,
      2-layer: fidelity 2.3e4 vs regulariser 6e-4 per epoch) and nothing
      prevented the scale degeneracy (shrinking T1, T2 shrinks A, Z and both
      quadratic terms) that the log-det term exists to prevent (Sec. 2.2).
      The code uses one lam for both parts of eq 5's regulariser; Mfeat.py
      weights ||T||^2 by a separate 1e-4 (its ``mean``) and log det by lam =
      0.01, with km_reg = 0.8 for the k-means term (l. 649); we keep the
      paper's single lam = 0.001 and mu = 1 (Sec. 4).
    - ``"paper"``: eq 6 literally, ``||A_B - Z_B||_F^2 + mu ||Z_B - Z_B P_B||_F^2
      + (b / N) lam R(T)`` (sums; R scaled by b/N so that one epoch's batch
      objectives add up to eq 6, exact for ``batch_size >= N``).

    The log det (eq 2, 4, 5) is taken per layer of the layer's filter bank
    (F, C, kh, kw) as the matrix M = F x (C kh kw) (the paper stacks the filters
    as columns of T; T^T = M); for a non-square M "log det T" is sum_i log
    sigma_i(M) = 1/2 log det(M M^T) (op ``neg_logdet``), as DeConFuse.py l.
    207-214 (``T.view(T.shape[0], -1)``, ``torch.svd``, ``-s.log().sum()``).
    (Mfeat.py l. 335-354 stacks the views' banks on axis 1 and loops over axis
    0, so for one view it takes -sum_m log ||t_m||, each filter alone: a side
    effect of its multi-view stacking, not followed here.)  For T2 each filter
    spans all ``n_filters`` input channels.  Eq 5 writes sum_{i=1..3} for a
    2-layer network; the sum runs over the ``n_layers`` banks.

    ``standardize`` (default False; not in the paper nor the code) ends the
    transform with a per-feature standardisation of A (a batch norm without
    trainable scale/shift: batch statistics in the P1 steps, full-data
    statistics, refreshed after every epoch, for Z's initialisation, the
    assignments and prediction).  It was added to make the sum-scaled loss
    usable; it removes the scale degeneracy the log-det term handles, so it is
    off now that the loss is scaled as in the code.

k-means step (``assign``): which features and how often H is recomputed
    - ``"batch"`` (default): the released code runs a fresh k-means on the
      current transform outputs of every batch at every step (Mfeat.py l.
      289-296, in ``forward``: ``kmeans(X=self.tl_features, ...)``, then
      ``hterm = H^T (H H^T)^+ H``).  Here: Lloyd's algorithm (k-means++ seeding
      from the fit's Generator, to convergence of the labels) on the batch's
      embedding, min(K, b) clusters; the k-means term uses those labels.
      (Mfeat.py clusters the rows of its (atoms x b) matrix, i.e. the features;
      we cluster the samples, as eq 7 does.)
    - ``"epoch"``: after every epoch, k-means on the full data's current
      embedding, warm started from the previous centres (n_init ``n_init`` at
      the start of the joint phase).
    - ``"codes"``: eq 7 literally, k-means on Z after every epoch, warm started
      (the previous nbclust reading; in joint mode it locked in the partition
      of the random initial filters: the k-means term shrinks Z around its
      initial clusters and A follows Z).
    The k-means term is eq 5's ``||Z - Z P||^2`` (op ``kmeans_subspace``, P =
    H^T (H H^T)^-1 H the projection onto cluster-constant rows).  Mfeat.py l.
    411-416 uses ``||Z - P A||^2`` instead; since P is an orthogonal projection,
    ``||Z - P A||^2 = ||Z - P Z||^2 + ||P (Z - A)||^2``, i.e. eq 5's term plus
    an extra weight on part of the data term, so the difference is a
    reweighting of the fidelity, not a different clustering loss.
    After every joint epoch the full-data partition is also tracked by a
    k-means on the embedding after the epoch's steps (Z for ``"codes"``), warm
    started from the previous centres; the history records its centre shift
    ``||C_t - C_(t-1)||_F / ||C_0||_F`` (``center_shift``), the displacement since
    the first partition ``||C_t - C_0||_F / ||C_0||_F`` (``center_drift``) and
    the fraction of samples whose label changed (``moved``).

Stopping rule (``tol``; the paper's "cluster centres do not vary significantly
in subsequent iterations", Sec. 3)
    The joint phase stops after epoch t when ``center_shift < tol *
    center_drift``: the epoch moved the centres by less than a fraction ``tol``
    of all they have moved since the first partition C_0.  At t = 1 the two are
    equal, and while the transform has not changed the centres at all both are
    0, so the rule cannot fire before training has moved them; a steady drift
    stops after about 1/tol epochs, a settling one sooner; ``epochs`` bounds the
    run.  (Compared with ``||C_old||`` instead, the shift of an epoch is set by
    the step size and by how many steps the epoch has: with N <= batch_size an
    epoch is one Adam step and any absolute tolerance met by one step stops
    an untrained transform.)

Final labels (``final``)
    - ``"kmeans"`` (default): after training, a fresh k-means (k-means++,
      ``n_init`` restarts; default 10, sklearn's default when the code was
      released) on the final transform outputs of all samples (Mfeat.py l.
      576-592: ``Z_train = model(S_train)`` then ``KMeans(n_clusters,
      init="k-means++").fit_predict(Z_train)``; the same in the piecemeal
      file).  The embedding (``transform``) is A = T(x).
    - ``"codes"``: the embedding is the psi-feasible code max(T(x), 0) and the
      labels the nearest P2 centre of Z (joint), or of one k-means on the learnt
      Z (piecemeal): the previous nbclust reading.
    Either way ``predict(X) == labels_`` (nearest centre).

Codes Z: initialised as max(T(X), 0) of the initial filters (the code draws
Z ~ N(0, 1), Mfeat.py l. 229, and clamps it); ``psi`` is the non-negativity
constraint, Z <- max(Z, 0) after every step (Mfeat.py l. 310-312 ``Z_step``).
Z is updated only on its batch rows (the code's ``self.Z[:, 0:b]`` always
takes the first b columns, l. 381, which pairs codes with other samples'
outputs; not followed), by Adam with a per-row step count (like torch's
SparseAdam) and step ``z_lr`` (default 0.1; each row gets one step per epoch).

Filters: ``nbclust.engine.optim.Adam`` (the paper's P1 solver) with ``lr=1e-4``, the
released clustering code's rate (Mfeat.py l. 650 ``learning_rate_list =
[1e-4]``; there with SGD, l. 495, whose steps on the mean-scaled loss are far
smaller still, so its transform stays close to the random initial one).
DeConFuse.py trains with Adam at 1e-3 (l. 336, 412).  At 1e-3 the joint
objective degrades the features: the log-det fixes the filters' singular
values (they settle near 1/sqrt(2), the minimiser of sigma^2 - log sigma) but
not their direction, and the data and k-means terms then favour directions in
which the outputs have little within-cluster scatter, i.e. little variance
(measured at both rates on digits and Yale B: ``docs/results.md``).

Algorithm, in the order of the stages below (``DCTL.phases``):

1. Z from the initial filters: max(T(X), 0).
2. ``pretrain``: ``pretrain_epochs`` epochs of P1 without the k-means term (mu = 0).
   The piecemeal ablation (``joint=False``, Table 2 "Piece"; the ``_piece_meal.py``
   files drop the k-means term, km_reg = 0) runs ``pretrain_epochs + epochs`` of them
   and no joint phase.
3. ``cluster`` (joint): the first partition, then each epoch one pass of P1 mini-batch
   steps (eq 6, H from ``assign``) followed by the tracking k-means (P2, eq 7; for
   ``"epoch"``/``"codes"`` the new H); stop when the centres settle (``tol``).
4. The final clustering (``final``).

Measured results (digits, Extended Yale B with DSIFT-PCA features): ``docs/results.md``.
"""


from __future__ import annotations

import math

import numpy as np

from nbclust.engine.optable import OPS
from nbclust.methods.base import DeepClusterer
from nbclust.methods.clustering import batch_kmeans, kmeans, single_threaded
from nbclust.methods.params import COMMON_PARAMS, Attr, Param, Params
from nbclust.methods.phases import Phase, Step
from nbclust.methods.scaling import minmax_apply, minmax_statistics

DCTL_PARAMS = COMMON_PARAMS + Params(
    Param("lam", float, 0.001, "weight lambda of the filter regulariser ||T||_F^2 - log det T (eq 5)", ge=0),
    Param("mu", float, 1.0, "weight mu of the k-means term (eq 5)", ge=0),
    Param("n_layers", int, 2, "transform layers (Table 2)", ge=1, le=2),
    Param("joint", bool, True, "learn transform and clustering jointly (false: Table 2's piecemeal ablation)"),
    Param("n_filters", int, 3, "filters per layer (Sec. 4)", ge=1),
    Param("kernel_size", int, 9, "filter size, odd: 'same' padding (Sec. 4)", ge=1),
    Param("reading", str, "1d", "how a feature-vector input (N, 1, 1, D) is convolved: along the vector with "
          "1 x k filters, as the released Conv1d (1d), or reshaped to an h x w map (2d)", choices=("1d", "2d")),
    Param("pool", str, "auto", "max-pool after a layer: images while the pooled side stays >= 7, feature vectors "
          "never, as the released code (auto); always (Fig. 1); never", choices=("auto", "always", "never"),
          paper="always"),
    Param("init", str, "torch", "initial filters: torch's default conv draw, as the released code (torch), or "
          "shifted unit impulses scaled to the regulariser's minimiser, a tight frame that keeps the input's "
          "distances (impulse)", choices=("torch", "impulse")),
    Param("loss_scale", str, "code", "loss scaling: mean data and k-means terms, regulariser unscaled per batch "
          "(code, the released code) or eq 6's sums, regulariser scaled by b/N (paper)",
          choices=("code", "paper"), paper="paper"),
    Param("input_scale", str, "minmax", "scaling of a feature-vector input: each feature to [0, 1] with the "
          "training data's min and range, as the authors' code normalises its input (minmax), or none; images "
          "are never rescaled", choices=("minmax", "none")),
    Param("standardize", bool, False, "end the transform with a per-feature standardisation (in neither the "
          "paper nor the code)"),
    Param("assign", str, "batch", "k-means of the joint phase: fresh on each batch's features (batch, the "
          "released code), on all features per epoch (epoch) or on Z (codes, eq 7)",
          choices=("batch", "epoch", "codes"), paper="codes"),
    Param("final", str, "kmeans", "final labels: fresh k-means on the final transform outputs (kmeans) or the "
          "P2 centres of the clipped codes (codes)", choices=("kmeans", "codes")),
    Param("n_init", int, 10, "restarts of the final k-means (and of the first joint partition unless "
          "assign='batch')", ge=1),
    Param("pretrain_epochs", int, 0, "epochs of P1 without the k-means term (mu = 0) before the joint phase", ge=0,
          schedule=True),
    Param("epochs", int, 30, "joint epochs (P1 then P2 each)", ge=0, schedule=True),
    Param("batch_size", int, 256, "mini-batch size", ge=1),
    Param("lr", float, 1e-4, "Adam step size of the filters (the released code's rate)", gt=0),
    Param("z_lr", float, 0.1, "Adam step size of the codes Z (None: lr)", gt=0, none=True),
    Param("tol", float, 0.01, "stop when an epoch moves the centres by less than this fraction of their "
          "displacement since the joint phase began (the paper's rule)", ge=0, lt=1, schedule=True),
)


def vector_map_shape(d: int) -> tuple[int, int]:
    """The h x w map of a d-vector for ``reading="2d"``: h the largest divisor of d with h <= sqrt(d)."""
    h = max(k for k in range(1, math.isqrt(d) + 1) if d % k == 0)
    return h, d // h


def dctl_layout(image_shape, *, reading="1d", n_layers=2, kernel_size=9, pool="auto") -> dict:
    """The transform's geometry for an input of shape (C, H, W); H == 1 is a vector of W features.

    Returns ``kernel`` (kh, kw), ``pool_size`` (ph, pw), ``pool`` (per layer, whether it
    max-pools), ``reshape`` (None or the (C, h, w) map a vector is reshaped to), ``out``
    (the output map's (h, w)) and ``vector`` (bool).
    """
    C, H, W = (int(s) for s in image_shape)
    vector = H == 1
    k = int(kernel_size)
    reshape = None
    if vector and reading == "1d":
        kernel, window, side, shape = (1, k), (1, 2), W, [1, W]
    else:
        if vector:  # reading "2d"
            h, w = vector_map_shape(W)
            if h < 2:
                raise ValueError(f"reading='2d': {W} features have no 2-D map (prime); use reading='1d'")
            reshape, H, W = (C, h, w), h, w
        kernel, window, side, shape = (k, k), (2, 2), min(H, W), [H, W]
    flags = []
    for _ in range(n_layers):
        flags.append(pool == "always" or (pool == "auto" and not vector and side // 2 >= 7))
        if flags[-1]:
            side //= 2
            shape = [s // p for s, p in zip(shape, window)]
    if min(shape) < 1:
        raise ValueError(f"input of shape {tuple(image_shape)} is too small for {sum(flags)} max-pools")
    return {"kernel": kernel, "pool_size": window, "pool": tuple(flags), "reshape": reshape,
            "out": tuple(shape), "vector": vector}


def impulse_offsets(kh: int, kw: int) -> list[tuple[int, int]]:
    """The taps of a kh x kw kernel as offsets from its centre, nearest first (ties: row, then column)."""
    taps = [(i - kh // 2, j - kw // 2) for i in range(kh) for j in range(kw)]
    return sorted(taps, key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0] != 0, -o[1], -o[0]))


def initial_filters(shape, init: str, rng: np.random.Generator) -> np.ndarray:
    """A filter bank of ``shape`` (F, C, kh, kw), float64.

    - ``"impulse"``: filter f is a unit impulse on input channel ``f % C`` at the ``f // C``-th tap
      of :func:`impulse_offsets` (centre, then the nearest shifts), times 1/sqrt(2).  The rows of
      M = F x (C kh kw) are orthogonal, M M^T = I/2: every singular value is 1/sqrt(2), the minimiser
      of s^2 - log s, so the regulariser's gradient is zero.  For F = C * n the bank maps x to n
      shifted copies of every channel, a tight frame: ||T(x) - T(y)||^2 = (n/2) ||x - y||^2 but for
      the samples a shift pushes past the zero padding, so k-means on T(X) starts as k-means on X.
    - ``"torch"``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C kh kw (torch's default for
      ``nn.Conv1d``/``Conv2d``, kaiming_uniform with a = sqrt(5)), the released code's start.
    """
    F, C, kh, kw = shape
    if init == "torch":
        bound = 1.0 / math.sqrt(C * kh * kw)
        return rng.uniform(-bound, bound, size=shape)
    if F < C or -(-F // C) > kh * kw:
        raise ValueError(f"init='impulse' needs between {C} and {C * kh * kw} filters for {C} input channels "
                         f"and {kh}x{kw} kernels, got {F}: use init='torch'")
    w = np.zeros(shape)
    offsets = impulse_offsets(kh, kw)
    for f in range(F):
        di, dj = offsets[f // C]
        w[f, f % C, kh // 2 + di, kw // 2 + dj] = 1.0 / math.sqrt(2.0)
    return w


class DCTLTransform:
    """The deep convolutional transform and the eq-(6) batch objective with its gradients.

    ``kernel_size``: an int or (kh, kw) (a 1 x k kernel on more than one input channel is
    stored folded, as (F, 1, C, k): see the comment in the constructor); ``pool``: per layer,
    whether a max-pool of window
    ``pool_size`` follows it; ``reshape``: None or the (C, h, w) map the input is reshaped to
    first (``reading="2d"``); ``standardize``: None, or the feature count d of a final batch
    norm (its weight/bias are not trained).
    """

    def __init__(self, in_channels: int, *, n_layers=2, n_filters=3, kernel_size=9, pool=(True, True),
                 pool_size=2, reshape=None, standardize=None, init="torch", backend="cpu", dtype=np.float32,
                 rng=None):
        from nbclust.engine import nn

        rng = np.random.default_rng(rng)
        kw = dict(backend=backend, dtype=dtype, rng=rng)
        kh, kwd = (kernel_size, kernel_size) if np.isscalar(kernel_size) else tuple(kernel_size)
        layers = [nn.Reshape(tuple(reshape), **kw)] if reshape is not None else []
        for i in range(n_layers):
            c_in = in_channels if i == 0 else n_filters
            if i:
                layers.append(nn.SELU(**kw))
            conv = nn.Conv2d(c_in, n_filters, (kh, kwd), padding="same", bias=False, init="zeros", **kw)
            conv.weight.data[...] = conv._backend.asarray(initial_filters(conv.weight.data.shape, init, rng), dtype)
            if kh == 1 and c_in > 1:
                # A 1 x k convolution over c_in channels of an (N, c_in, 1, W) map is the same sum as a
                # c_in x k convolution, without vertical padding, of the (N, 1, c_in, W) map: same
                # filter matrix (F, c_in k) in the same order, but the conv kernels' fast direct
                # path instead of im2col (layer 2 of reading "1d": ~15x faster, fwd + bwd).
                folded = nn.Conv2d(1, n_filters, (c_in, kwd), padding=(0, kwd // 2), bias=False,
                                   init="zeros", **kw)
                folded.weight.data[...] = conv.weight.data.reshape(folded.weight.data.shape)
                layers += [nn.Reshape((1, c_in, -1), **kw), folded]
            else:
                layers.append(conv)
            if pool[i]:
                layers.append(nn.MaxPool2d(pool_size, **kw))
        layers.append(nn.Flatten(**kw))
        self.norm = None
        if standardize is not None:  # the feature count d
            self.norm = nn.BatchNorm1d(standardize, **kw)  # its affine weight/bias stay 1/0 (not trained)
            layers.append(self.norm)
        self.net = nn.Sequential(*layers)
        self.filters = [m.weight for m in layers if isinstance(m, nn.Conv2d)]  # T1 (, T2)
        self.b = self.net._backend

    def forward(self, x):
        return self.net.forward(x)

    def set_feature_stats(self, chunks):
        """Set the eval statistics of the standardisation to the (biased) mean and variance
        of the un-normalised features of ``chunks`` (an iterable of input batches)."""
        xp = self.b.xp
        feats = []
        for h in chunks:
            for layer in self.net.layers[:-1]:
                h = layer.forward(h)
            feats.append(h)
        f = xp.concatenate(feats)
        self.norm._buffers["running_mean"] = f.mean(0)
        self.norm._buffers["running_var"] = f.var(0)

    def regularizer(self):
        """``sum_i (||T_i||_F^2 - sum log sigma(T_i))`` and its gradients, one per filter bank."""
        reg, grads = 0.0, []
        for p in self.filters:
            fro, fro_ctx = OPS.frobenius(self.b, p.data)
            nld, nld_ctx = OPS.neg_logdet(self.b, p.data)
            reg += float(fro) + float(nld)
            grads.append(fro_ctx.backward()[0] + nld_ctx.backward()[0])
        return reg, grads

    def batch_loss(self, x, z, labels, *, lam, mu, n_clusters, reg_scale=1.0, mean=False):
        """Terms of the batch objective; accumulates the T gradients and returns dL/dz.

        ``mean=False`` (the paper's sums): ``L = ||A - z||^2 + mu ||z - z P||^2
        + reg_scale * lam * R(T)``; ``mean=True`` (the released code): the two quadratic
        terms are means over the b x d entries.  ``labels``: None (no k-means term; also
        ``mu=0``), the cluster index of each row, or a callable mapping the batch's transform
        output A (backend array, before any gradient step) to those indices.
        """
        a = self.net.forward(x)
        fid, fid_ctx = (OPS.mse if mean else OPS.fidelity)(self.b, a, z)
        g_a, g_z = fid_ctx.backward()
        self.net.backward(g_a, input_grad=False)
        terms = {"fidelity": float(fid)}
        reg, g_reg = self.regularizer()
        for p, g in zip(self.filters, g_reg):
            p.grad += (reg_scale * lam) * g
        terms["reg"] = reg_scale * lam * reg
        if labels is not None and mu > 0:
            if callable(labels):
                labels = labels(a)
            km, km_ctx = OPS.kmeans_subspace(self.b, z, labels, n_clusters=n_clusters)
            w = mu / z.size if mean else mu
            g_z = g_z + w * km_ctx.backward()[0]
            terms["kmeans"] = w * float(km)
        terms["loss"] = sum(terms.values())
        return terms, g_z



# ------------------------------------------------------------------ the algorithm
class CodesInit(Step):
    """1. Z = max(T(X), 0) of the initial filters (psi: non-negative codes), and Z's optimiser."""

    name = "codes"

    def run(self, est, X):
        est._set_feature_stats(X)
        Z = np.maximum(est._transform_all(X), 0.0)
        est.codes_ = est._backend.asarray(Z, dtype=est._dtype)
        est._after_load()


class TransformLearning(Phase):
    """2. P1 without the k-means term (mu = 0): a warm-up, or the whole piecemeal ablation."""

    name = "pretrain"

    def budget(self, est):
        return est.pretrain_epochs + (0 if est.joint else est.epochs)

    def optimizers(self, est):
        return est._p1_optimizers()

    def step(self, est, X, idx):
        return est._p1_step(X, idx, None, 0.0)

    def end_epoch(self, est, X):
        est._set_feature_stats(X)
        return {}


class JointClustering(Phase):
    """3. Eqs 6-7 alternated: P1 (Adam on T and Z, H fixed) over the mini-batches, then P2 (k-means for H)."""

    name = "cluster"
    epochs = "epochs"

    def active(self, est):
        return bool(est.joint)

    def begin(self, est, X):  # the first partition (tracked only, for assign="batch"), C_0 of the stopping rule
        km = est._kmeans(est._tracked_features(X), n_init=1 if est.assign == "batch" else est.n_init)
        est.cluster_centers_ = est.initial_centers_ = km.cluster_centers_
        est.code_labels_ = km.labels_.astype(np.int64)

    def optimizers(self, est):
        return est._p1_optimizers()

    def step(self, est, X, idx):
        if est.assign != "batch":
            return est._p1_step(X, idx, est._backend.asarray(est.code_labels_[idx], dtype=np.int64), est.mu)

        def labels(a):  # a fresh k-means on the batch's current embedding (Mfeat.py l. 289)
            e = est._backend.to_numpy(a if est.final == "kmeans" else est._backend.xp.maximum(a, 0))
            with single_threaded():  # small matrices: BLAS threads only spin
                lab = batch_kmeans(e, est.n_clusters, est._rng)
            return est._backend.asarray(lab, dtype=np.int64)

        return est._p1_step(X, idx, labels, est.mu)

    def end_epoch(self, est, X):  # P2, eq (7), on the full data after the epoch's steps; the stopping rule
        est._set_feature_stats(X)
        old = est.cluster_centers_
        km = kmeans(est._tracked_features(X), est.n_clusters, est._seed(), n_init=1, init=old)  # warm start
        moved = float(np.mean(km.labels_ != est.code_labels_))
        est.cluster_centers_ = km.cluster_centers_
        est.code_labels_ = km.labels_.astype(np.int64)
        scale = max(np.linalg.norm(est.initial_centers_), 1e-12)
        shift = float(np.linalg.norm(km.cluster_centers_ - old) / scale)
        drift = float(np.linalg.norm(km.cluster_centers_ - est.initial_centers_) / scale)
        est.converged_ = shift < est.tol * drift
        return {"center_shift": shift, "center_drift": drift, "moved": moved}


class FinalClustering(Step):
    """4. The labels: a fresh k-means on the final transform outputs (Mfeat.py l. 583-592), or from Z."""

    name = "final"

    def run(self, est, X):
        if est.final == "kmeans":
            km = est._kmeans(est._embed_all(X), n_init=est.n_init)
        elif not est.joint:  # final="codes", piecemeal: k-means once on the learnt codes
            km = est._kmeans(est._backend.to_numpy(est.codes_), n_init=est.n_init)
            est.code_labels_ = km.labels_.astype(np.int64)
        else:  # final="codes", joint: the last P2 centres of Z
            return
        est.cluster_centers_ = km.cluster_centers_


class DCTL(DeepClusterer):
    """Deep convolutional transform learning + k-means (Goel et al., ICIP 2022); see the module doc.

    Accepts images (N, H, W) / (N, C, H, W) and feature vectors (N, D) / (N, 1, D) / (N, C, 1, D)
    (e.g. DSIFT + PCA(300), the paper's input).
    """

    hyperparameters = DCTL_PARAMS
    attributes = (
        Attr("codes_", "array of shape (N, d)", "the learnt codes Z (backend array)", state="array"),
        Attr("code_labels_", "ndarray of shape (N,)", "the last tracked full-data partition (P2)", state="array"),
        Attr("initial_centers_", "ndarray of shape (K, d)", "the centres of the first joint partition (C_0 of the "
             "stopping rule)", state="array"),
        Attr("transform_", "DCTLTransform", "the transform T and its batch objective"),
        Attr("input_min_", "ndarray or None", "per-feature minimum of the training vectors (input_scale='minmax')",
             state="array"),
        Attr("input_range_", "ndarray or None", "per-feature range of the training vectors (1 where constant)",
             state="array"),
    )
    phases = (CodesInit(), TransformLearning(), JointClustering(), FinalClustering())
    _reads_vectors = True
    _min_size = 4  # image side (pool="always" pools twice)

    # ------------------------------------------------------------ input
    @property
    def _vector_min(self):
        """Features of a vector input: 4 for pool="always" (two 2-wide max-pools), else 1."""
        return 4 if self.pool == "always" else 1

    def _check_X(self, X, *, fitted=False):
        """Images as in the base; feature vectors as (N, D), (N, 1, D) or (N, C, 1, D) (height-1 maps;
        ``reading`` decides how the transform reads them), min-max scaled (``input_scale``)."""
        X = super()._check_X(X, fitted=fitted)
        vector = X.shape[2] == 1
        if not vector or self.input_scale == "none":
            return X
        if not fitted:  # min-max statistics of the training data (module docstring, "Input scaling")
            self.input_min_, self.input_range_ = minmax_statistics(X)
        elif getattr(self, "input_min_", None) is None:
            raise ValueError("this model has no input scaling statistics (saved before input_scale existed?)")
        return minmax_apply(X, self.input_min_, self.input_range_)

    def _init_fit_state(self):
        kept = getattr(self, "input_min_", None), getattr(self, "input_range_", None)  # from _check_X, just before
        super()._init_fit_state()
        self.input_min_, self.input_range_ = kept

    # ------------------------------------------------------------ hooks
    def _check_params(self):
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1 ('same' padding), got {self.kernel_size!r}")

    def _build(self, image_shape):
        C = image_shape[0]
        lay = dctl_layout(image_shape, reading=self.reading, n_layers=self.n_layers,
                          kernel_size=self.kernel_size, pool=self.pool)
        kh, kw = lay["kernel"]
        taps = C * kh * kw
        if self.n_filters > taps:
            raise ValueError(
                f"n_filters={self.n_filters} exceeds the {taps} taps of a {C}-channel "
                f"{kh}x{kw} filter: log det T would be -inf"
            )
        d = self.n_filters * lay["out"][0] * lay["out"][1]
        self.transform_ = DCTLTransform(
            C, n_layers=self.n_layers, n_filters=self.n_filters, kernel_size=lay["kernel"],
            pool=lay["pool"], pool_size=lay["pool_size"], reshape=lay["reshape"],
            standardize=d if self.standardize else None, init=self.init,
            backend=self.backend, dtype=self._dtype, rng=self._rng)
        return {"transform": self.transform_.net}

    def _p1_optimizers(self):
        """Adam on the filters (fresh in each phase) and the codes' row-wise Adam (kept across phases)."""
        from nbclust.engine.optim import Adam

        return {"T": Adam(self.transform_.filters, lr=self.lr), "Z": self._z_optimizer}

    def _p1_step(self, X, idx, labels, mu):
        """One P1 step (eq 6) on the batch ``idx``: the T gradients accumulate, Z's go to its optimiser."""
        code = self.loss_scale == "code"
        terms, g_z = self.transform_.batch_loss(
            X[idx], self.codes_[idx], labels, lam=self.lam, mu=mu, n_clusters=self.n_clusters,
            reg_scale=1.0 if code else len(idx) / X.shape[0], mean=code)
        self._z_optimizer.rows(idx, g_z)
        return terms

    def _tracked_features(self, X) -> np.ndarray:
        """What the full-data k-means runs on: Z (assign="codes") or the embedding."""
        if self.assign == "codes":
            return self._backend.to_numpy(self.codes_).astype(np.float64)
        return self._embed_all(X)

    def _set_feature_stats(self, X, batch: int = 512):
        if self.transform_.norm is not None:
            self.transform_.set_feature_stats(X[i:i + batch] for i in range(0, X.shape[0], batch))

    def _transform_all(self, X, batch: int = 512) -> np.ndarray:
        """T(X) (eval mode: a standardisation uses the full-data statistics)."""
        b = self._backend
        self._set_mode(False)
        parts = [b.to_numpy(self.transform_.forward(X[i:i + batch])) for i in range(0, X.shape[0], batch)]
        self._set_mode(True)
        return np.concatenate(parts).astype(np.float64)

    def _embed(self, xb):
        a = self.transform_.forward(xb)
        return a if self.final == "kmeans" else self._backend.xp.maximum(a, 0)

    def _after_load(self):
        """Codes on the backend, and their optimiser: Adam by rows with per-row step counts (like
        torch's SparseAdam), step ``z_lr``, then the psi projection Z >= 0 (Mfeat.py l. 310-312)."""
        from nbclust.engine.optim import RowAdam

        if getattr(self, "codes_", None) is not None:
            self.codes_ = self._backend.asarray(self.codes_, dtype=self._dtype)
            self._z_optimizer = RowAdam(self.codes_, lr=self.lr if self.z_lr is None else self.z_lr, low=0)
