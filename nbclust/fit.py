"""``python -m nbclust.fit``: cluster an image data set with one method and write the results.

Exit status: 0 on success, 2 on a bad argument or bad data (one line ``error: ...`` on stderr,
nothing written), 130 when interrupted by Ctrl-C (a checkpoint is written first when an epoch
has finished; continue with ``--resume DIR``).  ``main(argv)`` returns 0 on success and raises
``SystemExit`` otherwise.  Heavy modules (numpy, numba, sklearn) are imported only after the
arguments are parsed, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from nbclust import __version__

from nbclust.registry import BACKENDS, DATASETS, FEATURES, METHODS  # import-light: no numpy here

CHECKPOINT = "checkpoint.npz"
DEFAULTS = {
    "data": "digits", "data_home": None, "download": False, "n_clusters": None, "backend": "cpu",
    "threads": None, "seed": 0, "out": None, "plot": False, "checkpoint_every": 10, "quiet": False,
    "param": [], "features": "none",
}


class _ArgError(Exception):
    """A usage error from argparse, reported as one ``error:`` line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _ArgError(f"{message} (see --help)")


def method_flags() -> dict:
    """``{parameter: (flag, {method: Param})}``: one flag per hyperparameter name of the registered
    methods' tables (:mod:`nbclust.methods.params`, read without importing the methods)."""
    from nbclust.methods.params import read_hyperparameters

    out: dict = {}
    for method, entry in METHODS.items():
        table = read_hyperparameters(entry[0], entry[1])
        for p in table or ():
            if p.flag:
                out.setdefault(p.name, ("--" + p.name.replace("_", "-"), {}))[1][method] = p
    return out


def _flag_help(by_method: dict) -> str:
    """``dbc, fcae-kmeans: what (default: 20); dctl: what else (default: 10; paper: 5)``."""
    groups: dict = {}
    for method, p in by_method.items():
        groups.setdefault(p.doc, []).append((method, p))
    parts = []
    for doc, entries in groups.items():
        texts = [_value_text(p.default) + (f"; paper: {_value_text(p.paper)}" if p.paper_differs else "")
                 for _, p in entries]
        if len(set(texts)) == 1:
            default = f"default: {texts[0]}"
        else:
            default = "default: " + ", ".join(f"{m} {t}" for (m, _), t in zip(entries, texts))
        parts.append(f"{', '.join(m for m, _ in entries)}: {doc} ({default})")
    return "; ".join(parts).replace("%", "%%")


def _value_text(value) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def build_parser() -> argparse.ArgumentParser:
    S = argparse.SUPPRESS
    p = _Parser(
        prog="python -m nbclust.fit", argument_default=S,
        description="Cluster images with a deep clustering method; print ACC/NMI/ARI and write the "
        "results (metrics.json, labels, embedding, centres, model, history, config) to --out.",
        epilog="Precedence: defaults < --config file < checkpoint (with --resume) < command line.",
    )
    p.add_argument("--method", choices=list(METHODS), help="clustering method (required; kmeans = "
                   "sklearn KMeans on raw pixels, n_init=20; acpic = AC-PIC agglomerative clustering)")
    p.add_argument("--data", metavar="NAME|PATH", help=f"data set name ({', '.join(DATASETS)}) or a "
                   ".npz/.npy/IDX file or PNG folder (default: digits)")
    p.add_argument("--data-home", metavar="DIR", help="first folder searched for named data sets "
                   "(default: $NBCLUST_DATA, ~/.cache/nbclust, /usr/share/datasets)")
    p.add_argument("--download", action="store_true", help="download a missing named data set (default: off)")
    p.add_argument("--features", choices=FEATURES, help="what the method clusters: none = the images' "
                   "pixels (default); dsift-pca = dense SIFT (VLFeat's vl_dsift) -> PCA(300) features, as DCTL "
                   "(computed once per data set, cached in $NBCLUST_CACHE/features or ~/.cache/nbclust/features); "
                   "kmeans gets the (N, 300) matrix, image methods an (N, 1, 1, 300) array")
    p.add_argument("--n-clusters", type=int, metavar="K", help="number of clusters (default: the number "
                   "of label values when the data have labels; required otherwise)")
    g = p.add_argument_group("method hyperparameters (from each method's table; default: the method's own, "
                             "the paper's value unless noted; error if the method lacks one)")
    for name, (flag, by_method) in method_flags().items():
        types = {q.cli_type for q in by_method.values()}
        if len(types) != 1:
            raise TypeError(f"{flag}: the methods' tables give it different types {types}")
        typ = types.pop()
        kw = {"help": _flag_help(by_method)}
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = typ
            choices = [q.choices for q in by_method.values()]
            if all(c is not None for c in choices):
                kw["choices"] = list(dict.fromkeys(c for cs in choices for c in cs))
            else:
                path = any("path" in q.types for q in by_method.values())
                kw["metavar"] = "FILE" if path else {int: "N", float: "X", str: "TEXT"}[typ]
        g.add_argument(flag, **kw)
    g.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="any other estimator parameter; VALUE is a TOML literal (repeatable)")
    p.add_argument("--backend", choices=BACKENDS, help="array backend (default: cpu)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for Numba and BLAS (default: all)")
    p.add_argument("--seed", type=int, help="random seed: same seed, same labels (default: 0)")
    p.add_argument("--out", metavar="DIR", help="output folder, must be new or empty "
                   "(default: ./nbclust-runs/<method>-<data>-<timestamp>)")
    p.add_argument("--plot", action="store_true", help="also write PNG plots (needs matplotlib; default: off)")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="write DIR/checkpoint.npz every N "
                   "epochs, 0 = only on Ctrl-C (default: 10)")
    p.add_argument("--resume", metavar="DIR", help="continue the run whose checkpoint is in DIR "
                   "(its options are reused; results go to DIR unless --out is given)")
    p.add_argument("--config", metavar="FILE", help="TOML file of options (keys as the long options, "
                   "e.g. n_clusters = 10); command-line flags override it")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the final table (default: off)")
    p.add_argument("--version", action="version", version=f"nbclust {__version__}")
    return p


