"""nbclust cpu against torch CPU: per layer, per training step, forward embedding, start-up.

    python benchmarks/compare.py [--quick] [--threads 2] [--filter REGEX] [--no-startup]

Each runtime runs in its own worker process (``worker.py``) with the same
thread count; the two workers time each case in turn, so that a change of
machine load hits both.  The table gives medians, the ratio
nbclust / torch (below 1: nbclust is faster), nbclust's achieved GFLOP/s and
its percent of the machine's FP32 peak, measured by a GEMM probe in the same
run, and geometric means of the ratios per group.  It is printed and written
atomically to ``benchmarks/results.md``.  ``--quick``: batch 100 only, fewer rounds.
``--repeat R``: R passes over all cases with fresh workers; the table gives each
case's median over the passes and the spread of the group means between passes
(on a shared 2-core machine single runs differ by 10-20% per case, both runtimes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cases  # noqa: E402

TARGETS = {"step_geomean": 0.6, "step_max": 1.0, "embed_geomean": 1.0,
           "help_s": 0.5, "first_epoch_s": 1.5, "cold_compile_s": 30.0}
"""Issue 23's targets: ratios at every batch size (the thread count is the run's), start-up in seconds."""


def _env(threads: int) -> dict:
    """The environment of the nbclust start-up children: the workers' thread settings."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    return env


class Worker:
    """A serving ``worker.py`` process of one runtime: hand it a case, read back its JSON row."""

    def __init__(self, runtime, args):
        cmd = [sys.executable, os.path.join(HERE, "worker.py"), "--runtime", runtime, "--serve", "--gemm",
               "--threads", str(args.threads), "--rounds", str(args.rounds), "--min-round", str(args.min_round)]
        self.runtime = runtime
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.gemm = None
        while True:
            row = self._read()
            if "error" in row:
                raise RuntimeError(row["error"])
            if "gemm_gflops" in row:
                self.gemm = row["gemm_gflops"]
            if row.get("ready"):
                break

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.runtime} worker died (exit code {self.proc.wait()})")
        return json.loads(line)

    def time(self, name) -> dict:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def _best_of(cmd, n=3, env=None) -> float:
    best = math.inf
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=env)
        best = min(best, time.perf_counter() - t)
    return best


def startup(args) -> dict:
    env = _env(args.threads)
    out = {"help_s": _best_of([sys.executable, "-m", "nbclust.fit", "--help"], env=env)}
    script = os.path.join(HERE, "startup.py")
    subprocess.run([sys.executable, script, "first-epoch"], capture_output=True, env=env)  # fills the cache
    out["first_epoch_s"] = _best_of([sys.executable, script, "first-epoch"], n=2, env=env)
    with tempfile.TemporaryDirectory() as cache:
        out["cold_compile_s"] = _best_of([sys.executable, script, "compile-all"], n=1,
                                         env={**env, "NUMBA_CACHE_DIR": cache})
    return out


def geomean(values) -> float:
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def _fmt_ms(s):
    return "-" if s is None else f"{s * 1e3:.3f}"


