"""The experiments runner: plan, resumable JSON-lines log, report (generated data, fast), and the
CI smoke suite on a 2000-image MNIST-test subset (skipped when the real data are absent)."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from fake_estimator import FakeClusterer  # noqa: F401  (imported by name through fit.METHODS)

from nbclust.cli import experiments as ex
from nbclust.cli import fit


@pytest.fixture
def fake_runs(monkeypatch):
    """A fast "fake" run (tests/fake_estimator.py) beside kmeans, in the smoke suite."""
    monkeypatch.setitem(fit.METHODS, "fake", ("fake_estimator", "FakeClusterer"))
    monkeypatch.setitem(ex.RUNS, "fake", ("fake", {"alpha": 3.0}))
    monkeypatch.setitem(ex.SMOKE, "runs", {"kmeans": {"n_init": 2}, "fake": {"epochs": 2}})
    ex._CACHE.clear()


def blobs(name):
    """Three well separated classes of 8x8 images."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    X = rng.normal(0, 0.05, (90, 8, 8)) + y[:, None, None] * 0.4
    return X.clip(0, 1), y


def test_plan_seeds_and_settings():
    p = ex.plan("paper", runs=["dbc", "kmeans"])
    small = [(d, n, s) for d, n, s, _ in p if d == "mnist-test"]
    big = [(d, n, s) for d, n, s, _ in p if d == "mnist-full"]
    assert sorted({s for _, _, s in small}) == [0, 1, 2] and len(small) == 6
    assert {s for _, _, s in big} == {0} and len(big) == 2
    assert all(params == {} for *_, params in p)  # paper suite: the estimators' defaults
    budget = dict(((d, n), q) for d, n, _, q in ex.plan("budget", ["yaleb"], ["dctl-1l-joint"], [4]))
    assert budget[("yaleb", "dctl-1l-joint")] == {"n_layers": 1, "joint": True, **ex.BUDGET["dctl-1l-joint"]}
    smoke = ex.plan("smoke")
    assert {n for _, n, _, _ in smoke} == {"dbc", "kmeans"} and {d for d, *_ in smoke} == {"mnist-test"}


def test_plan_param_override_applies_only_where_valid():
    p = ex.plan("paper", ["yaleb"], ["kmeans", "dcae"], [0], params=[("epochs", 3)])
    assert dict(((n, tuple(q.items())) for _, n, _, q in p)) == {"kmeans": (), "dcae": (("epochs", 3),)}


@pytest.mark.parametrize("kw, word", [({"runs": ["nope"]}, "--methods"), ({"datasets": ["cifar"]}, "--datasets")])
def test_plan_rejects_unknown_names(kw, word):
    with pytest.raises(ValueError, match=word):
        ex.plan("paper", **kw)
    with pytest.raises(ValueError, match="--suite"):
        ex.plan("tiny")


def test_run_suite_records_and_resumes(tmp_path, fake_runs):
    out, logs = tmp_path / "runs.jsonl", []
    new = ex.run_suite("smoke", out, loader=blobs, log=logs.append, command="cmd")
    assert [r["run"] for r in new] == ["kmeans", "fake"]
    recs = ex.read_records(out)
    assert len(recs) == 2 and len(out.read_text().splitlines()) == 2
    for r in recs:
        assert set(r) >= {"key", "suite", "data", "run", "seed", "params", "acc", "nmi", "ari", "seconds",
                          "seconds_per_epoch", "history", "command"}
        assert 0 <= r["acc"] <= 1 and r["n_images"] == 90 and r["command"] == "cmd"
    assert recs[1]["params"] == {"alpha": 3.0, "epochs": 2}
    assert set(recs[1]["seconds_per_epoch"]) == {"pretrain", "cluster"}
    assert recs[0]["acc"] == 1.0  # three far-apart blobs
    assert "    [pretrain] epoch 1/3  loss=" in "\n".join(logs) and "at most" in logs[-2]  # progress: epoch/cap, time left
    # a second invocation skips both (an interrupted suite resumes by skipping finished runs)
    assert ex.run_suite("smoke", out, loader=blobs, log=logs.append) == []
    assert sum(m.startswith("skip") for m in logs) == 2
    # another seed is a new run
    assert len(ex.run_suite("smoke", out, seeds=[1], runs=["fake"], loader=blobs, log=logs.append)) == 1
    assert len(ex.read_records(out)) == 3