def main(argv=None) -> int:
    """Run the command line; 0 on success, ``SystemExit`` (2 or 130) otherwise."""
    try:
        return _run(argv)
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc.args[0] if exc.args else 'no epoch finished, nothing saved'}", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, OSError, _ArgError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from None


# ------------------------------------------------------------------------------- options
def _settings(argv):
    """The merged options (dict) and the checkpoint to resume from (or None)."""
    given = vars(build_parser().parse_args(argv))
    if "data" in given:
        given["data"] = _norm_data(given["data"])
    opts = dict(DEFAULTS)
    if "config" in given:
        opts.update(_read_config(given["config"]))
    checkpoint = None
    if "resume" in given:
        checkpoint, saved = _read_checkpoint(Path(given["resume"]))
        for key in ("method", "data", "features"):
            if key in given and given[key] != saved.get(key, DEFAULTS.get(key)):
                raise ValueError(
                    f"--resume {given['resume']}: the checkpoint is from {key} {saved.get(key, DEFAULTS.get(key))!r}, "
                    f"not {given[key]!r}; resume without --{key} or start a new run"
                )
        opts.update(saved)
        opts["out"] = given.get("out", given["resume"])
    opts.update(given)
    if opts.get("method") is None:
        raise ValueError("--method is required (one of " + ", ".join(METHODS) + ")")
    for key in ("epochs", "batch_size", "lr"):
        if key in opts and not opts[key] > 0:
            raise ValueError(f"--{key.replace('_', '-')} must be > 0, got {opts[key]}")
    if "pretrain_epochs" in opts and opts["pretrain_epochs"] < 0:
        raise ValueError(f"--pretrain-epochs must be >= 0, got {opts['pretrain_epochs']}")
    if opts["checkpoint_every"] < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {opts['checkpoint_every']}")
    if opts["threads"] is not None and opts["threads"] < 1:
        raise ValueError(f"--threads must be >= 1, got {opts['threads']}")
    return opts, checkpoint


def _norm_data(data):
    """Data set names stay; an existing path becomes absolute (config.toml reruns from anywhere)."""
    data = str(data)
    return data if data in DATASETS or not os.path.exists(data) else os.path.abspath(data)


def _read_config(path):
    import tomllib

    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {path}: not valid TOML ({exc})") from None
    actions = {a.dest: a for a in build_parser()._actions if a.dest not in ("help", "version", "config", "resume")}
    out = {}
    for key, value in cfg.items():
        k = key.replace("-", "_")
        if k not in actions:
            raise ValueError(f"--config {path}: unknown key {key!r}")
        _check_config_value(path, key, actions[k], value)
        out[k] = _norm_data(value) if k == "data" else value
    return out


def _check_config_value(path, key, action, value):
    """The type and choices argparse would enforce on the command line."""
    if isinstance(action, argparse._AppendAction):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        want = "a list of strings"
    elif action.nargs == 0:  # store_true, --joint/--no-joint
        ok, want = isinstance(value, bool), "true or false"
    elif action.type is int:
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif action.type is float:
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        ok, want = isinstance(value, str), "a string"
    if ok and action.choices is not None and value not in action.choices:
        ok, want = False, "one of " + ", ".join(action.choices)
    if not ok:
        raise ValueError(f"--config {path}: {key} must be {want}, got {value!r}")


