"""Routing benchmarks: each dynamic chunking / routing op (forward+backward) against its
pure-torch equivalent, and the issue's target, the whole chunk -> dechunk round trip as a
fraction of one bi_selective_scan forward+backward on the same tokens.

Sizes: 9375 tokens (one 5-minute sequence at 31.25 Hz) and 65536 tokens (8 packed sequences of
8192), dims 512 and 1024; about a quarter of the tokens are boundaries. float32 on CPU, bfloat16
on GPU. The pure-torch equivalents are what a user writes without us: F.normalize + cosine for
the boundaries, boolean indexing for the gather, index_select (times the straight-through
confidence) for the scatter, index_select / index_add for the token routing, and for the EMA
H-Net's own trick (an EMA is a Mamba-2 scan with dstate 1) on the pure-torch chunked SSD, run
twice with flips for the bidirectional form.
"""

import torch
import torch.nn.functional as F

from mmhnet.ops import (bi_selective_scan, chunk_gather, chunk_scatter, ema_smooth, ratio_loss,
                        reference, route_and_gather, route_boundaries, token_gather,
                        token_scatter)
from mmhnet.ops._backend import native_module

from .common import Table, copy_bandwidth, fmt_ms, time_fn

TOKENS = (9375, 65536)
DIMS = (512, 1024)
BOUNDARY_FRACTION = 0.25
TARGET_RATIO = 4.0
EMA_HEADDIM = 64
ROUND_TRIP_DIM = 1024  # the dim at which the round trip is compared with the scans
SCAN_HEADDIM = 64


def scan_configs(dim):
    """The bi_selective_scans of the target comparison, as (name, heads, headdim, dstate): the
    strict one scans exactly dim channels (dstate 64); the second is the scan a
    BiMamba2(d_model=dim) layer with its default config (expand 2, headdim 64, d_state 128) runs
    on the same tokens."""
    strict, layer = dim // SCAN_HEADDIM, 2 * dim // SCAN_HEADDIM
    return ((f"{strict} x {SCAN_HEADDIM}, dstate 64", strict, SCAN_HEADDIM, 64),
            (f"BiMamba2 default: {layer} x {SCAN_HEADDIM}, dstate 128", layer, SCAN_HEADDIM, 128))


