"""A run killed with SIGKILL after a checkpoint and resumed ends with the labels of an uninterrupted run."""

import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from cli_helpers import cli as cli_command


def cli(*args):
    return cli_command(*args, "--quiet")


def kill_and_resume(tmp_path, args, max_delay, timeout):
    """Start a run, SIGKILL it a random time after its first checkpoint, resume; compare labels."""
    delay = random.uniform(0, max_delay)
    killed = tmp_path / "killed"
    p = subprocess.Popen(cli(*args, "--checkpoint-every", 1, "--out", killed), stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not (killed / "checkpoint.npz").exists():
        assert p.poll() is None, p.stderr.read().decode()
        assert time.monotonic() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(delay)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert not (killed / "metrics.json").exists()
    r = subprocess.run(cli("--resume", killed), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (delay, r.stderr)
    r = subprocess.run(cli(*args, "--out", tmp_path / "full"), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(killed / "labels.npy"), np.load(tmp_path / "full" / "labels.npy"),
                                  err_msg=f"killed {delay:.2f}s after the first checkpoint")
    assert not (killed / "checkpoint.npz").exists()


def test_sigkill_resume_fake(tmp_path):
    args = ["--method", "fake", "--epochs", "30", "--pretrain-epochs", "2", "--param", "sleep=0.05", "--seed", "4"]
    kill_and_resume(tmp_path, args, max_delay=0.5, timeout=120)


@pytest.mark.slow
def test_sigkill_resume_real_estimator(tmp_path):
    """DCAE on digits, small settings: 30-70 ms per epoch, so 100 epochs outlast the kill delay."""
    pytest.importorskip("nbclust.methods.dcae")
    args = ["--method", "dcae", "--epochs", "100", "--batch-size", "200", "--seed", "1", "--threads", "1"]
    kill_and_resume(tmp_path, args, max_delay=1.0, timeout=600)
