"""The results of a ``python -m nbclust.fit`` run: the files of its output folder and its summary.

``write`` fills the staging folder of :meth:`nbclust.cli.rundir.RunDir.results` (``metrics.json``,
``labels.npy``, ``labels.csv``, ``embedding.npy``, ``centers.npy``, ``model.npz``, ``history.csv``,
``config.toml`` and, with ``--plot``, the figures), which then replace their names in ``DIR``.
``metrics.json`` also holds the run's story: the commands that ran it (the first started it, the
others resumed it), what each resume changed, the SHA-256 of its images, and the number of
non-empty clusters; ``python -m nbclust.experiments --record DIR`` reads it.
"""

from __future__ import annotations

import json
import sys
import time

from nbclust import __version__

def write(out, opts, est, X, y, wall, feature_info, run) -> dict:
    """Write every result of the fitted ``est`` into ``out`` (a :class:`~nbclust.cli.rundir.RunDir`); the metrics."""
    import platform

    import numba
    import numpy as np
    import sklearn

    from nbclust.data import io
    from nbclust.methods.metrics import ari, cluster_acc, nmi

    with out.results() as stage:
        labels = np.asarray(est.labels_, dtype=np.int64)
        embedding = est.transform(X)
        history = list(est.history_)
        metrics = {"method": opts["method"], "data": str(opts["data"]), "n_images": int(len(X)),
                   "image_shape": list(np.shape(X)[1:]), "n_clusters": int(opts["n_clusters"]),
                   "n_nonempty_clusters": int(len(np.unique(labels))),
                   "features": opts["features"], **(feature_info or {})}
        if y is not None:
            metrics.update(acc=cluster_acc(y, labels), nmi=nmi(y, labels), ari=ari(y, labels))
        metrics.update(
            wall_seconds=round(wall, 3), epochs=len(history),
            train_seconds=round(sum(r.get("seconds", 0.0) for r in history), 3),
            threads=int(opts["threads"] or numba.get_num_threads()),
            finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            params={k: v for k, v in est.get_params().items() if isinstance(v, (int, float, str, bool, type(None)))},
            versions={"nbclust": __version__, "numpy": np.__version__, "numba": numba.__version__,
                      "scikit-learn": sklearn.__version__, "python": platform.python_version()},
            command=run["commands"][0], commands=run["commands"], resumes=run["resumes"],
            run_id=run["id"], data_sha256=run["data_sha256"],
        )
        io.write_text(stage / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        io.write_npy(stage / "labels.npy", labels)
        rows = ["index,label" + (",true_label" if y is not None else "")]
        rows += [f"{i},{lab}" + (f",{y[i]}" if y is not None else "") for i, lab in enumerate(labels)]
        io.write_text(stage / "labels.csv", "\n".join(rows) + "\n")
        io.write_npy(stage / "embedding.npy", embedding)
        io.write_npy(stage / "centers.npy", np.asarray(est.cluster_centers_))
        est.save(stage / "model.npz")
        io.write_text(stage / "history.csv", history_csv(history))
        io.write_text(stage / "config.toml", config_toml(opts))
        if opts["plot"]:
            from nbclust.cli.plots import make_plots

            make_plots(stage, est, X, y, labels, embedding, history, seed=opts["seed"])
    return metrics


def config_toml(opts) -> str:
    """Flat TOML of the options needed to rerun (strings via JSON escapes, which TOML accepts)."""
    lines = [f"# python -m nbclust.fit --config config.toml  (nbclust {__version__})"]
    for k, v in opts.items():
        if v is None or k in ("out", "resume", "config"):
            continue
        if isinstance(v, (bool, int, float)):
            lines.append(f"{k} = {json.dumps(v)}")
        elif isinstance(v, list):
            lines.append(f"{k} = [{', '.join(json.dumps(str(x)) for x in v)}]")
        else:
            lines.append(f"{k} = {json.dumps(str(v))}")
    return "\n".join(lines) + "\n"


def history_csv(history) -> str:
    keys = []
    for r in history:
        keys += [k for k in r if k not in keys]
    lines = [",".join(keys)]
    for r in history:
        lines.append(",".join("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k])) for k in keys))
    return "\n".join(lines) + "\n"


def print_summary(opts, metrics, out):
    """The final table on stdout; a warning on stderr when clusters came out empty."""
    from nbclust.cli.progress import summary_table

    asked, used = metrics["n_clusters"], metrics["n_nonempty_clusters"]
    rows = {"method": opts["method"], "data": metrics["data"], "images": metrics["n_images"],
            "clusters": asked if used == asked else f"{asked} asked, {used} non-empty"}
    if opts["features"] != "none":
        rows["features"] = f"{opts['features']} ({metrics['feature_dim']}-d)"
    for k in ("acc", "nmi", "ari"):
        if k in metrics:
            rows[k.upper()] = metrics[k]
    rows.update({"epochs": metrics["epochs"], "fit time": f"{metrics['wall_seconds']:.1f}s", "output": str(out)})
    if used < asked:
        print(f"warning: only {used} of the {asked} clusters are non-empty (labels.npy uses {used} values)",
              file=sys.stderr)
    print(summary_table(rows))
