"""pytest-benchmark timings of bi_selective_scan on the cpu backend and of the two-pass
pure-torch chunked SSD, forward and forward+backward, at 250 / 1875 / 9375 tokens (16 heads,
headdim 64, dstate 64, fp32)."""

import pytest

from benchmarks.bench_scan_cpu import TOKENS, cpu_backend, forward_step, fwd_bwd_step, torch_two_pass

IMPLS = {"cpu": cpu_backend, "torch-2-pass": torch_two_pass}


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_bi_scan_cpu_forward(benchmark, impl, tokens):
    benchmark.group = f"bi_selective_scan fwd, cpu, {tokens} tokens"
    benchmark.pedantic(forward_step(IMPLS[impl], tokens), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_bi_scan_cpu_fwd_bwd(benchmark, impl, tokens):
    benchmark.group = f"bi_selective_scan fwd+bwd, cpu, {tokens} tokens"
    benchmark.pedantic(fwd_bwd_step(IMPLS[impl], tokens), rounds=3, warmup_rounds=1)
