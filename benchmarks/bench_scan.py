"""Scan benchmarks: every available backend of bi_selective_scan against the baselines users
run today without us, each of them two passes with flips (the Hydra approach):

* "torch 2-pass": the pure-torch chunked causal SSD (mmhnet.ops.reference), twice;
* "mamba_ssm 2-pass": mamba_chunk_scan_combined twice (where mamba_ssm is installed);
* "fla 2-pass": flash-linear-attention's chunk_simple_gla twice (where fla is installed);
* "bytes floor": the bytes the op must move divided by the measured copy bandwidth.

Sizes: 16 heads, headdim 64, dstate 64, 1 group; 250, 1875 and 9375 tokens (8 s, 60 s and
5 min of audio at 31.25 Hz), batch 1; on GPU also batch 8 at 9375 and 65536 tokens, where the
issue's target is read: bi_selective_scan fwd+bwd / ONE causal mamba_chunk_scan_combined fwd+bwd.
"""

import torch

from mmhnet.ops import bi_selective_scan, reference
from mmhnet.ops._backend import native_module

from .common import Table, copy_bandwidth, fmt_ms, time_fn

HEADS, HEADDIM, DSTATE, GROUPS = 16, 64, 64, 1
TOKENS = (250, 1875, 9375)
GPU_ONLY = "GPU only, not run on CPU"   # why a baseline column is empty on CPU


def make_inputs(batch, L, device, dtype, requires_grad=True):
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0, shift=0.0):
        t = (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dtype)
        return t.requires_grad_(requires_grad)

    return dict(x=rnd(batch, L, HEADS, HEADDIM), dt=rnd(batch, L, HEADS, shift=-2.0),
                A=(-torch.rand(HEADS, generator=g) - 0.5).to(device).requires_grad_(requires_grad),
                B=rnd(batch, L, GROUPS, DSTATE), C=rnd(batch, L, GROUPS, DSTATE),
                D=torch.ones(HEADS, device=device).requires_grad_(requires_grad))


def _fwd_bwd(fn, args):
    def step():
        y = fn(**args)
        y.backward(torch.ones_like(y))
    return step


def _fwd(fn, args):
    def step():
        with torch.no_grad():
            fn(**args)
    return step


def _ours(backend):
    def fn(**a):
        return bi_selective_scan(**a, dt_softplus=True, backend=backend)
    return fn


def _torch_two_pass(**a):
    return reference.bi_selective_scan_chunked(**a, dt_softplus=True)


def _import_mamba_ssd():
    """mamba_chunk_scan_combined, also from an sdist installed without its CUDA build: there
    ``import mamba_ssm`` fails on the missing selective_scan_cuda, so the package is entered
    without running its __init__ (the Triton SSD needs none of it)."""
    import importlib
    import importlib.util
    import sys
    import types

    try:
        return importlib.import_module("mamba_ssm.ops.triton.ssd_combined").mamba_chunk_scan_combined
    except ImportError:
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or not spec.submodule_search_locations:
            raise
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = pkg
        return importlib.import_module("mamba_ssm.ops.triton.ssd_combined").mamba_chunk_scan_combined


def _mamba_two_pass():
    try:
        mamba_chunk_scan_combined = _import_mamba_ssd()
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        return None, f"mamba_ssm not importable ({type(err).__name__}: {err})"

    def one(**a):
        return mamba_chunk_scan_combined(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=256,
                                         D=a["D"], dt_softplus=True)

    def two(**a):
        flipped = {k: (v.flip(1) if k in ("x", "dt", "B", "C") else v) for k, v in a.items()}
        return one(**a) + one(**flipped).flip(1)

    return (one, two), None


def _fla_two_pass():
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as err:  # noqa: BLE001
        return None, f"fla not importable ({type(err).__name__})"

    def one(**a):
        dt = torch.nn.functional.softplus(a["dt"].float())
        rep = HEADS // GROUPS
        q = a["C"].repeat_interleave(rep, dim=2)
        k = a["B"].repeat_interleave(rep, dim=2)
        v = a["x"] * dt[..., None].to(a["x"].dtype)
        o, _ = chunk_simple_gla(q, k, v, g=dt * a["A"], scale=1.0)
        return o + a["x"] * a["D"][:, None]

    def two(**a):
        flipped = {k: (v.flip(1) if k in ("x", "dt", "B", "C") else v) for k, v in a.items()}
        return one(**a) + one(**flipped).flip(1)

    return two, None


def bytes_moved(batch, L, elem, backward):
    """Minimum traffic of bi_selective_scan: read x, dt, B, C and write y; the backward also
    reads dy and those inputs again and writes dx, ddt, dB, dC."""
    x = batch * L * HEADS * HEADDIM * elem
    bc = 2 * batch * L * GROUPS * DSTATE * elem
    dt = batch * L * HEADS * elem
    fwd = 2 * x + bc + dt
    return fwd + (3 * x + 2 * bc + 2 * dt if backward else 0)


