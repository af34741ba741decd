"""Precision of the scans' gradients on long sequences: the float32 relative error
||g - g64|| / ||g64|| of the output and of every gradient of bi_selective_scan against the same
inputs in float64, at 1000, 9375 (one 5-minute clip at 31.25 Hz) and 65536 tokens.

dA and dt_bias are sums over every token of the gradient of the log-decays, which the native
backends get from a running sum that telescopes (csrc/scan_params.h): without its restarts
("anchors") their error grew in proportion to the length. This table keeps that in view. The
float64 baseline is the "cpu" backend in float64 (tested against the sequential reference), or
the chunked torch reference where mmhnet._C is not built. Shapes: 2 heads, headdim 64, dstate
16, 1 group, D (heads,), dt_bias, softplus dt, mode "sum"; one fixed random draw.

A second table ("strong decay", issue 20) measures 64-token selective_scan calls whose decays
are strong (|dt' A| up to 32 per step), where float32 dA and dt_bias had lost precision on every
backend while a plain sequential float32 scan keeps it; it is the yardstick row.
"""

import math
import statistics


import torch

from mmhnet.ops import bi_selective_scan, reference, selective_scan
from mmhnet.ops._backend import native_module, triton_available, triton_interpreting

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


def output_and_grads(run, inputs, dy, dtype, device, names=NAMES):
    """(y, {name: gradient}) of sum(y * dy), on CPU in float64."""
    leaves = {k: v.to(device=device, dtype=dtype, copy=True).requires_grad_(True)
              for k, v in inputs.items()}
    y = run(leaves)
    y.backward(dy.to(device=device, dtype=dtype))
    return y.detach().cpu().double(), {k: leaves[k].grad.cpu().double() for k in names}


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


STRONG_DRAWS = 20
STRONG_NAMES = ("x", "dt", "A", "B", "C", "dt_bias")


def strong_decay_inputs(seed):
    """One draw of issue 20's case: x (1, 64, 4, 8); B, C (1, 64, 1, 16); A uniform in [-16, -1];
    dt_bias ~ N(0, 0.25) and dt such that softplus(dt + dt_bias) is log-uniform in [0.5, 2].
    Returns (inputs, dy) with dy ~ N(0, 1) of x's shape, float64 holding float32 values (so the
    float64 baseline sees the very inputs of the float32 runs)."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    dt_eff = torch.exp(math.log(0.5) + math.log(4.0) * torch.rand(1, 64, 4, **f64))
    dt_bias = 0.5 * torch.randn(4, **f64)
    inputs = dict(x=torch.randn(1, 64, 4, 8, **f64), dt=torch.log(torch.expm1(dt_eff)) - dt_bias,
                  A=-(1.0 + 15.0 * torch.rand(4, **f64)), B=torch.randn(1, 64, 1, 16, **f64),
                  C=torch.randn(1, 64, 1, 16, **f64), dt_bias=dt_bias)
    inputs = {k: v.float().double() for k, v in inputs.items()}
    return inputs, torch.randn(1, 64, 4, 8, **f64).float().double()


def single_scan_with(backend):
    def run(a):
        return selective_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], dt_bias=a["dt_bias"],
                              dt_softplus=True, backend=backend)
    return run


def sequential_single(a):
    return reference.selective_scan_sequential(a["x"], a["dt"], a["A"], a["B"], a["C"],
                                               dt_bias=a["dt_bias"], dt_softplus=True)


def strong_decay_candidates(device):
    """(name, run, device) of every implementation measurable here; Triton on CPU only under
    the interpreter (TRITON_INTERPRET=1)."""
    out = [("sequential float32 scan (yardstick)", sequential_single, "cpu"),
           ("reference (torch chunked)", single_scan_with("reference"), "cpu")]
    if native_module("_C") is not None:
        out.append(("cpu", single_scan_with("cpu"), "cpu"))
    if triton_available() and (device == "cuda" or triton_interpreting()):
        out.append(("triton" + ("" if device == "cuda" else " (interpreter)"),
                    single_scan_with("triton"), device))
    if device == "cuda" and native_module("_C_cuda") is not None:
        out.append(("cuda", single_scan_with("cuda"), "cuda"))
    return out


def strong_decay_table(device, draws=STRONG_DRAWS):
    """float32 relative error of y and every gradient against the float64 sequential reference,
    over `draws` seeded draws: median and max of dA and dt_bias, max of the others."""
    cases = []
    for seed in range(draws):
        inputs, dy = strong_decay_inputs(seed)
        cases.append((inputs, dy, output_and_grads(sequential_single, inputs, dy, torch.float64,
                                                   "cpu", STRONG_NAMES)))
    table = Table("selective_scan float32 relative error vs float64 under strong decay (issue 20)",
                  ["impl", "dA median", "dA max", "ddt_bias median", "ddt_bias max",
                   "max of y, dx, ddt, dB, dC"],
                  note=f"{draws} draws (seeds 0..{draws - 1}): x (1, 64, 4, 8), 1 group, dstate "
                       f"16, A ~ U[-16, -1], softplus(dt + dt_bias) log-uniform in [0.5, 2].")
    for name, fn, dev in strong_decay_candidates(device):
        errors = {k: [] for k in ("y",) + STRONG_NAMES}
        for inputs, dy, (y64, g64) in cases:
            y, g = output_and_grads(fn, inputs, dy, torch.float32, dev, STRONG_NAMES)
            errors["y"].append(rel(y, y64))
            for k in STRONG_NAMES:
                errors[k].append(rel(g[k], g64[k]))
        others = max(max(errors[k]) for k in ("y", "x", "dt", "B", "C"))
        table.add(name, f"{statistics.median(errors['A']):.1e}", f"{max(errors['A']):.1e}",
                  f"{statistics.median(errors['dt_bias']):.1e}", f"{max(errors['dt_bias']):.1e}",
                  f"{others:.1e}")
    return table


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
    return [table, strong_decay_table(device)]
