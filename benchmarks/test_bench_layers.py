"""pytest-benchmark timings of forward+backward: BiMamba2 and the SDPA attention mixer, and the
M block against the transformer block, at 250 / 1875 / 9375 tokens, d_model 512 (the models of
bench_layers.py)."""

import pytest
import torch

from benchmarks.bench_layers import D_MODEL, MODELS, TOKENS, fwd_bwd_step, make_model

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("name", MODELS)
def test_layer_fwd_bwd(benchmark, name, tokens):
    torch.manual_seed(0)
    model = make_model(name).to(DEVICE)
    x = torch.randn(1, tokens, D_MODEL, device=DEVICE, requires_grad=True)
    step = fwd_bwd_step(model, x)
    benchmark.group = f"layer fwd+bwd {tokens} tokens"

    def run():
        step()
        _sync()

    benchmark.pedantic(run, rounds=3 if tokens >= 9375 else 5, warmup_rounds=1)