def scan_flops(batch, L, backward):
    """Useful flops of the recurrence, both directions: state update and output read-out,
    2 x (2 P N) per token, head and direction; the backward counts as twice the forward."""
    fwd = 2 * 2 * (2 * HEADDIM * DSTATE) * batch * L * HEADS
    return fwd * (3 if backward else 1)


def _backends(device):
    names = []
    if device.type == "cuda":
        names.append("triton")
        cuda_mod = native_module("_C_cuda")
        if cuda_mod is not None and hasattr(cuda_mod, "bi_scan_fwd"):
            names.append("cuda")
    else:
        cpu_mod = native_module("_C")
        if cpu_mod is not None and hasattr(cpu_mod, "bi_scan_fwd"):
            names.append("cpu")
    return names


def run(device="cpu", quick=False):
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    tokens = TOKENS[:2] if quick else TOKENS
    reps = 3 if quick else 5
    backends = _backends(device)
    mamba, mamba_note = _mamba_two_pass() if on_gpu else (None, GPU_ONLY)
    fla, fla_note = _fla_two_pass() if on_gpu else (None, GPU_ONLY)
    bw = copy_bandwidth(device)
    elem = torch.tensor([], dtype=dtype).element_size()

    cols = ["tokens", "pass"] + [f"{b} ms" for b in backends] + ["torch 2-pass ms"]
    cols += ["mamba_ssm 2-pass ms", "fla 2-pass ms", "bytes floor ms"]
    cols += [f"torch 2-pass / {b}" for b in backends]
    table = Table(f"bi_selective_scan, {HEADS} heads x headdim {HEADDIM}, dstate {DSTATE}, "
                  f"{str(dtype).replace('torch.', '')}, batch 1, {device.type}", cols,
                  note=f"Baselines run the causal scan twice with flips. Copy bandwidth measured "
                       f"here: {bw / 1e9:.0f} GB/s. mamba_ssm: {mamba_note or 'installed'}; "
                       f"fla: {fla_note or 'installed'}. Triton on CPU (interpreter) is not timed.")
    for L in tokens:
        args = make_inputs(1, L, device, dtype)
        for backward in (False, True):
            wrap = _fwd_bwd if backward else _fwd
            ours = [time_fn(wrap(_ours(b), args), device, reps=reps) for b in backends]
            base = time_fn(wrap(_torch_two_pass, args), device, reps=reps)
            m = time_fn(wrap(mamba[1], args), device, reps=reps) if mamba else None
            f = time_fn(wrap(fla, args), device, reps=reps) if fla else None
            floor = bytes_moved(1, L, elem, backward) / bw
            table.add(L, "fwd+bwd" if backward else "fwd", *[fmt_ms(t) for t in ours], fmt_ms(base),
                      fmt_ms(m), fmt_ms(f), fmt_ms(floor), *[f"{base / t:.1f}x" for t in ours])
    return [table]


def run_target(device="cpu", quick=False):
    """The "target" section of benchmarks.run: the issue's target table, GPU only (on CPU: no
    table). Separate from ``run`` so that a time-boxed run can take it first."""
    device = torch.device(device)
    if device.type != "cuda":
        return []
    mamba, mamba_note = _mamba_two_pass()
    return [_target_table(device, mamba, mamba_note, quick)]


def _target_table(device, mamba, mamba_note, quick):
    """The issue's target: fused bi fwd+bwd within 1.25x (aim 1.15x) of ONE causal
    mamba_chunk_scan_combined fwd+bwd, bf16, batch 8."""
    table = Table("Target: bi_selective_scan fwd+bwd vs ONE causal mamba_chunk_scan_combined "
                  "fwd+bwd (bf16, batch 8)",
                  ["tokens", "ours ms", "mamba 1-pass ms", "mamba 2-pass ms", "ours / 1-pass",
                   "2-pass / ours"], note=f"mamba_ssm: {mamba_note or 'installed'}; target "
                                          f"ours / 1-pass <= 1.25 (aim 1.15).")
    for L in ((9375,) if quick else (9375, 65536)):
        args = make_inputs(8, L, device, torch.bfloat16)
        ours = time_fn(_fwd_bwd(_ours("triton"), args), device, reps=5)
        if mamba:
            one = time_fn(_fwd_bwd(mamba[0], args), device, reps=5)
            two = time_fn(_fwd_bwd(mamba[1], args), device, reps=5)
            table.add(L, fmt_ms(ours), fmt_ms(one), fmt_ms(two), f"{ours / one:.2f}",
                      f"{two / ours:.2f}")
        else:
            table.add(L, fmt_ms(ours), "-", "-", "-", "-")
        del args
        torch.cuda.empty_cache()
    return table
