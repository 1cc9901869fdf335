"""Where a training step's time goes: per op, forward and backward, for one runtime of nbclust.

    python benchmarks/profile_ops.py [--threads 2] [--reps 5] step/fcae/b256 ...

Wraps every op of the cpu backend with a timer and prints, per case, the
ops sorted by total time per repetition (minimum over ``reps`` repetitions).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("cases", nargs="+")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from worker import set_threads

    set_threads(args.threads, "nbclust")
    import cases
    from nbclust.engine.backend import Implementation, get_backend
    from nbclust.engine.optable import OPS

    backend = get_backend("cpu")
    spent = defaultdict(float)

    def timed(name, f):
        def call(*a, **k):
            t = time.perf_counter()
            out = f(*a, **k)
            key = (name, tuple(getattr(a[0], "shape", ())))
            spent[key] += time.perf_counter() - t
            return out
        return call

    for spec in OPS.values():  # what the backend resolves each op to, timed
        impl = backend.implementation(spec)
        backend._resolved[spec] = Implementation(timed(spec.name + " fwd", impl.forward),
                                                 timed(spec.name + " bwd", impl.backward))
    for name in args.cases:
        run, flops = cases.build("nbclust", name)
        run()
        best, total = {}, float("inf")
        for _ in range(args.reps):
            spent.clear()
            t = time.perf_counter()
            run()
            total = min(total, time.perf_counter() - t)
            for k, v in spent.items():
                best[k] = min(best.get(k, float("inf")), v)
        print(f"{name}: {total * 1e3:.2f} ms per repetition (min), ops (min each):")
        for (op, shape), v in sorted(best.items(), key=lambda kv: -kv[1]):
            print(f"  {v * 1e3:8.3f} ms  {op:24s} {shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