def table(rows, peak, have_torch) -> list[str]:
    lines = ["| case | nbclust ms | torch ms | ratio | GFLOP/s | % peak |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        nb, th = r.get("nbclust"), r.get("torch")
        ratio = nb / th if nb and th else None
        gf = r["flops"] / nb / 1e9 if nb and r.get("flops") else None
        lines.append(f"| {r['case']} | {_fmt_ms(nb)} | {_fmt_ms(th)} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} | {'-' if gf is None else f'{gf:.1f}'} | "
                     f"{'-' if gf is None or not peak else f'{100 * gf / peak:.1f}'} |")
    return lines


def spread(passes, batches) -> list[str]:
    """Lines giving, per group, the geometric mean and max ratio of each pass (``passes``: one
    {case: (nbclust, torch)} dict per pass)."""
    lines = ["", f"Spread over {len(passes)} passes (geometric mean / max ratio of each pass):", ""]
    for n in batches:
        for group in ("step", "embed", "layer"):
            per_pass = []
            for timings in passes:
                ratios = [nb / th for case, (nb, th) in timings.items()
                          if case.startswith(group + "/") and case.endswith(f"/b{n}") and nb and th]
                if ratios:
                    per_pass.append(f"{geomean(ratios):.2f} / {max(ratios):.2f}")
            if per_pass:
                lines.append(f"- {group} b{n}: " + ", ".join(per_pass))
    return lines


def summary(rows, batches, extras) -> tuple[list[str], dict]:
    lines, verdict = ["", "| group | geometric mean of ratios | max ratio | cases |", "|---|---:|---:|---:|"], {}
    for n in batches:
        for group in ("step", "embed", "layer"):
            ratios = [r["nbclust"] / r["torch"] for r in rows
                      if r["case"].startswith(group + "/") and r["case"].endswith(f"/b{n}")
                      and r.get("nbclust") and r.get("torch")]
            if not ratios:
                continue
            g, worst = geomean(ratios), max(ratios)
            lines.append(f"| {group} b{n} | {g:.2f} | {worst:.2f} | {len(ratios)} |")
            verdict[f"{group}_geomean b{n}"], verdict[f"{group}_max b{n}"] = g, worst
    verdict.update(extras)
    lines += ["", "Targets:", ""]
    for key, value in verdict.items():
        limit = TARGETS.get(key.split(" ")[0])
        if limit is not None:
            lines.append(f"- {key}: {value:.3g} (target <= {limit}) {'met' if value <= limit else 'NOT met'}")
    return lines, verdict


def write_atomic(path, text) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".results.", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 100 only, 3 rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=None, help="timing rounds per case (default 7, quick 3)")
    p.add_argument("--min-round", type=float, default=0.05, help="seconds per timing round")
    p.add_argument("--filter", default="", help="only cases matching this regular expression")
    p.add_argument("--chunk", type=int, default=40, help="cases per pair of worker processes")
    p.add_argument("--no-startup", action="store_true", help="skip the start-up and compile-time measurements")
    p.add_argument("--repeat", type=int, default=1, help="passes over all cases; the table gives the median pass")
    p.add_argument("--out", default=os.path.join(HERE, "results.md"))
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    batches = (100,) if args.quick else (100, 256)
    names = [n for n in cases.case_names(batches) if re.search(args.filter, n)]
    have_torch = importlib.util.find_spec("torch") is not None
    if not have_torch:
        print("torch is not installed (pip install 'nbclust[bench]'): timing nbclust only, no ratios",
              file=sys.stderr)
    runtimes = ("nbclust", "torch") if have_torch else ("nbclust",)
    samples, flops, gemm = {n: {} for n in names}, {}, []  # samples[case][runtime]: one median per pass
    for k in range(args.repeat):
        for start in range(0, len(names), args.chunk):  # fresh workers per chunk: bounded memory
            workers = [Worker(runtime, args) for runtime in runtimes]
            gemm += [w.gemm for w in workers]
            for name in names[start:start + args.chunk]:
                for w in workers:
                    row = w.time(name)
                    if "error" in row:
                        print(f"{w.runtime} {name}: {row['error']}", file=sys.stderr)
                    else:
                        samples[name].setdefault(w.runtime, []).append(row["median"])
                        flops[name] = row["flops"]
            for w in workers:
                w.close()
            print(f"... pass {k + 1}/{args.repeat}: {min(start + args.chunk, len(names))}/{len(names)} cases",
                  file=sys.stderr)
    peak = max(gemm, default=None)
    extras = {} if args.no_startup else startup(args)
    rows = [{"case": n, "flops": flops.get(n), **{rt: statistics.median(v) for rt, v in samples[n].items()}}
            for n in names]
    complete = [n for n in names if all(len(samples[n].get(rt, ())) == args.repeat for rt in ("nbclust", "torch"))]
    passes = [{n: (samples[n]["nbclust"][k], samples[n]["torch"][k]) for n in complete} for k in range(args.repeat)]
    head = [f"# nbclust cpu vs torch CPU, {args.threads} threads, float32",
            "", f"Machine: {os.cpu_count()} logical CPUs; FP32 peak by GEMM probe (2048^3): "
            f"{'-' if peak is None else f'{peak:.1f}'} GFLOP/s. Medians of {args.rounds} rounds"
            f"{'' if args.repeat == 1 else f', then the median of {args.repeat} passes'}; "
            "ratio = nbclust / torch; GFLOP/s counts conv and linear multiply-adds (x2) only.", ""]
    start_lines = [] if args.no_startup else [
        "", f"Start-up: `python -m nbclust.fit --help` {extras['help_s']:.3f} s; time to the end of the first "
        f"epoch (warm Numba cache, DBC pretraining, 512 images) {extras['first_epoch_s']:.3f} s; cold compile "
        f"of every op, float32 + float64: {extras['cold_compile_s']:.1f} s."]
    lines, _ = summary(rows, batches, extras)
    if args.repeat > 1 and complete:
        lines += spread(passes, batches)
    text = "\n".join(head + table(rows, peak, have_torch) + lines + start_lines) + "\n"
    print(text)
    write_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
