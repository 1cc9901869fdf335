"""``python -m nbclust.fit`` and the user's files: ``--out`` checked and locked before the first
epoch, never renamed or replaced, resumed folders keep what nbclust did not write, Ctrl-C or a full
disk during the final write keep the training state, a diverging fit writes nothing, leftovers of
killed runs are cleaned (only theirs), resume identity (data content, schedule changes)."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import FAKE, cli, fake_method, listing, run, small_npz  # noqa: F401  (fake_method: a fixture)
from fake_estimator import FakeClusterer
from nbclust.cli import rundir
from nbclust.data import io
from nbclust.data.datasets import load

pytestmark = pytest.mark.usefixtures("fake_method")
DIVERGE = [*FAKE, "--epochs", "3", "--checkpoint-every", "1", "--param", "diverge_at=3"]


def fit_must_not_run(monkeypatch):
    def fit(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(FakeClusterer, "fit", fit)


def expected_labels(**params):
    return FakeClusterer(10, random_state=0, **{"epochs": 2, "pretrain_epochs": 1, **params}).fit(load("digits")[0]).labels_


def interrupted_run(tmp_path, capsys, folder="run", extra=()):
    """A run stopped by divergence in epoch 3: ``folder`` holds the checkpoint of epoch 2 only."""
    code, _, err = run([*DIVERGE, *extra, "--out", tmp_path / folder], capsys)
    assert code == 2 and err == "error: loss became NaN in epoch 3 of phase cluster; lower --lr\n", err
    assert os.listdir(tmp_path / folder) == ["checkpoint.npz"]
    return tmp_path / folder


# ------------------------------------------------------------------ divergence
def test_divergence_is_one_error_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = interrupted_run(tmp_path, capsys)
    assert io.load_state(out / "checkpoint.npz")[1]["epoch"] == 2  # the last good epoch, no results
    code, _, err = run([*FAKE, "--param", "diverge_at=2", "--out", tmp_path / "new"], capsys)  # no checkpoint yet
    assert code == 2 and "loss became NaN in epoch 2" in err and not (tmp_path / "new").exists()


def test_diverging_fit_in_a_subprocess_exits_2_without_traceback(tmp_path):
    r = subprocess.run(cli(*DIVERGE, "--out", tmp_path / "o"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == "error: loss became NaN in epoch 3 of phase cluster; lower --lr\n"


# ------------------------------------------------------------------ --out before the first epoch
@pytest.mark.parametrize("case", ["under a file", "existing file", "non-empty", "dot non-empty", "read-only",
                                  "dangling symlink"])
def test_out_is_checked_before_the_first_epoch(case, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    out, message = {
        "under a file": (tmp_path / "afile" / "sub", f"{tmp_path / 'afile'} is a file, not a folder"),
        "existing file": (tmp_path / "afile", "is an existing file"),
        "non-empty": (tmp_path / "full", "already exists and is not empty"),
        "dot non-empty": (".", "--out . already exists and is not empty"),
        "read-only": (tmp_path / "ro" / "sub", "cannot write there (Read-only file system)"),
        "dangling symlink": (tmp_path / "dangling", "is a symlink to the missing"),
    }[case]
    if case == "read-only":
        def read_only(path, *a, **k):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        monkeypatch.setattr(Path, "mkdir", read_only)
    before = listing(tmp_path)
    fit_must_not_run(monkeypatch)
    code, _, err = run([*FAKE, "--out", out], capsys)
    assert code == 2 and err.startswith("error: --out ") and message in err and err.count("\n") == 1, err
    assert listing(tmp_path) == before


def test_out_dot_writes_into_an_empty_working_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    code, out, err = run([*FAKE, "--out", "."], capsys)
    assert code == 0, err
    assert (tmp_path / "here" / "metrics.json").exists() and "output    ." in out


def test_out_symlink_and_mount_point_receive_the_files(tmp_path, capsys, monkeypatch):
    """The folder itself is never renamed: a symlink stays a link, and renaming a mount point
    (EBUSY, simulated here for every rename of the folder) is never tried."""
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    inode = (tmp_path / "target").stat().st_ino
    real_replace = os.replace

    def replace(src, dst, **kw):
        for p in (src, dst):
            if Path(p).resolve() == (tmp_path / "target").resolve():
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(p))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    code, _, err = run([*FAKE, "--out", tmp_path / "link"], capsys)
    assert code == 0, err
    assert (tmp_path / "link").is_symlink() and (tmp_path / "target").stat().st_ino == inode
    assert (tmp_path / "target" / "metrics.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["link", "target"]  # no .link.old-PID, no staging folder
    assert not [p for p in os.listdir(tmp_path / "target") if p.startswith(".")]


# ------------------------------------------------------------------ the lock
def test_second_run_on_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys):
    out = tmp_path / "same"
    first = subprocess.Popen(cli(*FAKE, "--epochs", "30", "--param", "sleep=0.1", "--out", out),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / rundir.LOCK).exists():
        assert first.poll() is None and time.monotonic() - t0 < 60, first.communicate()
        time.sleep(0.02)
    code, _, err = run([*FAKE, "--seed", "2", "--out", out], capsys)
    assert code == 2 and f"--out {out} is in use by another nbclust run (pid {first.pid})" in err, err
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    mine = listing(out)
    assert json.loads((out / "metrics.json").read_text())["params"]["random_state"] == 0
    code, _, err = run([*FAKE, "--seed", "2", "--out", out], capsys)  # afterwards: its results are kept
    assert code == 2 and "already exists and is not empty" in err and listing(out) == mine


def test_stale_lock_of_a_dead_run_does_not_block(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / rundir.LOCK).write_text(f"{dead.pid} {io.HOST}\n")
    code, _, err = run([*FAKE, "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert not (tmp_path / "o" / rundir.LOCK).exists()


# ------------------------------------------------------------------ resume and the user's files
def test_resume_into_another_runs_folder_is_refused_and_leaves_it_untouched(tmp_path, capsys):
    a = interrupted_run(tmp_path, capsys, "runA")
    b = interrupted_run(tmp_path, capsys, "runB", ["--seed", "5"])
    (b / "notes.txt").write_text("my notes")
    before = listing(b)
    code, _, err = run(["--resume", a, "--out", b, "--param", "diverge_at=0"], capsys)
    assert code == 2 and f"--out {b} already exists and is not empty" in err, err
    assert listing(b) == before


def test_resume_into_a_copy_of_the_same_run_is_accepted(tmp_path, capsys):
    a = interrupted_run(tmp_path, capsys, "runA")
    shutil.copytree(a, tmp_path / "copy")
    code, _, err = run(["--resume", a, "--out", tmp_path / "copy", "--param", "diverge_at=0"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "copy" / "labels.npy"), expected_labels(epochs=3))


def test_resume_in_place_keeps_the_users_files(tmp_path, capsys):
    a = interrupted_run(tmp_path, capsys)
    (a / "notes.txt").write_text("my notes")
    (a / "mine").mkdir()
    (a / "mine" / "data.csv").write_text("1,2\n")
    code, _, err = run(["--resume", a, "--param", "diverge_at=0"], capsys)
    assert code == 0, err
    assert (a / "notes.txt").read_text() == "my notes" and (a / "mine" / "data.csv").read_text() == "1,2\n"
    assert {"metrics.json", "labels.npy", "model.npz"} <= set(os.listdir(a)) and not (a / "checkpoint.npz").exists()
    np.testing.assert_array_equal(np.load(a / "labels.npy"), expected_labels(epochs=3))


# ------------------------------------------------------------------ Ctrl-C and a full disk in the final write
@pytest.mark.parametrize("every", ["10", "0"])
def test_ctrl_c_while_writing_the_results_saves_the_state(every, tmp_path, capsys, monkeypatch):
    def interrupted(self, path):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(FakeClusterer, "save", interrupted)
        code, _, err = run([*FAKE, "--checkpoint-every", every, "--out", tmp_path / "o"], capsys)
    assert code == 130
    assert err == (f"interrupted: checkpoint of epoch 3 saved (interrupted while the results were written); "
                   f"continue with --resume {tmp_path / 'o'}\n")
    assert os.listdir(tmp_path / "o") == ["checkpoint.npz"]
    code, _, err = run(["--resume", tmp_path / "o"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "labels.npy"), expected_labels())


def full_disk(monkeypatch, name, folder):
    """Writes of files called ``name`` under ``folder`` fail as on a full disk (in the middle of the write)."""
    write_npy, save_state = io.write_npy, io.save_state

    def failing(real):
        def write(path, *args):
            if Path(path).name != name or folder not in Path(path).parents:
                return real(path, *args)
            with io.atomic_path(path) as tmp:
                tmp.write_bytes(b"partial")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write

    monkeypatch.setattr(io, "write_npy", failing(write_npy))
    monkeypatch.setattr(io, "save_state", failing(save_state))


def test_full_disk_in_the_final_write_names_the_file_and_keeps_the_state(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    with monkeypatch.context() as m:
        full_disk(m, "embedding.npy", out)
        code, _, err = run([*FAKE, "--checkpoint-every", "0", "--out", out], capsys)
    assert code == 2 and err == (f"error: cannot write {out / 'embedding.npy'}: No space left on device; the "
                                 f"training state of epoch 3 is saved in {out / 'checkpoint.npz'}: free some space, "
                                 f"then continue with python -m nbclust.fit --resume {out}\n"), err
    assert os.listdir(out) == ["checkpoint.npz"]  # no partial results, no temporary files
    code, _, err = run(["--resume", out], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(out / "labels.npy"), expected_labels())


def test_full_disk_for_the_checkpoint_saves_it_in_the_temporary_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    out = tmp_path / "o"
    with monkeypatch.context() as m:
        full_disk(m, "checkpoint.npz", out)
        code, _, err = run([*FAKE, "--checkpoint-every", "1", "--out", out], capsys)
    (rescue,) = (tmp_path / "tmp").iterdir()
    assert code == 2 and err == (f"error: cannot write {out / 'checkpoint.npz'}: No space left on device; the "
                                 f"training state of epoch 1 is saved in {rescue / 'checkpoint.npz'}: free some "
                                 f"space, then continue with python -m nbclust.fit --resume {rescue} --out {out}\n"), err
    assert not out.exists()
    code, _, err = run(["--resume", rescue, "--out", out], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(out / "labels.npy"), expected_labels())


def test_numpy_writes_report_a_full_disk_with_its_cause(tmp_path, monkeypatch):
    """numpy's ``tofile`` on a real file reports a short write as "N requested and M written";
    nbclust's writers go through Python's write, which names the cause."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    import builtins

    monkeypatch.setattr(io, "open", lambda path, mode: builtins.open("/dev/full", mode), raising=False)
    with pytest.raises(io.WriteError, match=f"cannot write {tmp_path / 'e.npy'}: No space left on device"):
        io.write_npy(tmp_path / "e.npy", np.zeros((300, 300)))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ leftovers of killed runs