def test_a_run_made_with_other_defaults_is_made_again(tmp_path, fake_runs):
    """A record keeps every hyperparameter it ran with; after a change of a default the suite redoes the
    run (same key, so the report shows the new record only) instead of skipping it."""
    out, logs = tmp_path / "runs.jsonl", []
    (first,) = ex.run_suite("smoke", out, runs=["kmeans"], loader=blobs, log=logs.append)
    assert first["resolved"] == ex.resolved_params("kmeans", {"n_init": 2}) and first["resolved"]["n_init"] == 2
    assert ex.run_suite("smoke", out, runs=["kmeans"], loader=blobs, log=logs.append) == []
    stale = [{**r, "resolved": {**r["resolved"], "input_scale": "minmax"}} for r in ex.read_records(out)]
    out.write_text("".join(json.dumps(r) + "\n" for r in stale))
    (again,) = ex.run_suite("smoke", out, runs=["kmeans"], loader=blobs, log=logs.append)
    assert any(m.startswith("redo smoke") for m in logs) and again["key"] == first["key"]
    assert [r["resolved"]["input_scale"] for r in ex.summarize_latest(ex.read_records(out))] == ["none"]


def test_features_runs_have_their_own_keys_and_report_rows(tmp_path, fake_runs, monkeypatch):
    """--features dsift-pca: k-means on DSIFT -> PCA features, recorded beside (not over) the pixel run."""
    monkeypatch.setenv("NBCLUST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs.jsonl"
    (pix,) = ex.run_suite("smoke", out, runs=["kmeans"], loader=blobs, log=lambda m: None)
    (feat,) = ex.run_suite("smoke", out, runs=["kmeans"], loader=blobs, log=lambda m: None, features="dsift-pca")
    assert pix["features"] == "none" and feat["features"] == "dsift-pca" and pix["key"] != feat["key"]
    assert pix["key"] == ex.run_key("smoke", "mnist-test", "kmeans", 0, {"n_init": 2})  # pixel keys unchanged
    assert 0 <= feat["acc"] <= 1 and len(list((tmp_path / "cache" / "features").iterdir())) == 1
    assert ex.run_suite("smoke", out, runs=["kmeans"], loader=blobs, log=lambda m: None, features="dsift-pca") == []
    text = ex.report(ex.read_records(out))
    assert "| mnist-test | kmeans | smoke | n_init=2 |" in text
    assert "| mnist-test | kmeans | smoke | features=dsift-pca, n_init=2 |" in text
    assert "| smoke | mnist-test | kmeans (dsift-pca) | 0 |" in text


def test_interrupted_run_leaves_log_intact(tmp_path, fake_runs, monkeypatch):
    out = tmp_path / "runs.jsonl"
    ex.run_suite("smoke", out, runs=["kmeans"], loader=blobs, log=lambda m: None)
    before = out.read_text()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "run_one", boom)
    with pytest.raises(KeyboardInterrupt):
        ex.run_suite("smoke", out, loader=blobs, log=lambda m: None)
    assert out.read_text() == before and not list(tmp_path.glob(".runs.jsonl.*"))


def test_missing_data_set_is_skipped(tmp_path, fake_runs):
    def absent(name):
        raise ValueError(f"dataset {name!r} not found: put mnist_test.npz in ...")

    logs = []
    assert ex.run_suite("smoke", tmp_path / "r.jsonl", loader=absent, log=logs.append) == []
    assert sum("unavailable, skipped" in m for m in logs) == 2 and not (tmp_path / "r.jsonl").exists()