def _read_checkpoint(folder):
    from nbclust.io import load_state

    path = folder / CHECKPOINT
    if not path.exists():
        raise ValueError(f"--resume {folder}: no {CHECKPOINT} there (only runs with checkpoints can be resumed)")
    arrays, meta = load_state(path)
    if "nbclust_fit" not in meta:
        raise ValueError(f"--resume {folder}: {CHECKPOINT} was not written by python -m nbclust.fit")
    return (arrays, meta), meta.pop("nbclust_fit")


def _estimator(opts):
    """The estimator built from ``opts``; a clear error for options the method does not have."""
    from nbclust.methods import estimator_class

    try:
        cls = estimator_class(opts["method"])
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"method {opts['method']!r} is not available in this installation ({exc})") from None
    kwargs = {"random_state": opts["seed"], "verbose": 0}
    if opts["n_clusters"] is not None:
        kwargs["n_clusters"] = opts["n_clusters"]
    if "backend" in cls().get_params():
        kwargs["backend"] = opts["backend"]
    elif opts["backend"] != "cpu":
        raise ValueError(f"--backend does not apply to method {opts['method']!r}")
    flags = {param: flag for param, (flag, _) in method_flags().items()}
    kwargs.update({param: opts[param] for param in flags if param in opts})
    for item in opts["param"]:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param {item!r}: expected NAME=VALUE")
        flags[key] = f"--param {key}"
        kwargs[key] = _toml_value(value)
    valid = cls().get_params()
    for key in kwargs:
        if key not in valid:
            own = ", ".join(k for k in valid if k not in ("random_state", "verbose"))
            raise ValueError(f"{flags.get(key, key)} does not apply to method {opts['method']!r} (its parameters: {own})")
    return cls(**kwargs)


def _toml_value(text):
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _toml(opts) -> str:
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


# ---------------------------------------------------------------------------------- run
def _out_dir(opts, resuming):
    if opts["out"] is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = Path(str(opts["data"])).name.replace(".", "_")
        opts["out"] = str(Path("nbclust-runs") / f"{opts['method']}-{name}-{stamp}-{os.getpid()}")
    out = Path(opts["out"])
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; name a new folder")
    if out.is_dir() and any(out.iterdir()) and not (resuming and (out / CHECKPOINT).exists()):
        hint = f" or --resume {out}" if (out / CHECKPOINT).exists() else ""
        raise ValueError(f"--out {out} already exists and is not empty; choose a new folder{hint}")
    return out


def _run(argv):
    opts, checkpoint = _settings(argv)
    out = _out_dir(opts, checkpoint is not None)
    if opts["plot"]:
        from nbclust.plots import require_matplotlib

        require_matplotlib()
    import numpy as np

    from nbclust import datasets

    if opts["backend"] != "cpu" and opts["method"] != "kmeans":
        from nbclust.backend import get_backend

        get_backend(opts["backend"])  # ValueError for cuda without CuPy or GPU
    X, y = datasets.load(opts["data"], data_home=opts["data_home"], download=opts["download"])
    if opts["n_clusters"] is None:
        if y is None:
            raise ValueError("--n-clusters is required: the data have no labels to count classes from")
        opts["n_clusters"] = int(len(np.unique(y)))
    if not 2 <= opts["n_clusters"] <= len(X):
        raise ValueError(f"--n-clusters must be between 2 and the number of images ({len(X)}), got {opts['n_clusters']}")
    est = _estimator(opts)
    _set_threads(opts["threads"])
    feature_info = None
    if opts["features"] != "none":
        X, feature_info = _features(opts, X, est)
    state = {"last": None, "out": out}
    t0 = time.perf_counter()
    from nbclust.progress import Progress

    progress = Progress(_total_epochs(est), quiet=opts["quiet"])

    def callback(est_, record):
        if hasattr(est_, "training_state"):
            arrays, meta = est_.training_state()
            meta = json.loads(json.dumps(meta))
            meta["nbclust_fit"] = {k: v for k, v in opts.items() if k not in ("resume", "config")}
            state["last"] = ({k: np.array(v, copy=True) for k, v in arrays.items()}, meta)
            every = opts["checkpoint_every"]
            if every and record["epoch"] % every == 0:
                _write_checkpoint(out, state["last"])
        progress(est_, record)

    try:
        with _thread_limit(opts["threads"]):
            est.fit(X, y, callback=callback, resume=checkpoint)
    except KeyboardInterrupt:
        progress.close()
        if state["last"] is None:
            raise
        _write_checkpoint(out, state["last"])
        epoch = state["last"][1].get("epoch")
        raise KeyboardInterrupt(f"checkpoint of epoch {epoch} saved; continue with --resume {out}") from None
    progress.close()
    metrics = _write_outputs(out, opts, est, X, y, time.perf_counter() - t0, feature_info)
    _print_summary(opts, metrics, out)
    return 0


