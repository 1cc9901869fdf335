"""Per training step: forward + MSE + backward + Adam update of each network."""

import cases

KIND = "step"


def test_step(benchmark, case, request):
    run, flops = cases.build(request.config.getoption("--runtime"), case)
    benchmark.extra_info["flops"] = flops
    benchmark(run)
