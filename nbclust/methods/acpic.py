r"""``ACPIC``: agglomerative clustering via maximum incremental path integral (AC-PIC).

W. Zhang, D. Zhao, X. Wang, "Agglomerative clustering via maximum incremental path
integral", Pattern Recognition 46 (11), 3056-3065, 2013; released as the MATLAB
"gactoolbox" (``gacCluster`` with ``strDescr='path'``).  DEPICT (Ghasedi Dizaji et al.,
ICCV 2017, repository herandy/DEPICT) initialises its cluster assignments with it: the
MATLAB toolbox ships in ``matlab/approaches/common/gactoolbox-master`` and a line-by-line
Python port sits in ``functions.py`` (``gacCluster``, ``gacBuildDigraph``, ``gacNNMerge``,
``gacMerging``, ``gacPathEntropy``, ``gacPathCondEntropy``), called by
``predict_ac_mpi(feat, ...)`` with ``K = 20, a = 1, z = 0.01`` on the clean embedding
(``encoder_val_clean``, the tanh layer of the autoencoder, 10-D for MNIST) and
``distance_matrix = cdist(feat, feat) ** 2``.  ``clustering()`` in ``functions.py`` uses
AC-PIC for MNIST-test and USPS, k-means for MNIST-full, FRGC, YTF and CMU-PIE (the MATLAB
``predict_ac_mpi.m`` carries the comment "a = 100 for USPS" but sets ``a = 1`` for every data
set, as the Python port does).  The defaults here are those settings; this module
reproduces that algorithm (graph, initial clusters, merge order and tie rules) with sparse
data structures.

The algorithm (symbols of the paper, numbering of the released code)
--------------------------------------------------------------------
1. Directed K-NN graph (``gacBuildDigraph``).  ``d_ij = ||x_i - x_j||^2`` (the port passes
   the *squared* Euclidean distances as its "distance matrix", so the toolbox's
   ``exp(-d_ij / sigma^2)`` is the paper's ``exp(-dist(i, j)^2 / sigma^2)``).  ``N_i^K``:
   the K nearest samples other than ``x_i``.  The bandwidth::

       sigma^2 = a * mean_{i, j in N_i^K'} d_ij,        K' = max(K, 3)

   (``mean(sortedDist[:, 1:max(K+1, 4)]) * a``), then doubled while some sample's nearest
   neighbour would get a weight below 1e-5 (``while any(exp(-d_i,nn(i) / sigma^2) < 1e-5)``),
   i.e. until ``max_i d_i,nn(i) <= sigma^2 ln 1e5``.  Weights and transition matrix::

       W_ij = exp(-d_ij / sigma^2)  for j in N_i^K,   W_ii = 1,   0 elsewhere
       P = D^{-1} W,   D_ii = sum_j W_ij = 1 + sum_{j in N_i^K} W_ij   (rows of P sum to 1)

2. Initial clusters (``gacNNMerge``): each sample is linked with its nearest neighbour
   (``NNIndex[i, :2]``); the clusters are the connected components, ordered by their
   smallest member.  (The port labels samples in index order and keeps the smallest label
   on collisions; the first label of a component is created at its smallest member, hence
   this order.)  ``init_neighbors = p`` links each sample with its p nearest neighbours
   (the toolbox's documented but unused "(p+1)-links" parameter; the release has p = 1).

3. Path integral of a cluster C and conditional path integral (``gacPathEntropy``,
   ``gacPathCondEntropy``), for ``0 < z < 1``::

       S_C        = |C|^-2 1_C^T (I - z P_CC)^{-1} 1_C
                  = |C|^-2 sum_{i, j in C} sum_{paths i -> j inside C} z^len prod p
       S_{A|A+B}  = |A|^-2 1_A^T [(I - z P_UU)^{-1}]_AA 1_A,       U = A + B

   (``(I - zP)^{-1} = sum_t z^t P^t`` converges because ``||zP||_inf = z < 1``.)  The
   affinity of two clusters is the incremental path integral::

       Aff(A, B) = [S_{A|A+B} - S_A] + [S_{B|A+B} - S_B]  >= 0

   and the two clusters of largest affinity are merged until ``n_clusters`` remain.

How the affinity is computed here (derivation)
-----------------------------------------------
The port inverts ``M_UU = I - z P_UU`` densely for every pair and subtracts two numbers of
size ~1/|A|, keeping only ~16 - log10(S/Aff) digits.  Here, with ``M = I - zP`` and
``u_A = M_AA^{-1} 1_A`` (kept per sample), let ``x`` solve ``M_UU x = [1_A; 0]``.
``x0 = [u_A; 0]`` leaves the residual ``rho = [0; z P_BA u_A]`` (``M_AA u_A = 1_A``), so with
``delta = x - x0 = M_UU^{-1} rho = sum_t (z P_UU)^t rho``::

       S_{A|A+B} - S_A = |A|^-2 1_A^T delta_A,

a sum of non-negative terms (no cancellation).  Likewise for B with
``rho' = [z P_AB u_B; 0]``; both series run together, as sparse vectors: ``rho`` lives on the
samples of B with an edge into A, and each term spreads one step along the in-edges inside
A + B.  Bounds after term t: every row of ``z P_UU`` sums to at most z, and every column to
at most ``q = z max_v sum_w P_wv``, so what the remaining terms add to ``1_A^T delta_A`` is at
most ``min(|A| max(term_t) z/(1-z), sum(term_t) q/(1-q))``.  The partial sum is therefore a
lower bound and partial sum + tail bound an upper bound; a pair is "exact" once the tail
bound is below 1e-17 of the sum (about 10 terms for z = 0.01).
Consequence used for sparsity: ``rho`` vanishes unless B has an edge into A, and
``1_A^T delta_A`` vanishes unless A also has an edge into B; so ``Aff(A, B) = 0`` exactly
unless A and B are *mutual* neighbours, and only those pairs are stored (the port keeps a
dense table of all n0 x n0 pairs of the n0 ~ N/4 initial clusters); the cluster-level
in/out adjacency is maintained through the merges.
Lazy evaluation: after a merge, the pairs of the merged cluster get bounds from one term
(pairs of at most 16 samples are evaluated exactly at once); the pair with the largest upper
bound is re-evaluated with 2, 4 and then all terms until the best upper bound belongs to an
exactly evaluated pair.  Its exact value is then >= every other pair's upper bound >= that
pair's exact value, so the choice (tie rules included) is the one an exact evaluation of
every pair would make; only exact values are recorded.
``u`` of a merged cluster: ``[u_A; u_B]`` leaves the residual ``[z P_AB u_B; z P_BA u_A]``
on the samples along the A-B boundary, and the same sparse series adds
``M_UU^{-1}`` of it (until its terms are below 1e-17 of u >= 1).

Merge order and tie rules (``gacMerging``)
------------------------------------------
The clusters sit in a list (initially in the order of step 2).  The port picks, in its
upper-triangular table of ``-Aff``, the minimum per column (first row on ties) and then the
first column reaching the overall minimum: the pair ``(i < j)`` of largest affinity, ties
broken by the smallest ``j`` and then the smallest ``i``.  The merged cluster is stored at
``i``, the last cluster of the list moves to ``j`` and the list shrinks by one; the final
label of a sample is the position of its cluster.  All of this is reproduced (``merges_``
records the pairs ``(i, j)`` and ``merge_affinities_`` the values).  When no pair has a
positive affinity (the graph has fallen apart into more mutual components than
``n_clusters``) every entry of the port's table is 0 up to rounding noise of either sign,
so its choice is arbitrary; here the values are exactly 0 and the rule above gives the
pair (0, 1).

Cost
----
Memory is O(N K), never an N x N matrix: the graph and its transpose as CSR
(2 x N(K+1) index/value pairs), the neighbour search's (N, K') indices and distances, a few
length-N arrays, and per cluster its in/out neighbour clusters and mutual pairs (at most one
entry per directed edge each).  For N = 70000, K = 20: 2 x 70000 x 21 x 16 B = 47 MB for the
two CSR graphs, 70000 x 20 x 16 B = 22 MB for the neighbour search, ~10 MB of per-sample
arrays and at most ~2 x 22 MB of cluster lists: about 0.1 GB besides X and the interpreter.
Measured on random data of shape (70000, 10): peak RSS 330 MB, of which ~170 MB is Python
with NumPy, SciPy, scikit-learn and Numba loaded; ~130 s of CPU.  Time: the exact neighbour
search is a brute-force O(N^2 d) pass (Numba, parallel over rows; direct differences, so zero
distances stay exactly zero); a merge costs one term per mutual neighbour of the merged
cluster, the exact evaluation of the chosen pair and the update of u, the last two
O(|A + B| K) per term in the worst case (data without cluster structure, where one cluster
grows by absorbing the others).  Numba compilation: ~12 s of CPU on the first call, cached
on disk afterwards.

Differences from the released code (all only in degenerate cases or in rounding)
---------------------------------------------------------------------------------
* Ties in the neighbour order are broken by the smaller index (MATLAB's stable ``sort``);
  the port's ``np.argsort`` (introsort) leaves them to the sort's internals.  The sample
  itself always comes first: with exact duplicates the port may put a duplicate before
  the sample (then the sample becomes one of its own K neighbours and the port's
  ``graphW += eye`` gives ``W_ii = 2``, MATLAB's ``graphW(1:N+1:end) = 1`` gives 1, and the
  first column of ``NNIndex`` used by ``gacNNMerge`` is not the sample).
* With ``n0 <= n_clusters`` initial clusters the port prints "too few initial clusters"
  and still merges one pair (MATLAB stops with an error); here the n0 initial clusters
  are returned (a warning says so when n0 < n_clusters).
* ``n_neighbors >= N`` is refused (the port's slicing silently uses the N - 1 other samples).
  If every neighbour distance is 0 (all samples equal) the port divides by
  ``sigma^2 = 0``; here the weights are exp(0) = 1.
* Rounding: the port's ``scipy.linalg.inv`` per pair and difference of path integrals
  versus the non-negative series here (relative error ~1e-16 of Aff); decisions can only
  differ where two affinities agree to within the port's own rounding noise, about
  1e-16 S/Aff relative (1e-13 .. 1e-9 for large clusters).

The paper's graph (options)
---------------------------
The text of the paper could not be consulted while writing this module.  A public
re-implementation of the paper (on GitHub) estimates sigma^2 from the 3 nearest neighbours
of every sample, ``sigma^2 = sum_i sum_{j in N_i^3} d_ij / (3 n (-ln a'))``, without
self-loops and without the doubling loop (the released code's ``max(K+1, 4)`` keeps 3
neighbours as the minimum).  Both readings can be run: ``sigma_neighbors=3,
self_loops=False, sigma_doubling=False`` gives that one (the multiplier ``a`` then stands for
``1 / (-ln a')``); the defaults ``None, True, True`` are the released code.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numba import njit, prange
from numba.typed import List
from scipy import sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClusterMixin

from nbclust.methods import inputs

_SERIES_RTOL = 1e-17  # stop a Neumann series once its tail bound is below this (relative)
_SERIES_ATOL = 1e-32  # ... or below this absolute bound on an affinity (S >= 1/N >= 1e-8 here)
_MAX_TERMS = 100000
_SAFETY = 1e-9  # relative margin on the upper bounds (rounding of the remaining sums)
_EXACT = 1 << 40  # "number of terms" of an exactly evaluated pair
_SMALL_PAIR = 16  # pairs of at most this many samples are evaluated exactly at once


# ----------------------------------------------------------------------------------------
# exact K nearest neighbours (brute force, direct differences)
# ----------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _knn(X, k):
    """The k nearest other samples of every sample: indices and squared distances, sorted by
    (distance, index).  Row chunks run in parallel; every row is computed independently, so
    the result does not depend on the number of threads."""
    n, d = X.shape
    XT = np.ascontiguousarray(X.T)
    idx = np.empty((n, k), np.int64)
    dist = np.empty((n, k), np.float64)
    chunk = 64
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        buf = np.empty(n, np.float64)
        hd = np.empty(k, np.float64)
        hj = np.empty(k, np.int64)
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            buf[:] = 0.0
            for f in range(d):
                xf = X[i, f]
                row = XT[f]
                for j in range(n):
                    t = row[j] - xf
                    buf[j] += t * t
            # max-heap of the k best (distance, index); j runs upwards, so an equal
            # distance never displaces an earlier index.
            size = 0
            for j in range(n):
                if j == i:
                    continue
                v = buf[j]
                if size < k:
                    pos = size
                    size += 1
                    while pos > 0:
                        parent = (pos - 1) // 2
                        if hd[parent] < v or (hd[parent] == v and hj[parent] < j):
                            hd[pos] = hd[parent]
                            hj[pos] = hj[parent]
                            pos = parent
                        else:
                            break
                    hd[pos] = v
                    hj[pos] = j
                elif v < hd[0]:
                    pos = 0
                    while True:
                        left = 2 * pos + 1
                        if left >= k:
                            break
                        big = left
                        right = left + 1
                        if right < k and (hd[right] > hd[left] or (hd[right] == hd[left] and hj[right] > hj[left])):
                            big = right
                        if hd[big] > v or (hd[big] == v and hj[big] > j):
                            hd[pos] = hd[big]
                            hj[pos] = hj[big]
                            pos = big
                        else:
                            break
                    hd[pos] = v
                    hj[pos] = j
            # insertion sort by (distance, index)
            for a in range(1, k):
                vd = hd[a]
                vj = hj[a]
                b = a - 1
                while b >= 0 and (hd[b] > vd or (hd[b] == vd and hj[b] > vj)):
                    hd[b + 1] = hd[b]
                    hj[b + 1] = hj[b]
                    b -= 1
                hd[b + 1] = vd
                hj[b + 1] = vj
            for a in range(k):
                idx[i, a] = hj[a]
                dist[i, a] = hd[a]
    return idx, dist


# ----------------------------------------------------------------------------------------
# graph: CSR of P (rows = sources) and its transpose; initial clusters
# ----------------------------------------------------------------------------------------
def _build_graph(nbr, w, self_loops):
    """CSR of P = D^{-1} W: row i holds its K neighbours (plus i itself with W_ii = 1 if
    ``self_loops``), columns ascending; ``D_ii`` = the row sum.  Returns (indptr, indices,
    values)."""
    n = nbr.shape[0]
    cols, vals = nbr, w
    if self_loops:
        cols = np.hstack([nbr, np.arange(n, dtype=np.int64)[:, None]])
        vals = np.hstack([w, np.ones((n, 1))])
    order = np.argsort(cols, axis=1, kind="stable")
    cols = np.take_along_axis(cols, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    s = vals.sum(axis=1)
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)  # an all-zero row stays zero
    indptr = np.arange(n + 1, dtype=np.int64) * cols.shape[1]
    return indptr, np.ascontiguousarray(cols.ravel()), np.ascontiguousarray((inv[:, None] * vals).ravel())


def _transpose(n, indptr, indices, values):
    """CSR of the transpose: row v lists the sources w of the edges w -> v (ascending) with
    P_wv."""
    order = np.argsort(indices, kind="stable")  # sources stay ascending within a target
    sources = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    tptr = np.concatenate([[0], np.cumsum(np.bincount(indices, minlength=n))]).astype(np.int64)
    return tptr, np.ascontiguousarray(sources[order]), np.ascontiguousarray(values[order])


def _initial_clusters(nbr, p):
    """Connected components of {i -- nbr[i, q], q < p}, numbered in the order of their
    smallest member (= gacNNMerge's order)."""
    n = nbr.shape[0]
    graph = sp.csr_matrix((np.ones(n * p), (np.repeat(np.arange(n), p), nbr[:, :p].ravel())), shape=(n, n))
    count, comp = connected_components(graph, directed=True, connection="weak")
    _, first = np.unique(comp, return_index=True)  # first member of every component
    rank = np.empty(count, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(count)
    return rank[comp], int(count)


# ----------------------------------------------------------------------------------------
# path-integral pieces
# ----------------------------------------------------------------------------------------
@njit(cache=True)
def _affinity_bounds(X, Y, max_terms, z, q, size, head, nxt, cid, optr, oidx, oval, iptr, iidx, ival, U,
                     Ta, Tb, Na, Nb, stamp, tags, S0, S1):
    """Aff(X, Y) from at most ``max_terms`` terms of the two series (module docstring):
    returns (lower bound, upper bound, exact).  The series are run on their supports only
    (sparse vectors over the samples, grown along in-edges inside X + Y).  ``exact``: the
    tail bound fell below _SERIES_RTOL of the sum; then lower == upper == the value."""
    nx = size[X]
    ny = size[Y]
    if nx <= ny:
        sid, lid = X, Y
    else:
        sid, lid = Y, X
    small_is_x = sid == X
    # residuals: Ta = z P_YX u_X on the rows of Y (for X's increment), Tb = z P_XY u_Y on X's
    tags[0] += 1
    tag = tags[0]
    ns = 0
    a = head[sid]
    while a >= 0:
        acc = 0.0
        for e in range(optr[a], optr[a + 1]):
            v = oidx[e]
            if cid[v] == lid:
                acc += oval[e] * U[v]
        if acc > 0.0:
            stamp[a] = tag
            S0[ns] = a
            ns += 1
            if small_is_x:
                Ta[a] = 0.0
                Tb[a] = acc
            else:
                Ta[a] = acc
                Tb[a] = 0.0
        ua = U[a]
        for e in range(iptr[a], iptr[a + 1]):
            w = iidx[e]
            if cid[w] == lid:
                if stamp[w] != tag:
                    stamp[w] = tag
                    S0[ns] = w
                    ns += 1
                    Ta[w] = 0.0
                    Tb[w] = 0.0
                if small_is_x:
                    Ta[w] += ival[e] * ua
                else:
                    Tb[w] += ival[e] * ua
        a = nxt[a]
    if ns == 0:
        return 0.0, 0.0, True
    for s in range(ns):
        v = S0[s]
        Ta[v] *= z
        Tb[v] *= z
    ratio = z / (1.0 - z)
    qq = q / (1.0 - q) if q < 1.0 else np.inf
    nx2 = float(nx) * nx
    ny2 = float(ny) * ny
    lo_a = 0.0
    lo_b = 0.0
    lo = 0.0
    tail = np.inf
    cur = S0
    nxl = S1
    for _ in range(max_terms):
        tags[0] += 1
        tag = tags[0]
        nn = 0
        for s in range(ns):
            v = cur[s]
            ta = Ta[v]
            tb = Tb[v]
            for e in range(iptr[v], iptr[v + 1]):
                w = iidx[e]
                c = cid[w]
                if c == X or c == Y:
                    if stamp[w] != tag:
                        stamp[w] = tag
                        nxl[nn] = w
                        nn += 1
                        Na[w] = 0.0
                        Nb[w] = 0.0
                    p = ival[e]
                    Na[w] += p * ta
                    Nb[w] += p * tb
        mxa = 0.0
        mxb = 0.0
        ma = 0.0
        mb = 0.0
        for s in range(nn):
            w = nxl[s]
            va = z * Na[w]
            vb = z * Nb[w]
            Ta[w] = va
            Tb[w] = vb
            if cid[w] == X:
                lo_a += va
            else:
                lo_b += vb
            ma += va
            mb += vb
            if va > mxa:
                mxa = va
            if vb > mxb:
                mxb = vb
        tmp = cur
        cur = nxl
        nxl = tmp
        ns = nn
        # tail of X's sum <= min(|X| max(term) z/(1-z), mass(term) q/(1-q)), q = z max colsum(P)
        tail_a = min(nx * mxa * ratio, ma * qq)
        tail_b = min(ny * mxb * ratio, mb * qq)
        lo = lo_a / nx2 + lo_b / ny2
        tail = tail_a / nx2 + tail_b / ny2
        if tail <= _SERIES_RTOL * lo or tail <= _SERIES_ATOL or ns == 0:
            return lo, lo, True
    return lo, (lo + tail) * (1.0 + _SAFETY), False


@njit(cache=True)
def _solve_u_block(c, z, head, nxt, cid, iptr, iidx, ival, U, T, Nt, stamp, tags, S0, S1):
    """U on the members of cluster c := (I - z P_cc)^{-1} 1 = sum_t (z P_cc)^t 1."""
    ns = 0
    a = head[c]
    while a >= 0:
        T[a] = 1.0
        U[a] = 1.0
        S0[ns] = a
        ns += 1
        a = nxt[a]
    _series_into_u(c, c, ns, z, cid, iptr, iidx, ival, U, T, Nt, stamp, tags, S0, S1)


@njit(cache=True)
def _series_into_u(A, B, ns, z, cid, iptr, iidx, ival, U, T, Nt, stamp, tags, S0, S1):
    """U += sum_{t>=1} (z P_UU)^t T_0, U = A + B, T_0 on S0[:ns] (values in T); terms until
    max(term) z/(1-z) <= _SERIES_RTOL (U >= 1, so a relative bound)."""
    ratio = z / (1.0 - z)
    cur = S0
    nxl = S1
    for _ in range(_MAX_TERMS):
        if ns == 0:
            break
        tags[0] += 1
        tag = tags[0]
        nn = 0
        for s in range(ns):
            v = cur[s]
            t = T[v]
            for e in range(iptr[v], iptr[v + 1]):
                w = iidx[e]
                cw = cid[w]
                if cw == A or cw == B:
                    if stamp[w] != tag:
                        stamp[w] = tag
                        nxl[nn] = w
                        nn += 1
                        Nt[w] = 0.0
                    Nt[w] += ival[e] * t
        mx = 0.0
        for s in range(nn):
            w = nxl[s]
            v = z * Nt[w]
            T[w] = v
            U[w] += v
            if v > mx:
                mx = v
        tmp = cur
        cur = nxl
        nxl = tmp
        ns = nn
        if mx * ratio <= _SERIES_RTOL:
            break


@njit(cache=True)
def _update_u(A, B, z, size, head, nxt, cid, optr, oidx, oval, iptr, iidx, ival, U, T, Nt, stamp, tags, S0, S1):
    """U on A + B := (I - z P_UU)^{-1} 1 from the blocks' solutions u_A, u_B already in U:
    the residual of [u_A; u_B] is [z P_AB u_B; z P_BA u_A] (the coupling), and U gains
    sum_t (z P_UU)^t of it.  Called before the cluster ids are merged."""
    if size[A] <= size[B]:
        sid, lid = A, B
    else:
        sid, lid = B, A
    tags[0] += 1
    tag = tags[0]
    ns = 0
    a = head[sid]
    while a >= 0:
        acc = 0.0
        for e in range(optr[a], optr[a + 1]):
            v = oidx[e]
            if cid[v] == lid:
                acc += oval[e] * U[v]
        if acc > 0.0:
            stamp[a] = tag
            S0[ns] = a
            ns += 1
            T[a] = acc
        ua = U[a]
        for e in range(iptr[a], iptr[a + 1]):
            w = iidx[e]
            if cid[w] == lid:
                if stamp[w] != tag:
                    stamp[w] = tag
                    S0[ns] = w
                    ns += 1
                    T[w] = 0.0
                T[w] += ival[e] * ua
        a = nxt[a]
    for s in range(ns):
        v = S0[s]
        T[v] *= z
        U[v] += T[v]
    _series_into_u(A, B, ns, z, cid, iptr, iidx, ival, U, T, Nt, stamp, tags, S0, S1)


@njit(cache=True)
def _union_ids(x, y, drop1, drop2, flag, tags):
    """Distinct ids of x and y (in that order), without drop1 and drop2."""
    tags[0] += 1
    tag = tags[0]
    out = np.empty(x.shape[0] + y.shape[0], np.int64)
    n = 0
    for arr in (x, y):
        for t in range(arr.shape[0]):
            d = arr[t]
            if d != drop1 and d != drop2 and flag[d] != tag:
                flag[d] = tag
                out[n] = d
                n += 1
    return out[:n].copy()


@njit(cache=True)
def _replace_ids(x, drop1, drop2, new):
    """x without drop1 and drop2, then new."""
    out = np.empty(x.shape[0] + 1, np.int64)
    n = 0
    for t in range(x.shape[0]):
        d = x[t]
        if d != drop1 and d != drop2:
            out[n] = d
            n += 1
    out[n] = new
    return out[:n + 1].copy()


@njit(cache=True)
def _best_lower(c, mut_ids, mut_hi, id2pos):
    """Among the pairs of cluster c with a cluster at a lower position: the largest upper
    bound (ties: the lowest position).  Returns (value, index in c's list); (0.0, -1) if no
    bound is positive."""
    pc = id2pos[c]
    bv = 0.0
    bt = -1
    bp = pc
    ids = mut_ids[c]
    his = mut_hi[c]
    for t in range(ids.shape[0]):
        pq = id2pos[ids[t]]
        if pq < pc:
            v = his[t]
            if v > bv or (v == bv and bt >= 0 and pq < bp):
                bv = v
                bt = t
                bp = pq
    return bv, bt


@njit(cache=True)
def _merge(n, init_labels, n_init, n_clusters, z, q, optr, oidx, oval, iptr, iidx, ival):
    """The gacMerging loop.  Returns (labels by final position, merges (m, 2) positions,
    merge affinities (m,))."""
    n_merges = max(n_init - n_clusters, 0)
    if n_merges == 0:
        return init_labels.copy(), np.empty((0, 2), np.int64), np.empty(0, np.float64)
    head = np.full(n_init, -1, np.int64)
    tail = np.full(n_init, -1, np.int64)
    size = np.zeros(n_init, np.int64)
    nxt = np.full(n, -1, np.int64)
    cid = init_labels.copy()
    for i in range(n):  # members in ascending order
        c = init_labels[i]
        if head[c] < 0:
            head[c] = i
        else:
            nxt[tail[c]] = i
        tail[c] = i
        size[c] += 1

    U = np.zeros(n, np.float64)
    Ta = np.zeros(n, np.float64)
    Tb = np.zeros(n, np.float64)
    Na = np.zeros(n, np.float64)
    Nb = np.zeros(n, np.float64)
    stamp = np.zeros(n, np.int64)
    S0 = np.empty(n, np.int64)
    S1 = np.empty(n, np.int64)
    tags = np.zeros(1, np.int64)
    flag = np.zeros(n_init, np.int64)
    ftags = np.zeros(1, np.int64)

    for c in range(n_init):
        _solve_u_block(c, z, head, nxt, cid, iptr, iidx, ival, U, Ta, Na, stamp, tags, S0, S1)

    # cluster-level adjacency: out_adj[c] = clusters c has an edge to, in_adj[c] = from
    out_adj = List()
    in_adj = List()
    buf = np.empty(n, np.int64)
    for c in range(n_init):
        for direction in range(2):
            ftags[0] += 1
            tag = ftags[0]
            m = 0
            a = head[c]
            while a >= 0:
                if direction == 0:
                    lo_e, hi_e, arr = optr[a], optr[a + 1], oidx
                else:
                    lo_e, hi_e, arr = iptr[a], iptr[a + 1], iidx
                for e in range(lo_e, hi_e):
                    d = cid[arr[e]]
                    if d != c and flag[d] != tag:
                        flag[d] = tag
                        buf[m] = d
                        m += 1
                a = nxt[a]
            if direction == 0:
                out_adj.append(buf[:m].copy())
            else:
                in_adj.append(buf[:m].copy())

    # mutual pairs with bounds [lo, hi] on the affinity and the number of terms used
    mut_ids = List()
    mut_hi = List()
    mut_lo = List()
    mut_lvl = List()
    for c in range(n_init):
        ftags[0] += 1
        tag = ftags[0]
        for d in out_adj[c]:
            flag[d] = tag
        m = 0
        for d in in_adj[c]:
            if flag[d] == tag:
                buf[m] = d
                m += 1
        mut_ids.append(buf[:m].copy())
        mut_hi.append(np.zeros(m, np.float64))
        mut_lo.append(np.zeros(m, np.float64))
        mut_lvl.append(np.zeros(m, np.int64))
    for c in range(n_init):
        ids = mut_ids[c]
        for t in range(ids.shape[0]):
            d = ids[t]
            if d > c:
                lvl = _EXACT if size[c] + size[d] <= _SMALL_PAIR else 1
                lo, hi, exact = _affinity_bounds(c, d, lvl, z, q, size, head, nxt, cid, optr, oidx, oval,
                                                 iptr, iidx, ival, U, Ta, Tb, Na, Nb, stamp, tags, S0, S1)
                lvl = _EXACT if exact else lvl
                mut_hi[c][t] = hi
                mut_lo[c][t] = lo
                mut_lvl[c][t] = lvl
                ids_d = mut_ids[d]
                for s in range(ids_d.shape[0]):
                    if ids_d[s] == c:
                        mut_hi[d][s] = hi
                        mut_lo[d][s] = lo
                        mut_lvl[d][s] = lvl

    pos2id = np.arange(n_init).astype(np.int64)
    id2pos = np.arange(n_init).astype(np.int64)
    best_hi = np.zeros(n_init, np.float64)
    best_t = np.full(n_init, -1, np.int64)
    for c in range(n_init):
        best_hi[c], best_t[c] = _best_lower(c, mut_ids, mut_hi, id2pos)

    merges = np.empty((n_merges, 2), np.int64)
    merge_aff = np.empty(n_merges, np.float64)
    cur = n_init
    for step in range(n_merges):
        # the pair of largest affinity (ties: smallest higher position, then smallest lower):
        # the largest upper bound is refined until it is exact.
        while True:
            bj = -1
            bv = 0.0
            for p in range(1, cur):
                v = best_hi[pos2id[p]]
                if v > bv:
                    bv = v
                    bj = p
            if bj < 0:  # every affinity is 0
                m1, m2, aff = 0, 1, 0.0
                break
            cj = pos2id[bj]
            t = best_t[cj]
            ci = mut_ids[cj][t]
            lvl = mut_lvl[cj][t]
            if lvl == _EXACT:
                m1, m2, aff = id2pos[ci], bj, mut_lo[cj][t]
                break
            lvl = _EXACT if lvl >= 4 else 2 * lvl
            lo, hi, exact = _affinity_bounds(ci, cj, lvl, z, q, size, head, nxt, cid, optr, oidx, oval,
                                             iptr, iidx, ival, U, Ta, Tb, Na, Nb, stamp, tags, S0, S1)
            lvl = _EXACT if exact else lvl
            mut_hi[cj][t] = hi
            mut_lo[cj][t] = lo
            mut_lvl[cj][t] = lvl
            ids_i = mut_ids[ci]
            for s in range(ids_i.shape[0]):
                if ids_i[s] == cj:
                    mut_hi[ci][s] = hi
                    mut_lo[ci][s] = lo
                    mut_lvl[ci][s] = lvl
            best_hi[cj], best_t[cj] = _best_lower(cj, mut_ids, mut_hi, id2pos)
        merges[step, 0] = m1
        merges[step, 1] = m2
        merge_aff[step] = aff

        A = pos2id[m1]
        B = pos2id[m2]
        last = cur - 1
        idlast = pos2id[last]
        _update_u(A, B, z, size, head, nxt, cid, optr, oidx, oval, iptr, iidx, ival, U, Ta, Na, stamp, tags,
                  S0, S1)
        # the merged cluster keeps the id of the larger one
        nid, other = (A, B) if size[A] >= size[B] else (B, A)
        out_new = _union_ids(out_adj[A], out_adj[B], A, B, flag, ftags)
        in_new = _union_ids(in_adj[A], in_adj[B], A, B, flag, ftags)
        for d in out_new:
            in_adj[d] = _replace_ids(in_adj[d], A, B, nid)
        for d in in_new:
            out_adj[d] = _replace_ids(out_adj[d], A, B, nid)
        out_adj[nid] = out_new
        in_adj[nid] = in_new
        out_adj[other] = np.empty(0, np.int64)
        in_adj[other] = np.empty(0, np.int64)
        ho, to = head[other], tail[other]
        hA, tA, hB, tB = head[A], tail[A], head[B], tail[B]
        nxt[tA] = hB
        head[nid] = hA
        tail[nid] = tB
        size[nid] = size[A] + size[B]
        a = ho
        while True:
            cid[a] = nid
            if a == to:
                break
            a = nxt[a]
        head[other] = -1
        tail[other] = -1
        size[other] = 0
        mut_ids[other] = np.empty(0, np.int64)
        mut_hi[other] = np.empty(0, np.float64)
        mut_lo[other] = np.empty(0, np.float64)
        mut_lvl[other] = np.empty(0, np.int64)
        # positions: merged cluster at m1, the last one moves to m2
        id2pos[other] = -1
        pos2id[m1] = nid
        id2pos[nid] = m1
        if m2 != last:
            pos2id[m2] = idlast
            id2pos[idlast] = m2
        cur -= 1
        if cur <= n_clusters:
            break

        # the merged cluster's mutual neighbours and their (re-evaluated) pairs
        ftags[0] += 1
        tag = ftags[0]
        for d in out_new:
            flag[d] = tag
        m = 0
        for d in in_new:
            if flag[d] == tag:
                buf[m] = d
                m += 1
        qs = buf[:m].copy()
        his = np.empty(m, np.float64)
        los = np.empty(m, np.float64)
        lvls = np.empty(m, np.int64)
        for t in range(m):
            d = qs[t]
            lvl = _EXACT if size[nid] + size[d] <= _SMALL_PAIR else 1
            lo, hi, exact = _affinity_bounds(nid, d, lvl, z, q, size, head, nxt, cid, optr, oidx, oval,
                                             iptr, iidx, ival, U, Ta, Tb, Na, Nb, stamp, tags, S0, S1)
            lvl = _EXACT if exact else lvl
            his[t] = hi
            los[t] = lo
            lvls[t] = lvl
            old = mut_ids[d]
            keep = 0
            for s in range(old.shape[0]):
                if old[s] != A and old[s] != B:
                    keep += 1
            ni = np.empty(keep + 1, np.int64)
            nh = np.empty(keep + 1, np.float64)
            nl = np.empty(keep + 1, np.float64)
            nv = np.empty(keep + 1, np.int64)
            keep = 0
            for s in range(old.shape[0]):
                if old[s] != A and old[s] != B:
                    ni[keep] = old[s]
                    nh[keep] = mut_hi[d][s]
                    nl[keep] = mut_lo[d][s]
                    nv[keep] = mut_lvl[d][s]
                    keep += 1
            ni[keep] = nid
            nh[keep] = hi
            nl[keep] = lo
            nv[keep] = lvl
            mut_ids[d] = ni
            mut_hi[d] = nh
            mut_lo[d] = nl
            mut_lvl[d] = nv
        mut_ids[nid] = qs
        mut_hi[nid] = his
        mut_lo[nid] = los
        mut_lvl[nid] = lvls
        best_hi[nid], best_t[nid] = _best_lower(nid, mut_ids, mut_hi, id2pos)
        for d in qs:
            best_hi[d], best_t[d] = _best_lower(d, mut_ids, mut_hi, id2pos)
        if m2 != last:
            best_hi[idlast], best_t[idlast] = _best_lower(idlast, mut_ids, mut_hi, id2pos)
            for d in mut_ids[idlast]:
                best_hi[d], best_t[d] = _best_lower(d, mut_ids, mut_hi, id2pos)

    labels = np.empty(n, np.int64)
    for p in range(cur):
        a = head[pos2id[p]]
        while a >= 0:
            labels[a] = p
            a = nxt[a]
    done = n_init - cur
    return labels, merges[:done].copy(), merge_aff[:done].copy()


# ----------------------------------------------------------------------------------------
# estimator
# ----------------------------------------------------------------------------------------
def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


class ACPIC(ClusterMixin, BaseEstimator):
    """Agglomerative clustering via maximum incremental path integral (AC-PIC).

    The algorithm, its derivation and its differences from the released code are in the
    docstring of :mod:`nbclust.methods.acpic`.  Defaults = the DEPICT release
    (``predict_ac_mpi``: ``K = 20``, ``a = 1``, ``z = 0.01``, 1-NN initial clusters).
    Memory O(N K), never an N x N matrix: about 0.1 GB for N = 70000, K = 20 besides X.

    Parameters
    ----------
    n_clusters : int, default 10
        Number of clusters to stop at (``groupNumber``).
    n_neighbors : int, default 20
        K of the directed K-NN graph (``K``); must be below the number of samples N.
    a : float, default 1.0
        Multiplier of the bandwidth estimate, ``sigma^2 = a * mean K'-NN squared distance``.
    z : float, default 0.01
        Path weight of ``(I - zP)^{-1} = sum_t z^t P^t``; must satisfy 0 < z < 1.
    init_neighbors : int, default 1
        Initial clusters: components of the graph linking every sample with this many
        nearest neighbours (``gacNNMerge`` uses 1).  At most ``n_neighbors``.
    sigma_neighbors : int or None, default None
        Neighbours averaged in the bandwidth estimate: None = ``max(n_neighbors, 3)`` as
        released; 3 = the paper's ``N_i^3``.
    self_loops : bool, default True
        ``W_ii = 1`` as released (False: no self-loops, as in the paper's definition).
    sigma_doubling : bool, default True
        The released code's loop doubling sigma^2 until every nearest-neighbour weight is
        >= 1e-5 (False: the paper's estimate as is).
    verbose : int, default 0

    Attributes
    ----------
    labels_ : (N,) int64, the cluster of each sample, 0 .. n_clusters-1 (the position of
        its cluster in the merging list, as the released code numbers them).
    n_initial_clusters_ : number of initial clusters (nearest-neighbour components).
    initial_labels_ : (N,) int64, the initial clusters, in their order.
    sigma2_ : the bandwidth sigma^2 after the doubling loop.
    n_features_in_ : number of features of X.
    merges_ : (n_merges, 2) int64, the list positions (i < j) merged at every step.
    merge_affinities_ : (n_merges,) float64, the affinity of every merge (0.0 where no pair
        had a positive affinity).
    """

    def __init__(self, n_clusters=10, *, n_neighbors=20, a=1.0, z=0.01, init_neighbors=1,
                 sigma_neighbors=None, self_loops=True, sigma_doubling=True, verbose=0):
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.a = a
        self.z = z
        self.init_neighbors = init_neighbors
        self.sigma_neighbors = sigma_neighbors
        self.self_loops = self_loops
        self.sigma_doubling = sigma_doubling
        self.verbose = verbose

    # -- validation ------------------------------------------------------------------
    def _check_X(self, X):
        try:  # scikit-learn's checks and wording: no sparse, complex or string data; object arrays converted
            X = inputs.numeric_array(X)
        except ValueError as exc:
            raise ValueError(f"X must be a 2-D array of real numbers: {' '.join(str(exc).split())}") from None
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
        if X.shape[0] < 2:
            raise ValueError(f"ACPIC needs at least 2 samples, got {X.shape[0]} sample(s)")
        if X.shape[1] < 1:
            raise ValueError(f"X has 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
        X = np.ascontiguousarray(X, dtype=np.float64)
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or Inf values")
        return X

    def _check_params(self, n):
        if not _is_int(self.n_clusters) or not 1 <= self.n_clusters <= n:
            raise ValueError(f"n_clusters must be an integer in [1, {n}], got {self.n_clusters!r}")
        if not _is_int(self.n_neighbors) or not 1 <= self.n_neighbors < n:
            raise ValueError(f"n_neighbors must be an integer in [1, {n - 1}] (below the {n} samples), "
                             f"got {self.n_neighbors!r}")
        if not _is_real(self.a) or not (math.isfinite(self.a) and self.a > 0):
            raise ValueError(f"a must be a finite number > 0, got {self.a!r}")
        if not _is_real(self.z) or not 0 < self.z < 1:
            raise ValueError(f"z must be a number with 0 < z < 1, got {self.z!r}")
        if not _is_int(self.init_neighbors) or not 1 <= self.init_neighbors <= self.n_neighbors:
            raise ValueError(f"init_neighbors must be an integer in [1, n_neighbors={self.n_neighbors}], "
                             f"got {self.init_neighbors!r}")
        if self.sigma_neighbors is not None and (not _is_int(self.sigma_neighbors) or self.sigma_neighbors < 1):
            raise ValueError(f"sigma_neighbors must be None or an integer >= 1, got {self.sigma_neighbors!r}")
        for name in ("self_loops", "sigma_doubling"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    # -- the algorithm ---------------------------------------------------------------
    def _graph(self, X):
        n = X.shape[0]
        k = self.n_neighbors
        ks = max(self.n_neighbors, 3) if self.sigma_neighbors is None else self.sigma_neighbors
        ks = min(ks, n - 1)
        p = min(self.init_neighbors, k)
        nbr, d2 = _knn(X, max(k, ks, p))
        if not np.isfinite(d2).all():
            raise ValueError("squared distances overflow float64; rescale X")
        sig2 = float(np.mean(d2[:, :ks])) * float(self.a)
        if not np.isfinite(sig2):
            raise ValueError("sigma^2 overflows float64; rescale X or lower a")
        if sig2 == 0.0:
            sig2 = 1.0  # every neighbour distance is 0: weights exp(0) = 1 for any sigma
        if self.sigma_doubling:
            nn = d2[:, 0]
            while np.any(np.exp(-nn / sig2) < 1e-5):
                sig2 = 2 * sig2
        w = np.exp(-d2[:, :k] * (1 / sig2))
        optr, oidx, oval = _build_graph(np.ascontiguousarray(nbr[:, :k]), np.ascontiguousarray(w),
                                        bool(self.self_loops))
        iptr, iidx, ival = _transpose(n, optr, oidx, oval)
        init_labels, n_init = _initial_clusters(nbr, p)
        return sig2, (optr, oidx, oval, iptr, iidx, ival), init_labels, n_init

    def fit(self, X, y=None):
        X = self._check_X(X)
        n = X.shape[0]
        self._check_params(n)
        sig2, (optr, oidx, oval, iptr, iidx, ival), init_labels, n_init = self._graph(X)
        self.sigma2_ = sig2
        self.n_features_in_ = int(X.shape[1])
        self.n_initial_clusters_ = int(n_init)
        self.initial_labels_ = init_labels
        if self.verbose:
            print(f"ACPIC: sigma = {math.sqrt(sig2):.6g}, {n_init} initial clusters")
        if n_init < self.n_clusters:
            warnings.warn(f"ACPIC: only {n_init} initial clusters (nearest-neighbour components), fewer than "
                          f"n_clusters={self.n_clusters}; returning them without merging", stacklevel=2)
        z = float(self.z)
        # q = z * (largest column sum of P) bounds the growth of a term's mass (sum) per step
        q = z * float(np.bincount(oidx, weights=oval, minlength=n).max())
        labels, merges, affs = _merge(n, init_labels, n_init, self.n_clusters, z, q,
                                      optr, oidx, oval, iptr, iidx, ival)
        self.labels_ = labels
        self.merges_ = merges
        self.merge_affinities_ = affs
        if self.verbose:
            print(f"ACPIC: {len(merges)} merges, {len(np.unique(labels))} clusters")
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_