def _features(opts, X, est):
    """(the estimator's input for ``--features``, a record of how the features were made)."""
    from nbclust.features import as_estimator_input, features_for

    with _thread_limit(opts["threads"]):
        F, info = features_for(opts["features"], X, return_info=True)
    if not opts["quiet"]:
        how = "read from cache" if info["cached"] else f"computed ({_seconds_text(info['seconds'])})"
        print(f"[features] {opts['features']}: {F.shape[0]} x {F.shape[1]} ({info['n_dsift']}-d descriptors), {how}",
              file=sys.stderr, flush=True)
    return as_estimator_input(F, est), {"features": opts["features"], "feature_dim": int(F.shape[1]),
                                        "feature_cached": info["cached"], "feature_seconds": info["seconds"]}


def _seconds_text(seconds):
    return ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) if isinstance(seconds, dict) else "?"


def _total_epochs(est):
    if hasattr(est, "epoch_budget"):
        return est.epoch_budget()
    p = est.get_params()
    return int(p.get("epochs", 1) or 0) + int(p.get("pretrain_epochs", 0) or 0)


def _set_threads(n):
    if n is not None:
        import numba

        if n > numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"--threads {n} exceeds the {numba.config.NUMBA_NUM_THREADS} threads available")
        numba.set_num_threads(n)


def _thread_limit(n):
    import contextlib

    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(n)


def _write_checkpoint(out, state):
    from nbclust.io import save_state

    out.mkdir(parents=True, exist_ok=True)
    save_state(out / CHECKPOINT, *state)


def _write_outputs(out, opts, est, X, y, wall, feature_info=None):
    """Write every result into a temporary folder beside ``out`` and rename it onto ``out``."""
    import platform
    import tempfile

    import numba
    import numpy as np
    import sklearn

    from nbclust import io
    from nbclust.metrics import ari, cluster_acc, nmi

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        labels = np.asarray(est.labels_, dtype=np.int64)
        embedding = est.transform(X)
        history = list(est.history_)
        metrics = {"method": opts["method"], "data": str(opts["data"]), "n_images": int(len(X)),
                   "image_shape": list(np.shape(X)[1:]), "n_clusters": int(opts["n_clusters"]),
                   "features": opts["features"], **(feature_info or {})}
        if y is not None:
            metrics.update(acc=cluster_acc(y, labels), nmi=nmi(y, labels), ari=ari(y, labels))
        metrics.update(
            wall_seconds=round(wall, 3), epochs=len(history),
            train_seconds=round(sum(r.get("seconds", 0.0) for r in history), 3),
            params={k: v for k, v in est.get_params().items() if isinstance(v, (int, float, str, bool, type(None)))},
            versions={"nbclust": __version__, "numpy": np.__version__, "numba": numba.__version__,
                      "scikit-learn": sklearn.__version__, "python": platform.python_version()},
        )
        io.write_text(tmp / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        io.write_npy(tmp / "labels.npy", labels)
        rows = ["index,label" + (",true_label" if y is not None else "")]
        rows += [f"{i},{lab}" + (f",{y[i]}" if y is not None else "") for i, lab in enumerate(labels)]
        io.write_text(tmp / "labels.csv", "\n".join(rows) + "\n")
        io.write_npy(tmp / "embedding.npy", embedding)
        io.write_npy(tmp / "centers.npy", np.asarray(est.cluster_centers_))
        est.save(tmp / "model.npz")
        io.write_text(tmp / "history.csv", _history_csv(history))
        io.write_text(tmp / "config.toml", _toml(opts))
        if opts["plot"]:
            from nbclust.plots import make_plots

            make_plots(tmp, est, X, y, labels, embedding, history, seed=opts["seed"])
        tmp.chmod(0o777 & ~io.current_umask())  # mkdtemp makes it 0700
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metrics


def _replace_dir(tmp, out):
    """Rename ``tmp`` onto ``out``; an existing ``out`` (checkpoint only, or empty) is removed."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _history_csv(history) -> str:
    keys = []
    for r in history:
        keys += [k for k in r if k not in keys]
    lines = [",".join(keys)]
    for r in history:
        lines.append(",".join("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k])) for k in keys))
    return "\n".join(lines) + "\n"


def _print_summary(opts, metrics, out):
    from nbclust.progress import summary_table

    rows = {"method": opts["method"], "data": metrics["data"], "images": metrics["n_images"],
            "clusters": metrics["n_clusters"]}
    if opts["features"] != "none":
        rows["features"] = f"{opts['features']} ({metrics['feature_dim']}-d)"
    for k in ("acc", "nmi", "ari"):
        if k in metrics:
            rows[k.upper()] = metrics[k]
    rows.update({"epochs": metrics["epochs"], "fit time": f"{metrics['wall_seconds']:.1f}s", "output": str(out)})
    print(summary_table(rows))


if __name__ == "__main__":
    sys.exit(main())
