"""Per layer: every conv, transposed conv, pool, unpool, batch-norm and activation configuration, fwd and fwd+bwd."""

import cases

KIND = "layer"


def test_layer(benchmark, case, request):
    run, flops = cases.build(request.config.getoption("--runtime"), case)
    benchmark.extra_info["flops"] = flops
    benchmark(run)
