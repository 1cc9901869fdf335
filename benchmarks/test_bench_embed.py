"""Forward-only embedding pass of each network's encoder (eval mode)."""

import cases

KIND = "embed"


def test_embed(benchmark, case, request):
    run, flops = cases.build(request.config.getoption("--runtime"), case)
    benchmark.extra_info["flops"] = flops
    benchmark(run)
