"""Precision of the scans' gradients on long sequences: the float32 relative error
||g - g64|| / ||g64|| of the output and of every gradient of bi_selective_scan against the same
inputs in float64, at 1000, 9375 (one 5-minute clip at 31.25 Hz) and 65536 tokens.

dA and dt_bias are sums over every token of the gradient of the log-decays, which the native
backends get from a running sum that telescopes (csrc/scan_params.h): without its restarts
("anchors") their error grew in proportion to the length. This table keeps that in view. The
float64 baseline is the "cpu" backend in float64 (tested against the sequential reference), or
the chunked torch reference where mmhnet._C is not built. Shapes: 2 heads, headdim 64, dstate
16, 1 group, D (heads,), dt_bias, softplus dt, mode "sum"; one fixed random draw.
"""

import torch

from mmhnet.ops import bi_selective_scan, reference
from mmhnet.ops._backend import native_module, triton_available

from .common import Table

TOKENS = (1000, 9375, 65536)
QUICK_TOKENS = (1000, 9375)
HEADS, HEADDIM, GROUPS, DSTATE = 2, 64, 1, 16
NAMES = ("x", "dt", "A", "B", "C", "D", "dt_bias")


def make_inputs(tokens):
    g = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(1, tokens, HEADS, HEADDIM, generator=g),
                dt=torch.randn(1, tokens, HEADS, generator=g) - 1.0,
                A=-(torch.rand(HEADS, generator=g) * 2.0 + 0.1),
                B=torch.randn(1, tokens, GROUPS, DSTATE, generator=g),
                C=torch.randn(1, tokens, GROUPS, DSTATE, generator=g),
                D=torch.randn(HEADS, generator=g), dt_bias=torch.randn(HEADS, generator=g) * 0.5)


def output_and_grads(run, inputs, dy, dtype, device):
    """(y, {name: gradient}) of sum(y * dy), on CPU in float64."""
    leaves = {k: v.to(device=device, dtype=dtype, copy=True).requires_grad_(True)
              for k, v in inputs.items()}
    y = run(leaves)
    y.backward(dy.to(device=device, dtype=dtype))
    return y.detach().cpu().double(), {k: leaves[k].grad.cpu().double() for k in NAMES}


def scan_with(backend):
    def run(a):
        return bi_selective_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"],
                                 dt_bias=a["dt_bias"], dt_softplus=True, backend=backend)
    return run


def chunked_reference(a):
    return reference.bi_selective_scan_chunked(a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"],
                                               dt_bias=a["dt_bias"], dt_softplus=True)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def run(device, quick):
    has_cpu = native_module("_C") is not None
    baseline = scan_with("cpu") if has_cpu else chunked_reference
    candidates = [("torch chunked SSD (reference)", chunked_reference, "cpu")]
    if device == "cuda":
        if triton_available():
            candidates.append(("triton", scan_with("triton"), "cuda"))
        if native_module("_C_cuda") is not None:
            candidates.append(("cuda", scan_with("cuda"), "cuda"))
    if has_cpu:
        candidates.append(("cpu", scan_with("cpu"), "cpu"))
    table = Table("bi_selective_scan float32 relative error vs float64, by length",
                  ["impl", "tokens", "y"] + ["d" + n for n in NAMES],
                  note=f"{HEADS} heads, headdim {HEADDIM}, dstate {DSTATE}; baseline: "
                       f"{'the cpu backend' if has_cpu else 'the chunked torch reference'} "
                       f"in float64.")
    for tokens in QUICK_TOKENS if quick else TOKENS:
        inputs = make_inputs(tokens)
        dy = torch.randn(1, tokens, HEADS, HEADDIM, generator=torch.Generator().manual_seed(1))
        y64, g64 = output_and_grads(baseline, inputs, dy, torch.float64, "cpu")
        for name, fn, dev in candidates:
            y, g = output_and_grads(fn, inputs, dy, torch.float32, dev)
            table.add(name, tokens, f"{rel(y, y64):.1e}", *(f"{rel(g[n], g64[n]):.1e}" for n in NAMES))
    return [table]
