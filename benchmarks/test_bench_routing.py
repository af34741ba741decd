"""pytest-benchmark timings of the routing ops (forward+backward, ours and the pure-torch
equivalent) and of the chunk -> dechunk round trip, at 9375 tokens, dim 512 (the inputs of
bench_routing.py)."""

import pytest
import torch

from benchmarks.bench_routing import OPS, make_inputs, op_steps, round_trip_step

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
TOKENS, DIM = 9375, 512
BACKEND = "triton" if DEVICE.type == "cuda" else None  # None: the default (cpu when built)


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(TOKENS, DIM, DEVICE, DTYPE)


def _timed(benchmark, step):
    def run():
        step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["ours", "torch"])
@pytest.mark.parametrize("op", OPS)
def test_routing_op_fwd_bwd(benchmark, inputs, op, impl):
    ours, base = op_steps(op, inputs, BACKEND)
    benchmark.group = f"{op} fwd+bwd, {TOKENS} tokens, dim {DIM}"
    _timed(benchmark, ours if impl == "ours" else base)


@pytest.mark.parametrize("impl", ["ours", "torch"])
def test_round_trip_fwd_bwd(benchmark, inputs, impl):
    benchmark.group = f"chunk -> dechunk round trip fwd+bwd, {TOKENS} tokens, dim {DIM}"
    _timed(benchmark, round_trip_step(inputs, ours=impl == "ours"))
