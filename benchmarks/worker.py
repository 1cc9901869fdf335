"""Time benchmark cases in THIS process for one runtime; one JSON line per case on stdout.

    python benchmarks/worker.py --runtime nbclust|torch --threads 2 [--rounds 7] CASE...
    python benchmarks/worker.py --runtime torch --serve     # case names on stdin, one a line

``compare.py`` keeps one serving worker per runtime and hands them the cases
alternately, so the thread pools of Numba, OpenBLAS and torch never share a
process while both runtimes meet about the same machine load.  The thread count is fixed through
the environment before NumPy, Numba or torch is imported.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def set_threads(n: int, runtime: str = "nbclust") -> None:
    """Fix the thread count before NumPy, Numba or torch loads.  For nbclust also let the
    OpenMP (Numba) and OpenBLAS workers sleep soon after their work: busy-waiting they take
    the cores from each other (nbclust alternates Numba kernels and BLAS calls)."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    if runtime == "nbclust":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def time_call(run, rounds: int, min_round_s: float) -> dict:
    """Median and min seconds per call over ``rounds`` rounds of >= ``min_round_s`` each (after warm-up)."""
    run()
    t = time.perf_counter()
    run()
    once = max(time.perf_counter() - t, 1e-7)
    reps = max(1, int(min_round_s / once))
    per_call = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            run()
        per_call.append((time.perf_counter() - t) / reps)
    per_call.sort()
    return {"median": per_call[len(per_call) // 2], "min": per_call[0], "reps": reps, "rounds": rounds}


def gemm_probe(runtime: str, seconds: float = 1.0) -> float:
    """Best float32 GEMM GFLOP/s of this runtime (2048^3, the machine's practical FP32 peak)."""
    n = 2048
    if runtime == "torch":
        import torch

        a, b = torch.rand(n, n), torch.rand(n, n)
        mm = torch.mm
    else:
        import numpy as np

        a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
        mm = np.matmul
    mm(a, b)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime", choices=("nbclust", "torch"), required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min-round", type=float, default=0.05, help="seconds per timing round")
    p.add_argument("--gemm", action="store_true", help="also report the GEMM probe")
    p.add_argument("--serve", action="store_true", help="read case names from stdin (one a line) after CASE...")
    p.add_argument("cases", nargs="*")
    args = p.parse_args(argv)
    set_threads(args.threads, args.runtime)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if args.runtime == "torch":
        try:
            import torch
        except ImportError:
            print(json.dumps({"error": "torch is not installed: pip install 'nbclust[bench]'"}), flush=True)
            return 2
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
    import cases

    if args.gemm:
        print(json.dumps({"gemm_gflops": gemm_probe(args.runtime)}), flush=True)
    names = args.cases
    if args.serve:
        print(json.dumps({"ready": True}), flush=True)
        names = itertools.chain(names, (line.strip() for line in iter(sys.stdin.readline, "")))
    for name in names:
        if not name:
            continue
        try:
            run, flops = cases.build(args.runtime, name)
            row = {"case": name, "flops": flops, **time_call(run, args.rounds, args.min_round)}
            del run
        except Exception as exc:  # one broken case must not lose the others
            row = {"case": name, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