def test_read_records_rejects_torn_line(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: not a JSON line"):
        ex.read_records(p)
    assert ex.read_records(tmp_path / "none.jsonl") == []


def test_report_tables_notes_and_targets(tmp_path, fake_runs):
    out = tmp_path / "runs.jsonl"
    recs = []
    for seed, acc in ((0, 0.95), (1, 0.93), (2, 0.94)):
        recs.append({"key": f"k{seed}", "suite": "budget", "data": "mnist-full", "run": "dbc", "method": "dbc",
                     "seed": seed, "params": {"epochs": 5}, "acc": acc, "nmi": 0.9, "ari": 0.88, "seconds": 10.0,
                     "seconds_per_epoch": {"pretrain": 2.0}, "finished": f"2026-01-0{seed + 1}T00:00:00Z",
                     "command": "python -m nbclust.experiments --suite budget"})
    for r in recs:
        ex.append_record(out, r)
    md = tmp_path / "results.md"
    md.write_text(f"old\n{ex.NOTES[0]}\nmy analysis\n{ex.NOTES[1]}\nold tables\n")
    ex.write_report(out, md)
    text = md.read_text()
    assert "my analysis" in text and "old tables" not in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| mnist-full | dbc | budget"))
    assert "0.940 ± 0.010" in row and "0,1,2" in row and "0.964 / 0.917" in row and "pretrain 2.0" in row
    assert "| mnist-test | dcae | - | - | - | not run |" in text
    assert "mnist-full dbc ACC >= 0.93 | 0.940 (dbc, budget) | met (reduced epochs) |" in text
    assert "missed by" not in text and "python -m nbclust.experiments --suite budget" in text
    ex.write_report(out, md)  # idempotent: the notes survive a regeneration
    assert md.read_text() == text


def test_cli_dry_run_and_errors(capsys):
    assert ex.main(["--suite", "smoke", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("mnist-test kmeans seed 0")
    assert ex.main(["--suite", "paper", "--methods", "bogus", "--dry-run"]) == 2
    assert "error: --methods: unknown bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        ex.main(["--suite", "smoke", "--features", "hog", "--dry-run"])
    assert exc.value.code == 2 and "invalid choice: 'hog'" in capsys.readouterr().err


def test_cli_runs_and_reports(tmp_path, fake_runs, monkeypatch, capsys):
    monkeypatch.setattr(ex, "load_data", lambda data, home, n, loader=None: blobs(data))
    out, md = tmp_path / "r.jsonl", tmp_path / "results.md"
    assert ex.main(["--suite", "smoke", "--out", str(out), "--report", str(md)]) == 0
    assert len(ex.read_records(out)) == 2 and "| mnist-test | kmeans | smoke |" in md.read_text()
    assert "--suite smoke" in md.read_text()


def test_report_refuses_a_missing_log_and_keeps_the_report(tmp_path, capsys):
    md = tmp_path / "results.md"
    md.write_text("measured rows\n")
    for argv, message in (
        (["--report-only", "--out", str(tmp_path / "experimnets.jsonl"), "--report", str(md)],
         f"--out {tmp_path / 'experimnets.jsonl'}: no such run log, so nothing to report; {md} is unchanged"),
        (["--record", str(tmp_path / "nothing"), "--out", str(tmp_path / "log.jsonl"), "--report", str(md)],
         f"{tmp_path / 'nothing' / 'metrics.json'}: no such file"),
        (["--report-only"], "--report-only needs --report FILE"),
    ):
        assert ex.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
        assert md.read_text() == "measured rows\n"
    assert not (tmp_path / "log.jsonl").exists()


def test_record_appends_a_finished_fit_run(tmp_path, fake_runs, monkeypatch, capsys):
    """``--record DIR``: a ``python -m nbclust.fit --out DIR`` run becomes a row of the log and the report."""
    monkeypatch.chdir(tmp_path)
    argv = ["--method", "fake", "--epochs", "2", "--alpha", "3", "--seed", "4", "--quiet", "--out", "run"]
    assert fit.main(argv) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    capsys.readouterr()
    log, md = tmp_path / "log.jsonl", tmp_path / "results.md"
    assert ex.main(["--record", "run", "--out", str(log), "--report", str(md)]) == 0
    assert capsys.readouterr().out.startswith("recorded run: fake on digits seed 4, ACC ")
    (rec,) = ex.read_records(log)
    assert rec["suite"] == "fit" and rec["run"] == "fake" and rec["seed"] == 4 and rec["data"] == "digits"
    assert rec["params"] == {"alpha": 3.0, "epochs": 2}  # the settings: what differs from the defaults
    assert (rec["acc"], rec["nmi"], rec["n_images"]) == (metrics["acc"], metrics["nmi"], 1797)
    assert rec["command"] == "python -m nbclust.fit " + " ".join(argv) and rec["config"]["alpha"] == 3.0
    assert rec["epochs_run"] == {"pretrain": 1, "cluster": 2} and len(rec["history"]) == 3
    assert rec["history"][0]["phase"] == "pretrain" and isinstance(rec["history"][2]["acc"], float)
    text = md.read_text()
    assert f"| fit | digits | fake | 4 | {rec['acc']:.4f} |" in text and rec["command"] in text


def test_run_name_of_a_recorded_fit():
    assert ex.run_name("depict", {"target": "paper", "epochs": 3}) == "depict-paper"
    assert ex.run_name("depict", {"target": "code"}) == "depict"
    assert ex.run_name("dctl", {"n_layers": 1, "joint": False}) == "dctl-1l-piecemeal"
    assert ex.run_name("dbc", {}) == "dbc" and ex.run_name("acpic", {}) == "acpic"


# ------------------------------------------------------------------ smoke suite on real data
def _data_home():
    for cand in (os.environ.get("NBCLUST_DATA"), Path(__file__).resolve().parents[1] / ".." / "shared" / "data"):
        if cand and (Path(cand) / "mnist_test.npz").exists():
            return str(Path(cand).resolve())
    return None


@pytest.mark.skipif(_data_home() is None, reason="MNIST-test not found in $NBCLUST_DATA or ../shared/data")
def test_smoke_suite_on_mnist_subset(tmp_path):
    """CI: DBC on 2000 MNIST-test images, few epochs, against raw k-means (< 5 min on 2 cores)."""
    ex._CACHE.clear()
    t0 = time.perf_counter()
    recs = {r["run"]: r for r in ex.run_suite("smoke", tmp_path / "smoke.jsonl", data_home=_data_home(),
                                              log=lambda m: None)}
    assert set(recs) == {"dbc", "kmeans"} and all(r["n_images"] == 2000 for r in recs.values())
    assert recs["dbc"]["acc"] >= ex.SMOKE["thresholds"]["dbc"], json.dumps(recs["dbc"]["history"][-1])
    assert recs["dbc"]["acc"] >= recs["kmeans"]["acc"] + ex.SMOKE["margin_over_kmeans"]
    assert time.perf_counter() - t0 < 300


def test_figure_is_small_png(tmp_path, fake_runs, monkeypatch):
    pytest.importorskip("matplotlib")
    from nbclust.cli import plots

    def fast_tsne(plt, embedding, labels, y, seed):  # the layout without t-SNE's cost
        fig, ax = plt.subplots()
        ax.scatter(embedding[:, 0], embedding[:, 1], c=labels, s=3)
        return fig

    monkeypatch.setattr(plots, "_tsne", fast_tsne)
    out = tmp_path / "runs.jsonl"
    (rec,) = ex.run_suite("smoke", out, runs=["fake"], loader=blobs, figures=tmp_path / "fig", log=lambda m: None)
    png = tmp_path / "fig" / rec["figure"]
    assert rec["figure"] == "smoke-mnist-test-fake.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert png.stat().st_size < 40_000
    # later seeds of the same run draw no figure
    (rec2,) = ex.run_suite("smoke", out, runs=["fake"], seeds=[1], loader=blobs, figures=tmp_path / "fig",
                           log=lambda m: None)
    assert "figure" not in rec2
