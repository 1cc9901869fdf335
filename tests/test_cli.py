"""``python -m nbclust.fit``: outputs, options, config, and one clear ``error:`` line per bad input.

Most tests drive ``nbclust.cli.fit.main(argv)`` in-process with the pure-NumPy FakeClusterer
(tests/fake_estimator.py); subprocesses only where the exit status or a traceback matters.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from cli_helpers import FAKE, cli, fake_method, run, small_npz  # noqa: F401  (fake_method: a fixture)
from fake_estimator import FakeClusterer
from nbclust.cli import fit
from nbclust.data.datasets import load
from nbclust.engine.backend import cuda_available

pytestmark = pytest.mark.usefixtures("fake_method")


def test_fake_run_writes_everything(tmp_path, capsys):
    code, out, err = run([*FAKE, "--out", tmp_path / "r", "--seed", "3"], capsys)
    assert code == 0, err
    assert "ACC" in out and "NMI" in out and "ARI" in out and err == ""
    r = tmp_path / "r"
    names = {"metrics.json", "labels.npy", "labels.csv", "embedding.npy", "centers.npy", "model.npz",
             "history.csv", "config.toml"}
    assert names <= {p.name for p in r.iterdir()}
    m = json.loads((r / "metrics.json").read_text())
    assert m["n_images"] == 1797 and m["epochs"] == 3 and 0 <= m["acc"] <= 1
    assert {"nbclust", "numpy", "numba", "python"} <= set(m["versions"])
    labels = np.load(r / "labels.npy")
    x, _ = load("digits")
    np.testing.assert_array_equal(FakeClusterer.load(r / "model.npz").predict(x), labels)
    assert np.load(r / "embedding.npy").shape == (1797, 8)
    assert (r / "history.csv").read_text().splitlines()[0].startswith("phase,epoch,loss")
    assert len((r / "labels.csv").read_text().splitlines()) == 1798
    # rerun from the written config: same labels
    code, _, err = run(["--config", r / "config.toml", "--out", tmp_path / "r2"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "r2" / "labels.npy"), labels)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_config_and_flag_precedence(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('method = "fake"\nepochs = 1\npretrain-epochs = 0\nquiet = true\nseed = 5\n')
    code, _, err = run(["--config", tmp_path / "c.toml", "--epochs", "2", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["epochs"] == 2 and m["params"]["random_state"] == 5
    for text, message in [("colour = 1", "unknown key 'colour'"), ('method = "foo"', "method must be one of"),
                          ('epochs = "two"', "epochs must be an integer"), ("quiet = 1", "quiet must be true or false"),
                          ("lr = [", "not valid TOML")]:
        (tmp_path / "bad.toml").write_text(text + "\n")
        code, _, err = run(["--config", tmp_path / "bad.toml"], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, _, err = run(["--config", tmp_path / "none.toml"], capsys)
    assert code == 2 and "none.toml" in err


def test_progress_lines_and_params(tmp_path, capsys):
    code, out, err = run(["--method", "fake", "--epochs", "2", "--pretrain-epochs", "0", "--alpha", "3",
                          "--param", "sleep=0.0", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[cluster] epoch 1") and "acc=" in lines[0]
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["params"]["alpha"] == 3.0


def test_kmeans_baseline(tmp_path, capsys):
    code, out, err = run(["--method", "kmeans", "--param", "n_init=2", "--quiet", "--out", tmp_path / "k"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "k" / "metrics.json").read_text())["acc"] > 0.6


def test_acpic_baseline_beats_kmeans_on_digits(tmp_path, capsys):
    code, out, err = run(["--method", "acpic", "--quiet", "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["acc"] > 0.85  # measured 0.875; k-means on the same pixels 0.795
    code, _, err = run(["--method", "acpic", "--param", "z=2.0", "--out", tmp_path / "b"], capsys)
    assert code == 2 and "z must be" in err


def test_features_dsift_pca_with_kmeans(tmp_path, capsys, monkeypatch):
    """--features dsift-pca: k-means on the (N, 300) DSIFT -> PCA matrix; features cached and reused."""
    monkeypatch.setenv("NBCLUST_CACHE", str(tmp_path / "cache"))
    assert "--features" in fit.build_parser().format_help()
    argv = ["--method", "kmeans", "--data", "digits", "--features", "dsift-pca", "--param", "n_init=2"]
    code, out, err = run([*argv, "--out", tmp_path / "k"], capsys)
    assert code == 0, err
    assert "[features] dsift-pca: 1797 x 300 (512-d descriptors), computed" in err and "dsift-pca (300-d)" in out
    m = json.loads((tmp_path / "k" / "metrics.json").read_text())
    assert m["features"] == "dsift-pca" and m["feature_dim"] == 300 and not m["feature_cached"]
    assert m["image_shape"] == [300] and m["acc"] > 0.6
    assert np.load(tmp_path / "k" / "embedding.npy").shape == (1797, 300)
    assert 'features = "dsift-pca"' in (tmp_path / "k" / "config.toml").read_text()
    (cached,) = (tmp_path / "cache" / "features").iterdir()
    # rerun from the written config: the features come from the cache, the labels are the same
    code, out, err = run(["--config", tmp_path / "k" / "config.toml", "--quiet", "--out", tmp_path / "k2"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "k2" / "metrics.json").read_text())["feature_cached"] is True
    np.testing.assert_array_equal(np.load(tmp_path / "k2" / "labels.npy"), np.load(tmp_path / "k" / "labels.npy"))
    assert list((tmp_path / "cache" / "features").iterdir()) == [cached]
    # an image method that cannot read the (N, 1, 1, 300) array says so in one error line
    code, _, err = run([*FAKE, "--features", "dsift-pca", "--out", tmp_path / "f"], capsys)
    assert code == 2 and "too small" in err and err.count("\n") == 1 and not (tmp_path / "f").exists()
    # without --features the pixels: the kmeans run's metrics say so
    code, _, err = run(["--method", "kmeans", "--param", "n_init=1", "--quiet", "--out", tmp_path / "p"], capsys)
    assert code == 0 and json.loads((tmp_path / "p" / "metrics.json").read_text())["features"] == "none"


def test_default_output_folder(tmp_path, capsys):
    code, out, err = run(FAKE, capsys)
    assert code == 0, err
    (run_dir,) = (tmp_path / "nbclust-runs").iterdir()
    assert run_dir.name.startswith("fake-digits-") and (run_dir / "metrics.json").exists()


def _bad_cases(tmp):
    small_npz(tmp / "ok.npz")
    data = (tmp / "ok.npz").read_bytes()
    (tmp / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp / "trunc-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    np.save(tmp / "oned.npy", np.zeros(10))
    np.save(tmp / "fived.npy", np.zeros((2, 1, 1, 8, 8)))
    small_npz(tmp / "tiny.npz", size=2)
    x = np.random.default_rng(0).random((10, 8, 8))
    x[3, 2, 2] = np.nan
    np.save(tmp / "nan.npy", x)
    x[3, 2, 2] = np.inf
    np.save(tmp / "inf.npy", x)
    np.savez(tmp / "labels.npz", x=np.zeros((10, 8, 8), np.uint8), y=np.arange(9))
    np.savez(tmp / "empty.npz", x=np.zeros((0, 8, 8), np.uint8))
    small_npz(tmp / "nolabels.npz", y=False)
    (tmp / "afile").write_text("x")
    np.savez(tmp / "objects.npz", x=np.array([np.zeros((8, 8)), np.zeros((8, 8))], dtype=object))
    np.savez(tmp / "rgb_last.npz", x=np.zeros((10, 8, 8, 3), np.uint8), y=np.arange(10) % 2)
    for name, y in (("nan_label", [0.0, 1.0, np.nan]), ("float_label", [0.0, 0.5, 1.5]), ("str_label", ["a", "b", "c"])):
        np.savez(tmp / f"{name}.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.array(y))
    ok = ["--method", "fake", "--data", tmp / "ok.npz"]
    return {
        "missing path": (["--method", "fake", "--data", tmp / "nope.npz"], "no such file"),
        "truncated npz": (["--method", "fake", "--data", tmp / "trunc.npz"], "truncated or corrupt"),
        "corrupt idx": (["--method", "fake", "--data", tmp / "trunc-idx3-ubyte.gz"], "corrupt gzip"),
        "1-D": (["--method", "fake", "--data", tmp / "oned.npy"], "1-D"),
        "5-D": (["--method", "fake", "--data", tmp / "fived.npy"], "5-D"),
        "too small": (["--method", "fake", "--data", tmp / "tiny.npz"], "too small"),
        "nan": (["--method", "fake", "--data", tmp / "nan.npy", "--n-clusters", "2"], "NaN or Inf"),
        "inf": (["--method", "fake", "--data", tmp / "inf.npy", "--n-clusters", "2"], "NaN or Inf"),
        "label count": (["--method", "fake", "--data", tmp / "labels.npz"], "9 labels for 10 images"),
        "empty": (["--method", "fake", "--data", tmp / "empty.npz"], "empty dataset"),
        "k < 2": ([*ok, "--n-clusters", "1"], "--n-clusters must be between 2"),
        "k > N": ([*ok, "--n-clusters", "41"], "--n-clusters must be between 2"),
        "k needed": (["--method", "fake", "--data", tmp / "nolabels.npz"], "--n-clusters is required"),
        "unknown method": (["--method", "foo"], "invalid choice: 'foo'"),
        "no method": (["--data", "digits"], "--method is required"),
        "unknown backend": ([*ok, "--backend", "tpu"], "invalid choice: 'tpu'"),
        "unknown dataset": (["--method", "fake", "--data", "cifar"], "unknown dataset 'cifar'"),
        "zero lr": ([*ok, "--lr", "0"], "--lr must be > 0"),
        "negative lr": ([*ok, "--lr", "-1"], "--lr must be > 0"),
        "zero epochs": ([*ok, "--epochs", "0"], "--epochs must be > 0"),
        "zero batch": ([*ok, "--batch-size", "0"], "--batch-size must be > 0"),
        "negative batch": ([*ok, "--batch-size", "-4"], "--batch-size must be > 0"),
        "not a number": ([*ok, "--epochs", "two"], "invalid int value"),
        "out is a file": ([*ok, "--out", tmp / "afile"], "is an existing file"),
        "foreign flag": (["--method", "kmeans", "--alpha", "2"], "--alpha does not apply to method 'kmeans'"),
        "foreign param": ([*ok, "--param", "colour=1"], "--param colour does not apply"),
        "bad estimator value": ([*ok, "--alpha", "0.5"], "invalid hyperparameters"),
        "no checkpoint": ([*ok, "--resume", tmp], "no checkpoint.npz"),
        "unknown features": ([*ok, "--features", "hog"], "invalid choice: 'hog'"),
        "negative seed": ([*ok, "--seed", "-1"], "--seed must be between 0 and 2**32 - 1, got -1"),
        "huge seed": ([*ok, "--seed", str(2**32)], "--seed must be between 0"),
        "object npz": (["--method", "fake", "--data", tmp / "objects.npz"], "objects.npz: array 'x' holds Python objects"),
        "channels last": (["--method", "fake", "--data", tmp / "rgb_last.npz"], "rgb_last.npz: images of shape (10, 8, 8, 3) look channels-last"),
        "NaN label": (["--method", "fake", "--data", tmp / "nan_label.npz"], "nan_label.npz: labels must be integers, label 2 is"),
        "float label": (["--method", "fake", "--data", tmp / "float_label.npz"], "float_label.npz: labels must be integers, label 1 is"),
        "string label": (["--method", "fake", "--data", tmp / "str_label.npz"], "str_label.npz: labels must be integers, got dtype <U1"),
        "out under a file": ([*ok, "--out", tmp / "afile" / "sub"], f"{tmp / 'afile'} is a file, not a folder"),
        "out non-empty": ([*ok, "--out", tmp], "already exists and is not empty"),
    }


def test_bad_inputs_one_error_line(tmp_path, capsys):
    cases = _bad_cases(tmp_path)
    if not cuda_available():
        cases["cuda"] = (["--method", "fake", "--backend", "cuda"], "backend 'cuda'")
    before = sorted(os.listdir(tmp_path))
    for name, (argv, message) in cases.items():
        code, out, err = run([*argv, "--quiet"], capsys)
        assert code == 2, (name, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert message in err, (name, err)
        assert sorted(os.listdir(tmp_path)) == before, name  # no partial output
    assert not (tmp_path / "nbclust-runs").exists()


def test_resume_refuses_other_method_or_data(tmp_path, capsys):
    code, _, err = run([*FAKE, "--checkpoint-every", "1", "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    code, _, err = run(["--resume", tmp_path / "r"], capsys)  # a finished run keeps no checkpoint
    assert code == 2 and "no checkpoint.npz" in err
    ck = tmp_path / "ck"
    state = {}

    def stop(est, record):
        if record["epoch"] == 1:
            state["s"] = est.training_state()

    from nbclust.data.io import save_state

    FakeClusterer(10, epochs=2, pretrain_epochs=1, random_state=0).fit(
        load("digits")[0], callback=stop)
    ck.mkdir()
    arrays, meta = state["s"]
    meta = json.loads(json.dumps(meta))
    meta["nbclust_fit"] = {**fit.DEFAULTS, "method": "fake", "data": "digits", "epochs": 2,
                           "pretrain_epochs": 1, "n_clusters": 10, "quiet": True}
    save_state(ck / "checkpoint.npz", arrays, meta)
    code, _, err = run(["--resume", ck, "--method", "kmeans"], capsys)
    assert code == 2 and "from method 'fake', not 'kmeans'" in err
    code, _, err = run(["--resume", ck, "--features", "dsift-pca"], capsys)
    assert code == 2 and "from features 'none', not 'dsift-pca'" in err
    code, _, err = run(["--resume", ck, "--alpha", "5"], capsys)
    assert code == 2 and "--alpha 5.0 (the run has 2.0) would change the model" in err, err
    assert "(what may change on resume: --epochs, --pretrain-epochs)" in err
    code, out, err = run(["--resume", ck], capsys)
    assert code == 0, err
    expected = FakeClusterer(10, epochs=2, pretrain_epochs=1, random_state=0).fit(
        load("digits")[0]).labels_
    np.testing.assert_array_equal(np.load(ck / "labels.npy"), expected)
    assert not (ck / "checkpoint.npz").exists()


def test_plot_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run([*FAKE, "--plot", "--out", tmp_path / "p"], capsys)
    assert code == 2 and "--plot needs matplotlib" in err and not (tmp_path / "p").exists()


def test_plots_with_matplotlib(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    data = small_npz(tmp_path / "d.npz", n=60)
    code, _, err = run([*FAKE, "--data", data, "--plot", "--out", tmp_path / "p"], capsys)
    assert code == 0, err
    for name in ("curves.png", "tsne.png", "reconstruction.png", "confusion.png"):
        assert (tmp_path / "p" / name).stat().st_size > 1000, name


# ------------------------------------------------------------------------ subprocesses
def test_help_is_fast_and_documents_defaults():
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "nbclust.fit", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0 and "--checkpoint-every" in r.stdout and "default: 10" in r.stdout
    assert elapsed < 2.0  # target 0.5 s on an idle machine; generous under CI contention
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "nbclust.fit", "--help"], capture_output=True, text=True)
    assert "numpy" not in r.stderr and "numba" not in r.stderr and "sklearn" not in r.stderr


def test_exit_status_no_traceback(tmp_path):
    r = subprocess.run(cli("--method", "fake", "--data", tmp_path / "missing.npz"), capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "nbclust.fit", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("nbclust ")


def test_ctrl_c_checkpoints_then_resumes(tmp_path):
    """Ctrl-C after the first epoch.  The child gets SIGINT's default action back: a shell
    that starts the tests in the background (``nohup ... &``) leaves SIGINT ignored, Python
    then installs no KeyboardInterrupt handler, and the run would simply finish."""
    import signal

    args = ["--method", "fake", "--epochs", "40", "--pretrain-epochs", "1", "--param", "sleep=0.05",
            "--checkpoint-every", "0", "--seed", "7"]
    p = subprocess.Popen(cli(*args, "--out", tmp_path / "run"), stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = p.stderr.readline()  # one epoch finished
    assert first.startswith("[pretrain] epoch 1"), first
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    assert p.wait(timeout=60) == 130
    lines = err.strip().splitlines()
    assert lines[-1].startswith("interrupted: checkpoint of epoch") and "Traceback" not in err
    assert os.listdir(tmp_path / "run") == ["checkpoint.npz"]
    r = subprocess.run(cli("--resume", tmp_path / "run", "--quiet"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cli(*args, "--quiet", "--out", tmp_path / "full"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "run" / "labels.npy"), np.load(tmp_path / "full" / "labels.npy"))


# ------------------------------------------------------------------ real estimators
@pytest.mark.parametrize("method", [m for m in fit.METHODS if m != "fake"])
def test_real_methods_on_digits(method, tmp_path, capsys):
    """Each method end to end on 300 digits with tiny settings; the saved model predicts the labels."""
    import importlib

    module, name = fit.METHODS[method]
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"{method} not available yet: {exc}")
    x, y = load("digits")
    np.savez(tmp_path / "d300.npz", x=x[:300], y=y[:300])
    params = cls().get_params()
    argv = ["--method", method, "--data", tmp_path / "d300.npz", "--quiet", "--out", tmp_path / "o"]
    argv += ["--epochs", 1] if "epochs" in params else []
    argv += ["--pretrain-epochs", 1] if "pretrain_epochs" in params else []
    argv += ["--param", "n_init=2"] if "n_init" in params else []
    argv += ["--param", "warmup_epochs=1"] if "warmup_epochs" in params else []
    code, out, err = run(argv, capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["n_images"] == 300 and 0 <= m["acc"] <= 1
    labels = np.load(tmp_path / "o" / "labels.npy")
    predicted = cls.load(tmp_path / "o" / "model.npz").predict(x[:300])
    if method == "acpic":  # transductive: new samples go to the nearest cluster mean
        assert np.mean(predicted == labels) > 0.8
    else:
        np.testing.assert_array_equal(predicted, labels)
    assert np.load(tmp_path / "o" / "centers.npy").shape[0] == 10


def test_real_method_rejects_tiny_images(tmp_path, capsys):
    pytest.importorskip("nbclust.methods.dcae")
    np.savez(tmp_path / "tiny.npz", x=np.zeros((20, 4, 4), np.uint8), y=np.arange(20) % 2)
    code, _, err = run(["--method", "dcae", "--data", tmp_path / "tiny.npz", "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.startswith("error: ") and "too small" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_real_method_progress_shows_each_phase_out_of_its_cap(tmp_path, capsys):
    pytest.importorskip("nbclust.methods.dbc")
    x, y = load("digits")
    np.savez(tmp_path / "d300.npz", x=x[:300], y=y[:300])
    code, _, err = run(["--method", "dbc", "--data", tmp_path / "d300.npz", "--pretrain-epochs", 2, "--epochs", 1,
                        "--param", "n_init=1", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("[pretrain] epoch 1/2 ") and lines[0].endswith(" left in pretrain)"), lines[0]
    assert lines[2].startswith("[cluster] epoch 1/1 (run epoch 3) ") and lines[2].endswith("at most 0.0s left in cluster)")


def test_pca_with_fewer_images_than_components_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NBCLUST_CACHE", str(tmp_path / "cache"))
    x, y = load("digits")
    np.savez(tmp_path / "d120.npz", x=x[:120], y=y[:120])
    code, out, err = run(["--method", "kmeans", "--data", tmp_path / "d120.npz", "--features", "dsift-pca", "--quiet",
                          "--param", "n_init=1", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert err == ("warning: --features dsift-pca: PCA(300) of 120 images keeps 119 components: centred, 120 images "
                   "span at most 119 dimensions\n")
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["feature_dim"] == 119 and "(119-d)" in out


def test_real_method_resumes_with_a_changed_epoch_cap(tmp_path, capsys, monkeypatch):
    """Needs the tables' schedule parameters (``Param(schedule=True)``, issue 24's estimator side)."""
    from nbclust.cli.rundir import RunDir
    from nbclust.methods import estimator_class

    if "epochs" not in getattr(estimator_class("dcae").hyperparameters, "schedule", ()):
        pytest.skip("the estimators' tables declare no schedule parameters yet")
    x, y = load("digits")
    np.savez(tmp_path / "d300.npz", x=x[:300], y=y[:300])

    def interrupted(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # Ctrl-C in the final write: the checkpoint of epoch 2
        m.setattr(RunDir, "results", interrupted)
        code, _, err = run(["--method", "dcae", "--data", tmp_path / "d300.npz", "--quiet", "--epochs", 2,
                            "--out", tmp_path / "o"], capsys)
    assert code == 130 and "checkpoint of epoch 2 saved" in err, err
    code, _, err = run(["--resume", tmp_path / "o", "--lr", 1.0], capsys)
    assert code == 2 and "would change the model" in err
    code, _, err = run(["--resume", tmp_path / "o", "--epochs", 4], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["epochs"] == 4 and m["resumes"][0]["changed"] == {"epochs": {"from": 2, "to": 4}}