def test_sigkill_in_the_final_write_leaves_leftovers_that_the_next_run_removes(tmp_path):
    out = tmp_path / "o"
    p = subprocess.Popen(cli(*FAKE, "--checkpoint-every", "1", "--param", "save_sleep=30", "--out", out),
                         stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not [e for e in (os.listdir(out) if out.exists() else []) if e.startswith(".results.nbclust-")]:
        assert p.poll() is None and time.monotonic() - t0 < 60, p.stderr.read()
        time.sleep(0.02)
    time.sleep(0.2)  # inside save(): some results are staged
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    left = sorted(e for e in os.listdir(out) if e.startswith("."))
    assert left == [rundir.LOCK, next(e for e in left if e.startswith(".results.nbclust-"))], left
    # what is not a dead nbclust process's temporary stays: the user's, a live process's, another host's
    alive = io.temp_prefix("labels.npy") + "abc.tmp"  # this (live) test process
    keep = [".results.tmp", ".notes.nbclust-1.tmp", f".x.nbclust-00000000-{p.pid}-abc.tmp", alive, "notes.txt"]
    for name in keep:
        (out / name).write_text("mine")
    r = subprocess.run(cli("--resume", out, "--quiet"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(e for e in os.listdir(out) if e.startswith(".") or e == "notes.txt") == sorted(keep)
    np.testing.assert_array_equal(np.load(out / "labels.npy"), expected_labels())


def test_remove_stale_only_removes_dead_processes_temporaries(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_file = tmp_path / f".checkpoint.npz.nbclust-{io.HOST}-{dead.pid}-k2j_x.tmp"
    stale_dir = tmp_path / f".results.nbclust-{io.HOST}-{dead.pid}-a1b2.tmp"
    stale_file.write_text("x")
    stale_dir.mkdir()
    (stale_dir / "labels.npy").write_text("x")
    others = [f".checkpoint.npz.nbclust-{io.HOST}-{os.getpid()}-abc.tmp",  # alive
              f".checkpoint.npz.nbclust-ffffffff-{dead.pid}-abc.tmp",  # another host
              f"checkpoint.npz.nbclust-{io.HOST}-{dead.pid}-abc.tmp",  # not hidden
              f".checkpoint.npz.nbclust-{io.HOST}-{dead.pid}-abc.bak", ".checkpoint.npz.abc.tmp"]
    for name in others:
        (tmp_path / name).write_text("mine")
    assert sorted(io.remove_stale(tmp_path)) == sorted([stale_file, stale_dir])
    assert sorted(os.listdir(tmp_path)) == sorted(others)


# ------------------------------------------------------------------ resume identity
def test_resume_accepts_moved_data_with_the_same_content(tmp_path, capsys):
    x, y = load("digits")
    np.savez(tmp_path / "d.npz", x=x[:300], y=y[:300])
    out = interrupted_run(tmp_path, capsys, extra=["--data", tmp_path / "d.npz"])
    (tmp_path / "d.npz").rename(tmp_path / "moved.npz")
    code, _, err = run(["--resume", out, "--param", "diverge_at=0"], capsys)
    assert code == 2 and f"the run's data {tmp_path / 'd.npz'} is not there any more; give its new place with --data" in err
    changed = x[:300].copy()
    changed[150, 3, 3] ^= 1
    np.savez(tmp_path / "changed.npz", x=changed, y=y[:300])
    code, _, err = run(["--resume", out, "--data", tmp_path / "changed.npz", "--param", "diverge_at=0"], capsys)
    assert code == 2 and "content of the data" in err and "differs from the data of the run" in err, err
    assert os.listdir(out) == ["checkpoint.npz"]
    code, _, err = run(["--resume", out, "--data", tmp_path / "moved.npz", "--param", "diverge_at=0"], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"] == str(tmp_path / "moved.npz") and f'data = "{tmp_path / "moved.npz"}"' in (out / "config.toml").read_text()
    uninterrupted = FakeClusterer(10, epochs=3, pretrain_epochs=1, random_state=0).fit(x[:300]).labels_
    np.testing.assert_array_equal(np.load(out / "labels.npy"), uninterrupted)


def test_resume_accepts_changed_schedule_and_records_it(tmp_path, capsys):
    out = interrupted_run(tmp_path, capsys)
    code, _, err = run(["--resume", out, "--lr", "0.1"], capsys)
    assert code == 2 and "--lr 0.1 (the run has 0.5) would change the model" in err
    code, _, err = run(["--resume", out, "--epochs", "5", "--param", "diverge_at=0"], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 6 and len(m["commands"]) == 2 and m["command"] == m["commands"][0]
    (resumed,) = m["resumes"]
    assert resumed["at_epoch"] == 2 and resumed["changed"] == {"epochs": {"from": 3, "to": 5}}
    assert resumed["command"].startswith("python -m nbclust.fit --resume ")
    assert "epochs = 5" in (out / "config.toml").read_text()


def test_checkpoint_with_wrong_contents_is_one_error_line(tmp_path, capsys):
    out = interrupted_run(tmp_path, capsys)
    arrays, meta = io.load_state(out / "checkpoint.npz")
    del meta["rng"]
    io.save_state(out / "checkpoint.npz", arrays, meta)
    code, _, err = run(["--resume", out, "--param", "diverge_at=0"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "checkpoint.npz is not a complete training state of fake (KeyError: 'rng')" in err, err
    io.save_state(out / "checkpoint.npz", arrays, {"nbclust_fit": "not options"})
    code, _, err = run(["--resume", out], capsys)
    assert code == 2 and "checkpoint.npz was not written by python -m nbclust.fit" in err


# ------------------------------------------------------------------ what the summary reports
def test_empty_clusters_are_reported(tmp_path, capsys):
    np.savez(tmp_path / "same.npz", x=np.full((30, 8, 8), 100, np.uint8), y=np.arange(30) % 5)
    code, out, err = run([*FAKE, "--data", tmp_path / "same.npz", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert "clusters  5 asked, 1 non-empty" in out
    assert err == "warning: only 1 of the 5 clusters are non-empty (labels.npy uses 1 values)\n"
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["n_nonempty_clusters"] == 1


def test_integer_valued_float_labels_are_read_exactly(tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 256, (30, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "f.npz", x=x, y=(np.arange(30) % 3).astype(np.float64))
    code, _, err = run([*FAKE, "--data", tmp_path / "f.npz", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    rows = (tmp_path / "o" / "labels.csv").read_text().splitlines()
    assert rows[2].split(",")[2] == "1" and all(r.count(",") == 2 for r in rows)


def test_progress_line_shows_epoch_out_of_cap_and_time_left(tmp_path, capsys):
    code, _, err = run([*FAKE[:-1], "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("[pretrain] epoch 1/3 ") and ", at most " in lines[0] and lines[0].endswith(" left)")
    assert lines[2].startswith("[cluster] epoch 3/3 ") and lines[2].endswith("at most 0.0s left)")


@pytest.mark.parametrize("name, reason", [("w.pkl", "it holds pickled Python objects, which nbclust never loads"),
                                          ("w.npy", "a single array, not named arrays")])
def test_weights_that_are_not_an_npz_of_arrays_are_refused(name, reason, tmp_path, capsys, monkeypatch):
    pytest.importorskip("nbclust.methods.depict")
    import pickle

    (tmp_path / "w.pkl").write_bytes(pickle.dumps({"a": 1}))
    np.save(tmp_path / "w.npy", np.zeros(3))
    small_npz(tmp_path / "d.npz", size=28)
    fit_must_not_run(monkeypatch)
    code, _, err = run(["--method", "depict", "--data", tmp_path / "d.npz", "--weights", tmp_path / name,
                        "--out", tmp_path / "o"], capsys)
    assert code == 2 and err == f"error: --weights {tmp_path / name}: not an .npz file of numeric arrays ({reason})\n"
    assert not (tmp_path / "o").exists()
