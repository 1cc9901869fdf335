"""PNG figures of a finished run (``--plot``); matplotlib is optional and imported here only.

Figures (each only where it applies): ``curves.png`` (loss terms and ACC/NMI/ARI per epoch),
``tsne.png`` (2-D t-SNE of the embedding of <= 2000 samples, coloured by cluster and by label),
``reconstruction.png`` (inputs over ``est.reconstruct`` outputs), ``filters.png`` (first 4-D
weight of the first network: the learned first-layer filters), ``soft_assignments.png``
(histogram of ``est.soft_assign(embedding)`` or ``est.predict_proba(X)`` entries, as DBC
Fig. 6), ``confusion.png`` (class x cluster counts, clusters ordered by the Hungarian matching
used for ACC).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_METRICS = ("acc", "nmi", "ari")


def require_matplotlib():
    """Import matplotlib with the Agg backend; a clear ``ValueError`` when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'nbclust[plot]' (or run without --plot)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def make_plots(out, est, X, y, labels, embedding, history, *, seed=0):
    """Write the figures into folder ``out``; returns the file names written."""
    plt = require_matplotlib()
    out, written = Path(out), []

    def save(fig, name):
        from nbclust.data.io import atomic_path

        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(name)

    if history:
        save(_curves(plt, history), "curves.png")
    save(_tsne(plt, embedding, labels, y, seed), "tsne.png")
    images = _as_images(X[:10])
    if hasattr(est, "reconstruct"):
        rec = _as_images(np.asarray(est.reconstruct(X[:10])))
        save(_grid(plt, [images, rec], "inputs (top) and reconstructions (bottom)"), "reconstruction.png")
    filters = _first_filters(est)
    if filters is not None:
        save(_grid(plt, [filters[:, 0]], f"first-layer filters {filters.shape[2]}x{filters.shape[3]}", cols=16), "filters.png")
    soft = _soft_assignments(est, X, embedding)
    if soft is not None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(soft.ravel(), bins=50, log=True)
        ax.set(xlabel="soft assignment s_ij", ylabel="count", title="soft assignments")
        save(fig, "soft_assignments.png")
    if y is not None:
        save(_confusion(plt, y, labels), "confusion.png")
    return written


def _curves(plt, history):
    epochs = [r["epoch"] for r in history]
    terms = [k for k in history[-1] if k not in ("phase", "epoch", "seconds", *_METRICS)
             and isinstance(history[-1][k], (int, float))]
    metrics = [k for k in _METRICS if k in history[-1]]
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(10 if metrics else 5, 3.5), squeeze=False)
    for k in terms:
        axes[0, 0].plot(epochs, [r.get(k, np.nan) for r in history], label=k)
    axes[0, 0].set(xlabel="epoch", ylabel="loss", title="loss terms")
    axes[0, 0].legend()
    for k in metrics:
        axes[0, 1].plot(epochs, [r.get(k, np.nan) for r in history], label=k.upper())
    if metrics:
        axes[0, 1].set(xlabel="epoch", ylim=(0, 1), title="clustering quality")
        axes[0, 1].legend()
    return fig


def _tsne(plt, embedding, labels, y, seed):
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(embedding), min(2000, len(embedding)), replace=False))
    Z = np.asarray(embedding, dtype=np.float64)[idx].reshape(len(idx), -1)
    P = TSNE(2, random_state=seed, init="pca", perplexity=min(30.0, (len(idx) - 1) / 3)).fit_transform(Z)
    panels = [("cluster", labels[idx])] + ([("label", np.asarray(y)[idx])] if y is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (title, c) in zip(axes[0], panels):
        ax.scatter(P[:, 0], P[:, 1], c=c, s=3, cmap="tab20")
        ax.set(title=f"t-SNE of the embedding, coloured by {title}", xticks=[], yticks=[])
    return fig


def _as_images(a):
    """(n, H, W) for display: grayscale kept, colour (n, C, H, W) reduced to channel mean."""
    a = np.asarray(a, dtype=np.float64)
    return a.mean(1) if a.ndim == 4 else a


def _grid(plt, rows, title, cols=10):
    n = max(len(r) for r in rows)
    cols = min(cols, n)
    grid_rows = sum(-(-len(r) // cols) for r in rows)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(cols * 0.8, grid_rows * 0.8), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    r0 = 0
    for r in rows:
        for i, img in enumerate(r):
            axes[r0 + i // cols, i % cols].imshow(img, cmap="gray")
        r0 += -(-len(r) // cols)
    fig.suptitle(title)
    return fig


def _soft_assignments(est, X, embedding):
    """(N, K) soft assignments: ``est.soft_assign(embedding)`` (DBC, DCEC) or ``est.predict_proba(X)``."""
    if hasattr(est, "soft_assign"):
        return np.asarray(est.soft_assign(np.asarray(embedding)))
    if hasattr(est, "predict_proba"):
        return np.asarray(est.predict_proba(X))
    return None


def _first_filters(est):
    for module in getattr(est, "modules_", {}).values():
        for value in module.state_dict().values():
            if np.ndim(value) == 4:
                return np.asarray(value)[:64]
    return None


def _confusion(plt, y, labels):
    from scipy.optimize import linear_sum_assignment

    classes, t = np.unique(y, return_inverse=True)
    clusters, p = np.unique(labels, return_inverse=True)
    w = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    np.add.at(w, (t, p), 1)
    rows, cols = linear_sum_assignment(-w)
    order = list(cols[np.argsort(rows)]) + [j for j in range(len(clusters)) if j not in cols]
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(w[:, order], cmap="Blues")
    ax.set(xlabel="cluster (matched order)", ylabel="class", title="confusion after Hungarian matching",
           xticks=range(len(order)), xticklabels=[str(clusters[j]) for j in order],
           yticks=range(len(classes)), yticklabels=[str(c) for c in classes])
    fig.colorbar(im, ax=ax)
    return fig
