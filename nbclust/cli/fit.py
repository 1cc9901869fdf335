"""``python -m nbclust.fit``: cluster an image data set with one method and write the results.

Exit status: 0 on success, 2 on a bad argument or bad data (one line ``error: ...`` on stderr,
nothing written), on a diverging fit (the estimators' ``FloatingPointError``: ``error: loss became
NaN in epoch N of phase P; lower --lr``, the last checkpoint kept) and on a failed write (the file
and the cause named, the training state saved where it can be); 130 when interrupted by Ctrl-C
(the latest training state is saved first, also during the final write; continue with ``--resume
DIR``).  The output folder: :mod:`nbclust.cli.rundir`; its files: :mod:`nbclust.cli.results`.
``main(argv)`` returns 0 on success and raises ``SystemExit`` otherwise.  Heavy modules (numpy,
numba, sklearn) are imported only after the arguments are parsed, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from nbclust import __version__

from nbclust.cli.rundir import CHECKPOINT, RunDir
from nbclust.registry import BACKENDS, DATASETS, FEATURES, METHODS  # import-light: no numpy here
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
    p.add_argument("--out", metavar="DIR", help="output folder, new or empty, checked and locked before the "
                   "first epoch; the results are renamed into it, never over it "
                   "(default: ./nbclust-runs/<method>-<data>-<timestamp>-<pid>)")
    p.add_argument("--plot", action="store_true", help="also write PNG plots (needs matplotlib; default: off)")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="write DIR/checkpoint.npz every N "
                   "epochs, 0 = only on Ctrl-C (default: 10)")
    p.add_argument("--resume", metavar="DIR", help="continue the run whose checkpoint is in DIR (its options "
                   "are reused; results go to DIR unless --out is given; epoch caps and stopping rules may "
                   "change, --data may name the same content elsewhere, nothing else that changes the model)")
    p.add_argument("--config", metavar="FILE", help="TOML file of options (keys as the long options, "
                   "e.g. n_clusters = 10); command-line flags override it")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the final table (default: off)")
    p.add_argument("--version", action="version", version=f"nbclust {__version__}")
    return p


def main(argv=None) -> int:
    """Run the command line; 0 on success, ``SystemExit`` (2 or 130) otherwise."""
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc.args[0] if exc.args else 'no epoch finished, nothing saved'}", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, OSError, FloatingPointError, _ArgError) as exc:  # FloatingPointError: a diverging fit
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from None


# ------------------------------------------------------------------------------- options
def _settings(argv):
    """The merged options (dict) and the run to resume (a :class:`Resume`, or None)."""
    given = vars(build_parser().parse_args(argv))
    if "data" in given:
        given["data"] = _norm_data(given["data"])
    opts = dict(DEFAULTS)
    if "config" in given:
        opts.update(_read_config(given["config"]))
    resume = None
    if "resume" in given:
        resume = _read_checkpoint(Path(given["resume"]))
        for key in ("method", "features"):
            if key in given and given[key] != resume.opts.get(key, DEFAULTS.get(key)):
                raise ValueError(
                    f"--resume {given['resume']}: the checkpoint is from {key} {resume.opts.get(key, DEFAULTS.get(key))!r}, "
                    f"not {given[key]!r}; resume without --{key} or start a new run"
                )
        opts.update(resume.opts)
        opts["out"] = given.get("out", given["resume"])
        if "param" in given:  # added to the run's, not instead of them
            given["param"] = list(resume.opts.get("param", [])) + given["param"]
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
    if not 0 <= opts["seed"] < 2**32:
        raise ValueError(f"--seed must be between 0 and 2**32 - 1, got {opts['seed']}")
    return opts, resume


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


class Resume:
    """The run in ``--resume DIR``: its folder, training state, options and run record."""

    def __init__(self, folder, state, opts, run):
        self.folder, self.state, self.opts, self.run = folder, state, opts, run

    @property
    def epoch(self):
        return self.state[1].get("epoch")


def _read_checkpoint(folder):
    from nbclust.data.io import load_state

    path = folder / CHECKPOINT
    if not path.exists():
        raise ValueError(f"--resume {folder}: no {CHECKPOINT} there (only runs with checkpoints can be resumed)")
    arrays, meta = load_state(path)
    saved = meta.pop("nbclust_fit", None)
    if not isinstance(saved, dict) or saved.get("method") not in METHODS:
        raise ValueError(f"--resume {folder}: {CHECKPOINT} was not written by python -m nbclust.fit")
    run = meta.pop("nbclust_run", None)
    return Resume(folder, (arrays, meta), saved, run if isinstance(run, dict) else {})


def _resume_changes(opts, resume):
    """``{param: {"from": old, "to": new}}``: the schedule parameters this resume changes (epoch
    caps, patiences, stopping thresholds: the entries of the estimator's table declared
    ``schedule=True``); a ``ValueError`` naming the flags when it would change anything else."""
    old_est, new_est = _estimator({**DEFAULTS, **resume.opts}), _estimator(opts)
    schedule = set(getattr(getattr(new_est, "hyperparameters", None), "schedule", ()))
    free = schedule | set(getattr(new_est, "_model_free_params", ())) | {"verbose"}
    old, new = old_est.get_params(), new_est.get_params()
    flags = {"n_clusters": "--n-clusters", "random_state": "--seed", "backend": "--backend",
             **{param: flag for param, (flag, _) in method_flags().items()}}

    def flag(k):
        return flags.get(k, f"--param {k}")

    model = [k for k in new if k not in free and not _same(old.get(k), new[k])]
    if model:
        what = ", ".join(f"{flag(k)} {_value_text(new[k])} (the run has {_value_text(old.get(k))})" for k in model)
        may = ", ".join(flag(k) for k in sorted(schedule)) or "nothing"
        raise ValueError(f"--resume {resume.folder}: {what} would change the model; resume without it or start "
                         f"a new run (what may change on resume: {may})")
    return {k: {"from": old.get(k), "to": new[k]} for k in sorted(schedule) if not _same(old.get(k), new[k])}


def _same(a, b) -> bool:
    import numpy as np

    try:
        return bool(a == b)
    except (ValueError, TypeError):  # arrays
        return np.array_equal(np.asarray(a), np.asarray(b))


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


# ---------------------------------------------------------------------------------- run
def _out_path(opts) -> Path:
    if opts["out"] is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = Path(str(opts["data"])).name.replace(".", "_")
        opts["out"] = str(Path("nbclust-runs") / f"{opts['method']}-{name}-{stamp}-{os.getpid()}")
    return Path(opts["out"])


def _run(argv):
    opts, resume = _settings(argv)
    command = "python -m nbclust.fit " + shlex.join(str(a) for a in argv)
    changes = _resume_changes(opts, resume) if resume is not None else {}
    if opts["plot"]:
        from nbclust.cli.plots import require_matplotlib

        require_matplotlib()
    out = RunDir(_out_path(opts))
    out.claim(run_id=resume.run.get("id") if resume else None,
              in_place=resume is not None and _same_folder(out.path, resume.folder))
    try:
        return _fit_and_write(opts, resume, changes, out, command)
    finally:
        out.release()


def _same_folder(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _fit_and_write(opts, resume, changes, out, command):
    import numpy as np

    from nbclust.data import datasets

    if opts["backend"] != "cpu" and opts["method"] != "kmeans":
        from nbclust.engine.backend import get_backend

        get_backend(opts["backend"])  # ValueError for cuda without CuPy or GPU
    X, y = _load_data(opts, resume)
    run = _run_record(opts, resume, changes, datasets.content_digest(X), command)
    if opts["n_clusters"] is None:
        if y is None:
            raise ValueError("--n-clusters is required: the data have no labels to count classes from")
        opts["n_clusters"] = int(len(np.unique(y)))
    if not 2 <= opts["n_clusters"] <= len(X):
        raise ValueError(f"--n-clusters must be between 2 and the number of images ({len(X)}), got {opts['n_clusters']}")
    est = _estimator(opts)
    _check_path_params(opts, est)
    _set_threads(opts["threads"])
    feature_info = None
    if opts["features"] != "none":
        X, feature_info = _features(opts, X, est)
    state = {"last": None, "epochs": 0}
    t0 = time.perf_counter()
    from nbclust.cli.progress import Progress

    progress = Progress(est, quiet=opts["quiet"])

    def callback(est_, record):
        state["epochs"] += 1
        if hasattr(est_, "training_state"):
            arrays, meta = est_.training_state()
            meta = json.loads(json.dumps(meta))
            meta["nbclust_fit"] = {k: v for k, v in opts.items() if k not in ("resume", "config")}
            meta["nbclust_run"] = run
            state["last"] = ({k: np.array(v, copy=True) for k, v in arrays.items()}, meta)
            every = opts["checkpoint_every"]
            if every and record["epoch"] % every == 0:
                out.write_checkpoint(state["last"])
        progress(est_, record)

    try:
        with _thread_limit(opts["threads"]):
            est.fit(X, y, callback=callback, resume=resume.state if resume else None)
    except KeyboardInterrupt:
        progress.close()
        _save_and_stop(out, state["last"])
    except OSError as exc:  # a checkpoint that could not be written (disk full, ...)
        progress.close()
        _save_and_stop(out, state["last"], exc)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        if resume is None or state["epochs"]:
            raise
        raise ValueError(f"--resume {resume.folder}: {CHECKPOINT} is not a complete training state of "
                         f"{opts['method']} ({type(exc).__name__}: {exc}); it was written by another "
                         "version of nbclust or changed since") from None
    progress.close()
    from nbclust.cli import results

    try:
        metrics = results.write(out, opts, est, X, y, time.perf_counter() - t0, feature_info, run)
    except KeyboardInterrupt:
        _save_and_stop(out, state["last"], writing=True)
    except OSError as exc:
        _save_and_stop(out, state["last"], exc, writing=True)
    results.print_summary(opts, metrics, out.path)
    return 0


def _save_and_stop(out, last, exc=None, writing=False):
    """After Ctrl-C (``exc`` None) or a failed write (``exc``): save the latest training state
    (``DIR/checkpoint.npz``, else a new temporary folder) and stop, saying where it went."""
    if last is None:
        if exc is not None:
            raise exc
        raise KeyboardInterrupt(*(["while the results were written; nothing saved (the method keeps no "
                                   "training state)"] if writing else []))
    epoch = last[1].get("epoch")
    where, failure = out.save_state_somewhere(last)
    if where is None:
        lost = f"the training state of epoch {epoch} could not be saved ({failure})"
        raise KeyboardInterrupt(lost) if exc is None else ValueError(f"{exc}; {lost}")
    again = f"--resume {where}" + ("" if where == out.path else f" --out {out.path}")
    if exc is None:
        when = " (interrupted while the results were written)" if writing else ""
        raise KeyboardInterrupt(f"checkpoint of epoch {epoch} saved{when}; continue with {again}")
    raise ValueError(f"{exc}; the training state of epoch {epoch} is saved in {where / CHECKPOINT}: free some "
                     f"space, then continue with python -m nbclust.fit {again}")


def _load_data(opts, resume):
    from nbclust.data import datasets

    data = opts["data"]
    if resume is not None and data not in DATASETS and not os.path.exists(data):
        raise ValueError(f"--resume {resume.folder}: the run's data {data} is not there any more; "
                         "give its new place with --data PATH")
    return datasets.load(data, data_home=opts["data_home"], download=opts["download"])


def _run_record(opts, resume, changes, digest, command) -> dict:
    """The run's identity and story (saved in its checkpoints and metrics.json): its id, the
    SHA-256 of its images, the commands that ran it and what each resume changed.  On resume
    the images must be the same content (the path may differ)."""
    import uuid

    if resume is None:
        return {"id": uuid.uuid4().hex, "data_sha256": digest, "commands": [command], "resumes": []}
    run = resume.run
    if run.get("data_sha256") not in (None, digest):
        was = resume.opts.get("data")
        moved = "" if was == opts["data"] else f" (the run was started on {was})"
        raise ValueError(f"--resume {resume.folder}: the content of the data {opts['data']} differs from the data "
                         f"of the run{moved}; resume with the run's data or start a new run")
    return {**run, "id": run.get("id") or uuid.uuid4().hex, "data_sha256": digest,
            "commands": [*run.get("commands", []), command],
            "resumes": [*run.get("resumes", []), {"at_epoch": resume.epoch, "command": command, "changed": changes}]}


def _check_path_params(opts, est):
    """File-valued hyperparameters (DEPICT's ``--weights``) must be readable ``.npz`` files of arrays."""
    import numpy as np

    params = est.get_params()
    for param, (flag, by_method) in method_flags().items():
        p, value = by_method.get(opts["method"]), params.get(param)
        if p is None or "path" not in p.types or not isinstance(value, (str, os.PathLike)):
            continue
        try:
            f = np.load(value, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not named arrays")
            with f:
                for name in f.files:
                    f[name]
        except FileNotFoundError:
            raise ValueError(f"{flag} {value}: no such file") from None
        except Exception as exc:  # a pickle, an object array, not a zip, ...
            reason = "it holds pickled Python objects, which nbclust never loads" if "pickle" in str(exc) else str(exc)
            raise ValueError(f"{flag} {value}: not an .npz file of numeric arrays ({reason})") from None


def _features(opts, X, est):
    """(the estimator's input for ``--features``, a record of how the features were made)."""
    from nbclust.data.features import as_estimator_input, features_for

    with _thread_limit(opts["threads"]):
        F, info = features_for(opts["features"], X, return_info=True)
    if not opts["quiet"]:
        how = "read from cache" if info["cached"] else f"computed ({_seconds_text(info['seconds'])})"
        print(f"[features] {opts['features']}: {F.shape[0]} x {F.shape[1]} ({info['n_dsift']}-d descriptors), {how}",
              file=sys.stderr, flush=True)
    if info.get("dim_reason"):
        print(f"warning: --features {opts['features']}: {info['dim_reason']}", file=sys.stderr, flush=True)
    return as_estimator_input(F, est), {"features": opts["features"], "feature_dim": int(F.shape[1]),
                                        "feature_cached": info["cached"], "feature_seconds": info["seconds"]}


def _seconds_text(seconds):
    return ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) if isinstance(seconds, dict) else "?"


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


if __name__ == "__main__":
    sys.exit(main())
