"""Start-up measurements, each run in a fresh child process by ``compare.py``.

    python benchmarks/startup.py compile-all   # every cpu op, float32 and float64, forward + backward
    python benchmarks/startup.py first-epoch   # DBC's FCAE pretraining on 512 random 28x28 images

``compile-all`` is timed with ``NUMBA_CACHE_DIR`` pointed at a fresh folder
(cold compile); ``first-epoch`` with the warm cache, from process start to the
end of the first epoch (it exits there).
"""

from __future__ import annotations

import os
import sys


def compile_all() -> None:
    import numpy as np

    from nbclust.engine.backend import get_backend
    from nbclust.engine.gradcheck import cast_inputs, run_op
    from nbclust.engine.optable import OPS, Case

    cpu, rng = get_backend("cpu"), np.random.default_rng(0)
    problems = [(spec, case) for spec in OPS.values() for case in spec.cases(rng)]
    # the direct conv kernels of narrow 9x9 layers, which no table case reaches
    n = rng.normal
    problems += [(OPS["conv2d"], Case((n(size=(2, 1, 10, 10)), n(size=(3, 1, 9, 9)), None),
                                      {"stride": (1, 1), "padding": (4, 4)})),
                 (OPS["conv_transpose2d"], Case((n(size=(2, 1, 4, 4)), n(size=(1, 3, 9, 9)), None),
                                                {"stride": (1, 1), "padding": (0, 0), "output_padding": (0, 0)}))]
    for spec, case in problems:
        for dtype in (np.float32, np.float64):
            outs, _ = run_op(cpu, spec, cast_inputs(case, dtype), case.attrs)
            run_op(cpu, spec, cast_inputs(case, dtype), case.attrs, np.ones_like(outs[0]))


def first_epoch() -> None:
    import numpy as np

    from nbclust.methods import DBC

    X = np.random.default_rng(0).random((512, 1, 28, 28)).astype(np.float32)

    def stop(est, record):
        print(f"first epoch done, epoch itself {record['seconds']:.3f} s", flush=True)
        os._exit(0)

    DBC(n_clusters=10, pretrain_epochs=1, epochs=1, batch_size=256, random_state=0).fit(X, callback=stop)


if __name__ == "__main__":
    {"compile-all": compile_all, "first-epoch": first_epoch}[sys.argv[1]]()
