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
    that is ambiguous.  A vector input arrives as (N, 1, D) or (N, C, 1, D)
    (a height-1 map; what ``python -m nbclust.fit --features dsift-pca`` hands an
    image estimator; a flat (N, D) matrix is refused as by every estimator,
    whose contract reads a 2-D array as one image) and is read as
    - ``"1d"`` (default): a 1-D signal, convolved along the vector with kernel
      9 and max-pooled by 2, as the released code does (Mfeat.py l. 97-106
      ``nn.Conv1d(..., kernel_size=ksize)``, l. 136-158 ``F.conv1d(...,
      padding=ksize//2)``, ``F.max_pool1d(x, 2)``; DeConFuse.py l. 74-78,
      94-102).  Realised as conv2d with kernel (1, 9) and max-pool (1, 2) on
      the (N, C, 1, D) map (no new op); T2's 1 x 9 filters over 3 channels are
      stored as (3, 1, 3, 9) and run as a 3 x 9 convolution of the (N, 1, 3, W)
      map without vertical padding, the same sums through the faster kernel.
    - ``"2d"``: the vector reshaped to an h x w map (h the largest divisor of D
      with h <= sqrt(D): 300 -> 15 x 20), then 9 x 9 filters and 2 x 2 pooling
      as for images (the paper's sizes taken literally).
    Images (height > 1) always get the 2-D transform (``reading`` is unused).
    Features are used as given.  Mfeat.py normalises each view first (l. 758
    ``normalizeData(X[vw_idx].T)``; the function is not in the release) and the
    paper says nothing; on Yale B the per-feature standardisation of DSIFT-PCA
    alone lifts k-means from ACC 0.09 to 0.37, which is a choice for the
    feature pipeline, not for DCTL.

Transform (Fig. 1)
    T1 = ``n_filters`` filters ("same" zero padding, no bias: eq 1's ``t_m * x``
    has none; the released code also calls ``F.conv1d`` without its bias)
    -> max-pool -> SELU -> T2 (``n_filters`` input channels) -> max-pool ->
    flatten; ``n_layers=1`` keeps T1 -> max-pool; the output layer has no
    activation (as Mfeat.py's last conv).  ``pool="auto"`` (default) pools
    after a layer only while the pooled side stays >= 7 (along the vector for
    ``"1d"``, the shorter side otherwise): a 300-d vector and 28/32-pixel images
    pool twice as in Fig. 1, 8 x 8 digits keep their 8 x 8 maps; ``"always"``
    (the paper's), ``"never"``.  Filter counts and sizes are the paper's (Sec. 4:
    3 filters of size 9 per layer, pooling 2); Mfeat.py's configuration uses
    2, 4, 8 filters of sizes 5, 3, 3 and no pooling (l. 652, 655), batch 128,
    40 epochs (l. 647-648).

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
    warm-started k-means on the embedding (Z for ``"codes"``; for ``"batch"``
    the batch embeddings the step k-means saw during the epoch, which saves a
    forward pass over the data per epoch): its centre shift
    relative to the previous centres (``||C_new - C_old||_F / ||C_old||_F``) is
    the paper's stopping rule ("cluster centres do not vary significantly",
    ``tol``) and the history records it (``center_shift``) with the fraction of
    samples whose label changed (``moved``).

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

Filters: ``nbclust.optim.Adam`` (the paper's P1 solver) with ``lr=1e-4``, the
released clustering code's rate (Mfeat.py l. 650 ``learning_rate_list =
[1e-4]``; there with SGD, l. 495, whose steps on the mean-scaled loss are far
smaller still, so its transform stays close to the random initial one).
DeConFuse.py trains with Adam at 1e-3 (l. 336, 412).  At 1e-3 the joint
objective degrades the features: the log-det fixes the filters' singular
values (they settle near 1/sqrt(2), the minimiser of sigma^2 - log sigma) but
not their direction, and the data and k-means terms then favour directions in
which the outputs have little within-cluster scatter, i.e. little variance.
Measured (30 epochs): digits ACC 0.49 at 1e-3 vs 0.83 at 1e-4 (seed 0; the
tracked ACC falls from 0.85 in the first epoch); Yale B DSIFT-PCA, 2 layers,
joint, 0.104 vs 0.118 (mean of seeds 0-2).

Measured on Extended Yale B 32 x 32 (2414 images, 38 classes), DSIFT ->
PCA(300) from ``nbclust.features.dsift_pca`` as (N, 1, 1, 300), defaults, mean
ACC of seeds 0-2: k-means (n_init 20) 0.089; random initial transform +
k-means (``epochs=0``) 0.127 (2 layers), 0.099 (1 layer); 2 layers joint 0.118,
piecemeal 0.121; 1 layer joint 0.109, piecemeal 0.101 (reading "2d": 0.113,
0.104, 0.092, 0.097).  The paper's Table 2 (joint > piecemeal, 0.349 for 2
layers) is not reproduced: the gain over k-means comes from the random
convolution + pooling, training adds nothing.  With per-feature standardised
DSIFT-PCA, k-means alone reaches 0.373 and DCTL 0.17-0.29.

Algorithm (joint, ``joint=True``): Z from the initial filters, then each epoch
one pass of P1 mini-batch steps (H from ``assign``) followed by the tracking
k-means (and, for ``"epoch"``/``"codes"``, the new H).  Piecemeal ablation
(``joint=False``, Table 2 "Piece"; the ``_piece_meal.py`` files drop the k-means
term, km_reg = 0): mu = 0 for ``pretrain_epochs + epochs`` epochs, then the
final clustering.  ``pretrain_epochs`` with ``joint=True`` runs that many
mu = 0 epochs first.
"""

from __future__ import annotations

import math

import numpy as np

from nbclust.methods.base import DeepClusterer

READINGS = ("1d", "2d")
LOSS_SCALES = ("code", "paper")
ASSIGNS = ("batch", "epoch", "codes")
FINALS = ("kmeans", "codes")


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
        flags.append(pool == "always" or (pool == "auto" and side // 2 >= 7))
        if flags[-1]:
            side //= 2
            shape = [s // p for s, p in zip(shape, window)]
    if min(shape) < 1:
        raise ValueError(f"input of shape {tuple(image_shape)} is too small for {sum(flags)} max-pools")
    return {"kernel": kernel, "pool_size": window, "pool": tuple(flags), "reshape": reshape,
            "out": tuple(shape), "vector": vector}


_CONTROLLER = None


def _blas_controller():
    """One cached ``threadpoolctl.ThreadpoolController`` (building one scans the loaded
    libraries, ~10 ms: too slow for every batch)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        import sklearn.cluster  # noqa: F401  (loads its OpenMP runtime, so that it is controlled too)
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def batch_kmeans(a: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 100) -> np.ndarray:
    """Labels of Lloyd's k-means on the rows of ``a`` (min(k, n) clusters, k-means++ seeding from
    ``rng``, until no label changes or ``max_iter``); an empty cluster keeps its centre."""
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    k = min(k, n)
    sq = np.einsum("ij,ij->i", a, a)
    idx = [int(rng.integers(n))]
    d2 = np.maximum(sq - 2.0 * a @ a[idx[0]] + sq[idx[0]], 0.0)
    for _ in range(1, k):
        tot = d2.sum()
        i = int(rng.choice(n, p=d2 / tot)) if tot > 0 else int(rng.integers(n))
        idx.append(i)
        d2 = np.minimum(d2, np.maximum(sq - 2.0 * a @ a[i] + sq[i], 0.0))
    c = a[idx].copy()
    labels = None
    for _ in range(max_iter):
        new = np.argmin((c * c).sum(1)[None, :] - 2.0 * a @ c.T, axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        onehot = np.zeros((k, n))
        onehot[labels, np.arange(n)] = 1.0
        counts = onehot.sum(1)
        full = counts > 0
        c[full] = (onehot @ a)[full] / counts[full, None]
    return labels.astype(np.int64)


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
                 pool_size=2, reshape=None, standardize=None, backend="cpu", dtype=np.float32, rng=None):
        from nbclust import nn

        kw = dict(backend=backend, dtype=dtype, rng=rng)
        kh, kwd = (kernel_size, kernel_size) if np.isscalar(kernel_size) else tuple(kernel_size)
        layers = [nn.Reshape(tuple(reshape), **kw)] if reshape is not None else []
        for i in range(n_layers):
            c_in = in_channels if i == 0 else n_filters
            if i:
                layers.append(nn.SELU(**kw))
            conv = nn.Conv2d(c_in, n_filters, (kh, kwd), padding="same", bias=False, **kw)
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

    def _op(self, name, *inputs, **attrs):
        value, ctx = self.b.op(name).forward(*inputs, **attrs)
        grads = self.b.op(name).backward(self.b.xp.ones((), dtype=value.dtype), ctx)
        return float(value), grads

    def regularizer(self):
        """``sum_i (||T_i||_F^2 - sum log sigma(T_i))`` and its gradients, one per filter bank."""
        reg, grads = 0.0, []
        for p in self.filters:
            fro, (g_fro,) = self._op("frobenius", p.data)
            nld, (g_nld,) = self._op("neg_logdet", p.data)
            reg += fro + nld
            grads.append(g_fro + g_nld)
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
        if mean:
            fid, (g_a, g_z) = self._op("mse", a, z)
        else:
            fid, (g_a, g_z) = self._op("fidelity", a, z)
        self.net.backward(g_a, input_grad=False)
        terms = {"fidelity": fid}
        reg, g_reg = self.regularizer()
        for p, g in zip(self.filters, g_reg):
            p.grad += (reg_scale * lam) * g
        terms["reg"] = reg_scale * lam * reg
        if labels is not None and mu > 0:
            if callable(labels):
                labels = labels(a)
            km, (g_km, _) = self._op("kmeans_subspace", z, labels, n_clusters=n_clusters)
            w = mu / z.size if mean else mu
            g_z = g_z + w * g_km
            terms["kmeans"] = w * km
        terms["loss"] = sum(terms.values())
        return terms, g_z


class DCTL(DeepClusterer):
    """Deep convolutional transform learning + k-means (Goel et al., ICIP 2022); see the module doc.

    Accepts images (N, H, W) / (N, C, H, W) and feature vectors (N, 1, D) / (N, C, 1, D)
    (e.g. DSIFT + PCA(300), the paper's input).  ``cluster_centers_`` are the final k-means
    centres of the embedding (``final="kmeans"``) or of the codes Z (``final="codes"``),
    ``codes_`` the learnt Z, ``code_labels_`` the last tracked full-data partition.
    """

    _state_attrs = ("codes_", "code_labels_", "_zm", "_zv", "_zt")
    _vector_min = 4  # features of a vector input (pool="always": two 2-wide max-pools)

    def __init__(self, n_clusters=10, *, backend="cpu", random_state=None, verbose=0,
                 lam=0.001, mu=1.0, n_layers=2, joint=True, n_filters=3, kernel_size=9,
                 reading="1d", pool="auto", loss_scale="code", standardize=False, assign="batch",
                 final="kmeans", n_init=10, pretrain_epochs=0, epochs=30, batch_size=256, lr=1e-4,
                 z_lr=0.1, tol=1e-4):
        self.n_clusters = n_clusters
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.lam = lam
        self.mu = mu
        self.n_layers = n_layers
        self.joint = joint
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.reading = reading
        self.pool = pool
        self.loss_scale = loss_scale
        self.standardize = standardize
        self.assign = assign
        self.final = final
        self.n_init = n_init
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.z_lr = z_lr
        self.tol = tol

    # ------------------------------------------------------------ input
    @property
    def _min_size(self):
        """Smallest image side (4: pool="always" pools twice); a vector input's size is
        checked on its length instead, in :meth:`_check_X`."""
        return 1 if getattr(self, "_vector_check", False) else 4

    def _check_X(self, X, *, fitted=False):
        """Images as in the base; feature vectors as (N, 1, D) or (N, C, 1, D) (height-1 maps;
        ``reading`` decides how the transform reads them).  A flat (N, D) matrix is refused,
        as by every estimator (a 2-D array is one image): reshape it to (N, 1, 1, D)."""
        X = np.asarray(X) if not isinstance(X, np.ndarray) else X
        if X.ndim == 2:
            raise ValueError(f"X must have shape (N, H, W) or (N, C, H, W), got 2-D data of shape "
                             f"{X.shape} (feature vectors: reshape to (N, 1, 1, D))")
        vector = (X.ndim == 3 and X.shape[1] == 1) or (X.ndim == 4 and X.shape[2] == 1)
        if vector and not fitted and X.shape[-1] < self._vector_min:
            raise ValueError(f"vectors of {X.shape[-1]} features are too small for DCTL "
                             f"(needs at least {self._vector_min})")
        self._vector_check = vector
        try:
            return super()._check_X(X, fitted=fitted)
        finally:
            self._vector_check = False

    # ------------------------------------------------------------ hooks
    def _check_params(self):
        if self.n_layers not in (1, 2) or isinstance(self.n_layers, bool):
            raise ValueError(f"n_layers must be 1 or 2, got {self.n_layers!r}")
        for name in ("lam", "mu"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating)) and np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.joint, (bool, np.bool_)):
            raise ValueError(f"joint must be True or False, got {self.joint!r}")
        if not isinstance(self.n_filters, (int, np.integer)) or self.n_filters < 1:
            raise ValueError(f"n_filters must be an integer >= 1, got {self.n_filters!r}")
        k = self.kernel_size
        if not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1 ('same' padding), got {k!r}")
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise ValueError(f"standardize must be True or False, got {self.standardize!r}")
        zl = self.z_lr
        if zl is not None and not (isinstance(zl, (int, float, np.floating)) and np.isfinite(zl) and zl > 0):
            raise ValueError(f"z_lr must be None or a positive number, got {zl!r}")
        for name, allowed in (("pool", ("auto", "always", "never")), ("reading", READINGS),
                              ("loss_scale", LOSS_SCALES), ("assign", ASSIGNS), ("final", FINALS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, "
                                 f"got {getattr(self, name)!r}")
        n = self.n_init
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n_init must be an integer >= 1, got {n!r}")

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
            standardize=d if self.standardize else None,
            backend=self.backend, dtype=self._dtype, rng=self._rng)
        return {"transform": self.transform_.net}

    def _phases(self):
        if not self.joint:
            return [("pretrain", self.pretrain_epochs + self.epochs)]
        return [("pretrain", self.pretrain_epochs), ("cluster", self.epochs)]

    def _make_optimizers(self, phase):
        from nbclust.optim import Adam

        return {"T": Adam(self.transform_.filters, lr=self.lr)}

    def _start_phase(self, phase, X):
        xp = self._backend.xp
        if self.codes_ is None:  # the joint phase keeps the Z learnt in a pre-training phase
            self._set_feature_stats(X)
            Z = np.maximum(self._transform_all(X), 0.0)
            self.codes_ = self._backend.asarray(Z, dtype=self._dtype)
            self._zm, self._zv = xp.zeros_like(self.codes_), xp.zeros_like(self.codes_)
            self._zt = np.zeros(Z.shape[0], dtype=np.int64)
        if phase == "cluster":  # the first partition (tracked only, for assign="batch")
            km = self._kmeans(self._tracked_features(X), n_init=1 if self.assign == "batch" else self.n_init)
            self.cluster_centers_ = km.cluster_centers_
            self.code_labels_ = km.labels_.astype(np.int64)

    def _batch_step(self, phase, X, idx):
        N = X.shape[0]
        labels = None
        if phase == "cluster":
            if self.assign == "batch":
                def labels(a):  # a fresh k-means on the batch's current embedding (Mfeat.py l. 289)
                    e = self._backend.to_numpy(a if self.final == "kmeans" else self._backend.xp.maximum(a, 0))
                    if self._epoch_features is not None:
                        self._epoch_features[idx] = e
                    with _blas_controller().limit(limits=1):  # small matrices: BLAS threads only spin
                        lab = batch_kmeans(e, self.n_clusters, self._rng)
                    return self._backend.asarray(lab, dtype=np.int64)
            else:
                labels = self._backend.asarray(self.code_labels_[idx], dtype=np.int64)
        z = self.codes_[idx]
        code = self.loss_scale == "code"
        terms, g_z = self.transform_.batch_loss(
            X[idx], z, labels, lam=self.lam, mu=self.mu if phase == "cluster" else 0.0,
            n_clusters=self.n_clusters, reg_scale=1.0 if code else len(idx) / N, mean=code)
        self._z_step(idx, g_z)
        return terms

    def _z_step(self, idx, g):
        """Adam on the batch rows of Z (per-row step counts), then the psi projection Z >= 0."""
        xp, b1, b2, eps = self._backend.xp, 0.9, 0.999, 1e-8
        t = self._zt[idx] + 1
        self._zt[idx] = t
        m = b1 * self._zm[idx] + (1 - b1) * g
        v = b2 * self._zv[idx] + (1 - b2) * g * g
        self._zm[idx], self._zv[idx] = m, v
        bc1 = self._backend.asarray(1 - b1**t, dtype=self._dtype)[:, None]
        bc2 = self._backend.asarray(np.sqrt(1 - b2**t), dtype=self._dtype)[:, None]
        lr = self.lr if self.z_lr is None else self.z_lr
        step = (lr / bc1) * m / (xp.sqrt(v) / bc2 + eps)
        self.codes_[idx] = xp.maximum(self.codes_[idx] - step, 0)

    def _begin_epoch(self, phase, X):
        # assign="batch": the tracking k-means of _end_epoch reuses the batch features the step
        # k-means saw (each row's embedding just before its own step), not another forward pass.
        self._epoch_features = None
        if phase == "cluster" and self.assign == "batch":
            self._epoch_features = np.full((X.shape[0], self.cluster_centers_.shape[1]), np.nan)

    def _end_epoch(self, phase, X):
        self._set_feature_stats(X)
        if phase != "cluster":
            return {}
        from sklearn.cluster import KMeans

        F = self._epoch_features
        if F is None or np.isnan(F[:, 0]).any():  # not assign="batch", or an epoch cut short
            F = self._tracked_features(X)
        self._epoch_features = None
        old = self.cluster_centers_
        with _blas_controller().limit(limits=1):  # as in DeepClusterer._kmeans: OpenMP spinning is slow under load
            km = KMeans(self.n_clusters, init=old, n_init=1, random_state=self._seed()).fit(F)  # P2, eq (7)
        moved = float(np.mean(km.labels_ != self.code_labels_))
        self.cluster_centers_ = km.cluster_centers_
        self.code_labels_ = km.labels_.astype(np.int64)
        shift = float(np.linalg.norm(km.cluster_centers_ - old) / max(np.linalg.norm(old), 1e-12))
        self.converged_ = shift < self.tol
        return {"center_shift": shift, "moved": moved}

    def _finish(self, X):
        if self.final == "kmeans":  # a fresh k-means on the final transform outputs (Mfeat.py l. 583-592)
            km = self._kmeans(self._embed_all(X), n_init=self.n_init)
        elif not self.joint:  # final="codes", piecemeal: k-means once on the learnt codes
            km = self._kmeans(self._backend.to_numpy(self.codes_), n_init=self.n_init)
            self.code_labels_ = km.labels_.astype(np.int64)
        else:  # final="codes", joint: the last P2 centres of Z
            return
        self.cluster_centers_ = km.cluster_centers_

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
        if getattr(self, "codes_", None) is not None:
            self.codes_ = self._backend.asarray(self.codes_, dtype=self._dtype)
            self._zm = self._backend.asarray(self._zm, dtype=self._dtype)
            self._zv = self._backend.asarray(self._zv, dtype=self._dtype)