def sequence_lengths(tokens):
    return [tokens] if tokens < 65536 else [tokens // 8] * 8


def make_inputs(tokens, dim, device, dtype):
    """Packed q, k, x (T, dim), cu_seqlens, and the routing they induce (p, mask, chunk ids)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    lengths = sequence_lengths(tokens)
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    k = torch.randn(tokens, dim, generator=g)
    # q_t = s_t k_{t-1} + noise: in high dimension cos(q_t, k_{t-1}) has the sign of s_t, so the
    # share of boundaries is P(s_t < 0) = BOUNDARY_FRACTION for s ~ N(0.674, 1)
    s = torch.randn(tokens, 1, generator=g) + 0.674
    q = s * torch.roll(k, 1, 0) + 0.5 * torch.randn(tokens, dim, generator=g)
    x = torch.randn(tokens, dim, generator=g)
    q, k, x, cu = (t.to(device) for t in (q, k, x, cu))
    p, mask = reference.route_boundaries_reference(q, k, cu)
    _, chunk_cu, chunk_id = reference.chunk_gather_reference(x, mask, cu)
    return dict(q=q.to(dtype), k=k.to(dtype), x=x.to(dtype), cu=cu, p=p.float(), mask=mask,
                chunk_cu=chunk_cu, chunk_id=chunk_id, num_chunks=int(mask.sum()))


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def torch_ema(z, p, cu, bidirectional):
    """H-Net's EMA: a Mamba-2 scan with dstate 1 (dt = -log(1 - p), x = z / dt, B = p, C = 1,
    A = -1) on the pure-torch chunked SSD; bidirectional = mean with the flipped scan."""
    total, dim = z.shape
    heads = dim // EMA_HEADDIM
    pf = p.float().clamp(1e-4, 1 - 1e-4)
    dt = -torch.log1p(-pf)
    x = (z.float() / dt[:, None]).view(1, total, heads, EMA_HEADDIM)
    dt_h = dt[None, :, None].expand(1, total, heads)
    A = -torch.ones(heads, device=z.device)
    B = pf.view(1, total, 1, 1)
    C = torch.ones_like(B)
    y = reference.selective_scan_chunked(x, dt_h, A, B, C, cu_seqlens=cu)
    if bidirectional:
        y = (y + reference.selective_scan_chunked(x, dt_h, A, B, C, cu_seqlens=cu, reverse=True)) / 2
    return y.reshape(total, dim).to(z.dtype)


def _step(forward, leaves):
    """One forward+backward: forward() returns the outputs, the backward takes random upstream
    gradients (drawn at the first call, outside the later timed ones)."""
    upstream = []

    def step():
        outs = forward()
        outs = outs if isinstance(outs, tuple) else (outs,)
        if not upstream:
            upstream.extend(torch.randn_like(o) for o in outs)
        torch.autograd.backward(outs, upstream)
        for t in leaves:
            t.grad = None
    return step


def _floats(outs):
    """The differentiable outputs (p, x_chunks, p_chunks) of route_and_gather."""
    return outs[0], outs[2], outs[5]


def op_steps(name, a, backend):
    """(ours, torch) forward+backward callables of one op on inputs ``a``."""
    if name == "route_boundaries":
        q, k = _leaf(a["q"]), _leaf(a["k"])
        return (_step(lambda: route_boundaries(q, k, a["cu"], backend=backend)[0], (q, k)),
                _step(lambda: reference.route_boundaries_reference(q, k, a["cu"])[0], (q, k)))
    if name == "chunk_gather":
        x = _leaf(a["x"])
        return (_step(lambda: chunk_gather(x, a["mask"], a["cu"], backend=backend)[0], (x,)),
                _step(lambda: reference.chunk_gather_reference(x, a["mask"], a["cu"])[0], (x,)))
    if name == "route_and_gather":
        q, k, x = _leaf(a["q"]), _leaf(a["k"]), _leaf(a["x"])

        def torch_route_and_gather():
            p, mask = reference.route_boundaries_reference(q, k, a["cu"])
            return p, reference.chunk_gather_reference(x, mask, a["cu"])[0], p[mask]
        return (_step(lambda: _floats(route_and_gather(q, k, x, a["cu"], backend=backend)),
                      (q, k, x)),
                _step(torch_route_and_gather, (q, k, x)))
    if name == "chunk_scatter+ste":
        z = _leaf(a["x"][: a["num_chunks"]])
        p = _leaf(a["p"])
        return (_step(lambda: chunk_scatter(z, a["chunk_id"], p=p, mask=a["mask"],
                                            backend=backend), (z, p)),
                _step(lambda: reference.chunk_scatter_reference(z, a["chunk_id"], p=p,
                                                                mask=a["mask"]), (z, p)))
    if name == "ema_smooth (bi)":
        z = _leaf(a["x"][: a["num_chunks"]])
        pc = _leaf(a["p"][a["mask"]].clamp(1e-4, 1 - 1e-4))
        return (_step(lambda: ema_smooth(z, pc, a["chunk_cu"], True, backend=backend), (z, pc)),
                _step(lambda: torch_ema(z, pc, a["chunk_cu"], True), (z, pc)))
    if name == "token_gather":
        x = _leaf(a["x"])
        perm = torch.randperm(x.shape[0], device=x.device)
        return (_step(lambda: token_gather(x, perm, backend=backend), (x,)),
                _step(lambda: x.index_select(0, perm), (x,)))
    if name == "token_scatter":
        x = _leaf(a["x"])
        perm = torch.randperm(x.shape[0], device=x.device)
        n = x.shape[0]
        return (_step(lambda: token_scatter(x, perm, n, backend=backend), (x,)),
                _step(lambda: x.new_zeros(n, x.shape[1]).index_add(0, perm, x), (x,)))
    if name == "ratio_loss":
        p = _leaf(a["p"])
        return (_step(lambda: ratio_loss(a["mask"], p, TARGET_RATIO, backend=backend), (p,)),
                _step(lambda: reference.ratio_loss_reference(a["mask"], p, TARGET_RATIO), (p,)))
    raise ValueError(name)


OPS = ("route_boundaries", "chunk_gather", "route_and_gather", "chunk_scatter+ste",
       "ema_smooth (bi)", "token_gather", "token_scatter", "ratio_loss")


def round_trip_step(a, ours=True):
    """boundaries -> gather (x and p) -> bidirectional EMA -> scatter with confidence, forward and
    backward (the main network that runs on the chunks in between is left out)."""
    q, k, x = _leaf(a["q"]), _leaf(a["k"]), _leaf(a["x"])
    cu = a["cu"]

    def ours_forward():
        p, mask, xc, chunk_cu, chunk_id, pc = route_and_gather(q, k, x, cu)
        e = ema_smooth(xc, pc, chunk_cu, True)
        return chunk_scatter(e, chunk_id, p=p, mask=mask)

    def torch_forward():
        p, mask = reference.route_boundaries_reference(q, k, cu)
        xc, chunk_cu, chunk_id = reference.chunk_gather_reference(x, mask, cu)
        e = torch_ema(xc, p[mask], chunk_cu, True)
        return reference.chunk_scatter_reference(e, chunk_id, p=p, mask=mask)

    return _step(ours_forward if ours else torch_forward, (q, k, x))


def round_trip_bytes(tokens, dim, num_chunks, itemsize):
    """The least memory traffic of the round trip, forward+backward, if every (tokens, dim) and
    (chunks, dim) tensor were read or written exactly once per use: 9 (T, dim) passes (q, k read
    twice; y, dy, dx, dq, dk once) and 11 (C, dim) passes (the gathered rows, the EMA's inputs,
    outputs and gradients)."""
    return itemsize * dim * (9 * tokens + 11 * num_chunks)


def scan_step(tokens, cu, device, dtype, heads, headdim, dstate):
    """One bi_selective_scan forward+backward (default backend) on the same packed tokens:
    x (1, tokens, heads, headdim), one group of B and C (dstate)."""
    g = torch.Generator(device="cpu").manual_seed(1)

    def rnd(*shape, shift=0.0):
        return (torch.randn(*shape, generator=g) + shift).to(device=device, dtype=dtype).requires_grad_(True)

    args = dict(x=rnd(1, tokens, heads, headdim), dt=rnd(1, tokens, heads, shift=-2.0),
                A=(-torch.rand(heads, generator=g) - 0.5).to(device).requires_grad_(True),
                B=rnd(1, tokens, 1, dstate), C=rnd(1, tokens, 1, dstate))
    return _step(lambda: bi_selective_scan(**args, dt_softplus=True, cu_seqlens=cu),
                 list(args.values()))


def _backends(device):
    if device.type != "cuda":
        return ["cpu"] if hasattr(native_module("_C"), "routing_boundaries") else ["reference"]
    names = ["triton"]
    if hasattr(native_module("_C_cuda"), "routing_boundaries"):
        names.append("cuda")
    return names


def run(device="cpu", quick=False):
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokens_list = TOKENS[:1] if quick else TOKENS
    dims = DIMS[-1:] if quick else DIMS
    # medians of 9 after 5 warm-up calls: on CPU the first calls at a new size fault in fresh
    # memory until malloc's heap settles (up to ~100 ms each here, for about 5 calls), which a
    # training loop pays once, not per step
    warmup, reps = 5, 9
    backends = _backends(device)
    noise = ("Timings on a shared machine (other engineers' jobs running): noisy, read ratios "
             "loosely." if device.type == "cpu" else "")
    ops_table = Table(
        f"Routing ops, forward+backward, {str(dtype).replace('torch.', '')}, {device.type}",
        ["op", "tokens", "dim"] + [f"{b} ms" for b in backends] + ["torch ms"]
        + [f"torch / {b}" for b in backends],
        note=f"~{BOUNDARY_FRACTION:.0%} boundaries; 65536 tokens = 8 packed sequences of 8192. "
             f"ema_smooth's torch equivalent is H-Net's dstate-1 Mamba-2 trick on the pure-torch "
             f"chunked SSD, twice with flips. The cuda backend has no ema_smooth / ratio_loss "
             f"(shown as -). {noise}")
    target = Table(
        "Target: chunk -> dechunk round trip fwd+bwd vs ONE bi_selective_scan fwd+bwd, "
        "default backends",
        ["tokens", "dim", "round trip ms", "torch round trip ms", "scan (heads x headdim)",
         "bi_selective_scan ms", "round trip / scan", "traffic floor ms", "floor / scan"],
        note=f"Round trip = route_and_gather (route_boundaries + chunk_gather of x and p), "
             f"bidirectional ema_smooth, chunk_scatter with the confidence STE; target: round "
             f"trip / scan < 10%. Traffic "
             f"floor = the bytes the round trip must move (9 (tokens, dim) and 11 (chunks, dim) "
             f"passes) at the copy bandwidth measured in this run. Two scans: one over exactly "
             f"dim channels (the strict comparison), and the one a BiMamba2(d_model=dim) layer "
             f"with its default config runs on the same tokens. {noise}")
    bandwidth = None
    for tokens in tokens_list:
        for dim in dims:
            a = make_inputs(tokens, dim, device, dtype)
            for name in OPS:
                ours = []
                for b in backends:
                    if b == "cuda" and name in ("ema_smooth (bi)", "ratio_loss"):
                        ours.append(None)
                        continue
                    ours.append(time_fn(op_steps(name, a, b)[0], device, warmup, reps))
                base = time_fn(op_steps(name, a, backends[0])[1], device, warmup, reps)
                ops_table.add(name, tokens, dim, *[fmt_ms(t) for t in ours], fmt_ms(base),
                              *["-" if t is None else f"{base / t:.1f}x" for t in ours])
            if dim == ROUND_TRIP_DIM:
                trip = time_fn(round_trip_step(a), device, warmup, reps)
                trip_torch = time_fn(round_trip_step(a, ours=False), device, warmup, reps)
                if bandwidth is None:
                    bandwidth = copy_bandwidth(device)
                floor = round_trip_bytes(tokens, dim, a["num_chunks"], a["x"].element_size()) / bandwidth
                for scan_name, heads, headdim, dstate in scan_configs(dim):
                    step = scan_step(tokens, a["cu"], device, dtype, heads, headdim, dstate)
                    scan = time_fn(step, device, warmup, reps)
                    target.add(tokens, dim, fmt_ms(trip), fmt_ms(trip_torch), scan_name,
                               fmt_ms(scan), f"{trip / scan:.1%}", fmt_ms(floor), f"{floor / scan:.1%}")
            del a
    if bandwidth is not None:
        target.note += f" Copy bandwidth here: {bandwidth / 1e9:.0f} GB/s."
    return [ops_table, target]
