"""pytest-benchmark timings of bi_selective_scan (forward+backward) per backend and of the
two-pass pure-torch baseline, at 250 / 1875 / 9375 tokens (16 heads, headdim 64, dstate 64)."""

import pytest
import torch

from benchmarks.bench_scan import TOKENS, _backends, _fwd_bwd, _ours, _torch_two_pass, make_inputs

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("impl", ["torch-2-pass"] + _backends(DEVICE))
def test_bi_scan_fwd_bwd(benchmark, impl, tokens):
    args = make_inputs(1, tokens, DEVICE, DTYPE)
    fn = _torch_two_pass if impl == "torch-2-pass" else _ours(impl)
    step = _fwd_bwd(fn, args)
    benchmark.group = f"bi_selective_scan fwd+bwd {tokens} tokens"

    def run():
        step()
        _sync()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
