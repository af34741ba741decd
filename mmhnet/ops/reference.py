"""Pure-PyTorch references for every mmhnet op: the ``naive.py`` that each backend is tested
against, and the "reference" backend.

Two forms of the selective scan live here (shapes and maths: docs/DESIGN.md, "Op 1"):

* ``selective_scan_sequential`` / ``bi_selective_scan_sequential``: the recurrence written
  step by step. Slow, obviously right, float64-capable: the ground truth of the tests.
* ``ssd_chunked`` and ``selective_scan_chunked`` / ``bi_selective_scan_chunked``: the chunked
  (SSD, matmul) form in plain torch, what users run today without us; the "reference" backend
  serves calls with it, and the benchmarks use it (run twice, with flips) as the baseline.

Arithmetic is float64 for float64 inputs, else float32; outputs take x's dtype.
"""

import torch
import torch.nn.functional as F

__all__ = [
    "compute_dtype",
    "effective_dt",
    "selective_scan_sequential",
    "bi_selective_scan_sequential",
    "ssd_chunked",
    "selective_scan_chunked",
    "bi_selective_scan_chunked",
]


def compute_dtype(x):
    """float64 for float64, else float32 (state and parameter arithmetic); x a tensor, or a
    dtype (None: torch's default, float32 here)."""
    dtype = x.dtype if isinstance(x, torch.Tensor) else x
    return torch.float64 if dtype == torch.float64 else torch.float32


def effective_dt(dt, dt_bias, dt_softplus, dtype):
    """dt' = softplus(dt + dt_bias) (or without softplus), in ``dtype``. (b, l, h) -> (b, l, h)."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    return dt


def _expand_groups(M, nheads, dtype):
    """(b, l, g, n) -> (b, l, h, n): head h reads group h // (nheads // g)."""
    return M.to(dtype).repeat_interleave(nheads // M.shape[2], dim=2)


def _sequence_slices(total, cu_seqlens):
    if cu_seqlens is None:
        return [slice(0, total)]
    bounds = cu_seqlens.tolist()
    return [slice(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _finish(y, x, D, z, cd):
    """y + D x, then y * silu(z); cast to x's dtype."""
    if D is not None:
        Dc = D.to(cd)
        y = y + (Dc[:, None] if Dc.dim() == 1 else Dc) * x.to(cd)
    if z is not None:
        y = y * F.silu(z.to(cd))
    return y.to(x.dtype)


def _recurrence(x, dt, A, B, C, reverse):
    """One direction over one sequence. x (b,l,h,p), dt (b,l,h), A (h), B/C (b,l,h,n); all in the
    compute dtype. Returns C_t . h_t for every t: (b, l, h, p)."""
    b, l, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1])
    out = [None] * l
    for t in (range(l - 1, -1, -1) if reverse else range(l)):
        decay = torch.exp(dt[:, t] * A)  # (b, h)
        inp = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]  # (b, h, p, n)
        state = decay[..., None, None] * state + inp
        out[t] = torch.einsum("bhpn,bhn->bhp", state, C[:, t])
    if l == 0:
        return x.new_zeros(b, 0, h, p)
    return torch.stack(out, dim=1)


def _direction_sequential(x, dt, A, B, C, reverse, cu_seqlens, cd):
    nheads = x.shape[2]
    xc, Ac = x.to(cd), A.to(cd)
    Bc, Cc = _expand_groups(B, nheads, cd), _expand_groups(C, nheads, cd)
    parts = [
        _recurrence(xc[:, s], dt[:, s], Ac, Bc[:, s], Cc[:, s], reverse)
        for s in _sequence_slices(x.shape[1], cu_seqlens)
    ]
    return torch.cat(parts, dim=1) if parts else xc.new_zeros(x.shape)


def _shift_within_sequences(y, shift, cu_seqlens):
    """out_t = y_{t - shift} inside each sequence, 0 where t - shift leaves it. shift = +-1."""
    parts = []
    for s in _sequence_slices(y.shape[1], cu_seqlens):
        seg = y[:, s]
        zero = torch.zeros_like(seg[:, :1])
        if seg.shape[1] == 0:
            parts.append(seg)
        elif shift > 0:
            parts.append(torch.cat([zero, seg[:, :-1]], dim=1))
        else:
            parts.append(torch.cat([seg[:, 1:], zero], dim=1))
    return torch.cat(parts, dim=1)


def selective_scan_sequential(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                              reverse=False, cu_seqlens=None):
    """Sequential reference of ``mmhnet.ops.selective_scan`` (DESIGN.md, Op 1)."""
    cd = compute_dtype(x)
    dte = effective_dt(dt, dt_bias, dt_softplus, cd)
    y = _direction_sequential(x, dte, A, B, C, reverse, cu_seqlens, cd)
    return _finish(y, x, D, z, cd)


def _combine_bi(yf, yr, mode, cu_seqlens):
    if mode == "quasiseparable":
        yf = _shift_within_sequences(yf, +1, cu_seqlens)
        yr = _shift_within_sequences(yr, -1, cu_seqlens)
    elif mode != "sum":
        raise ValueError(f"mode must be 'sum' or 'quasiseparable', got {mode!r}")
    return yf + yr


def bi_selective_scan_sequential(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                 dt_rev=None, A_rev=None, B_rev=None, C_rev=None, mode="sum",
                                 cu_seqlens=None):
    """Sequential reference of ``mmhnet.ops.bi_selective_scan`` (DESIGN.md, Op 1)."""
    cd = compute_dtype(x)
    dtf = effective_dt(dt, dt_bias, dt_softplus, cd)
    dtr = dtf if dt_rev is None else effective_dt(dt_rev, dt_bias, dt_softplus, cd)
    yf = _direction_sequential(x, dtf, A, B, C, False, cu_seqlens, cd)
    yr = _direction_sequential(
        x, dtr, A if A_rev is None else A_rev, B if B_rev is None else B_rev,
        C if C_rev is None else C_rev, True, cu_seqlens, cd)
    return _finish(_combine_bi(yf, yr, mode, cu_seqlens), x, D, z, cd)


# ----------------------------------------------------------------------------------------------
# Chunked (SSD) form
# ----------------------------------------------------------------------------------------------

def _segment_sums(lam):
    """Log-decay between every causal pair of a chunk, summed directly: lam (b, c, q, h) ->
    (b, c, h, s, t) holding sum_{s < k <= t} lam_k for s <= t and -inf for s > t.

    Not L_t - L_s of the cumulative sum L (as mamba_ssm's ``segsum``): through L_t - L_s,
    autograd forms d lam as a reverse cumulative sum of O(1) terms (each pair's gradient enters
    at both ends, the pair (t, t) too) that cancel to the small true value under strong decay;
    in float32 that cost dA and dt_bias up to ~6e-3 relative error (issue 20). Summed directly,
    the gradient of lam_k collects only the pairs s < k <= t, each decayed over its segment.
    The sum runs over the last, contiguous dimension (torch's CPU cumsum is ~5x slower over a
    strided one); -inf is added, not filled in, so that its backward is free.
    """
    b, c, q, h = lam.shape
    terms = lam.transpose(2, 3)[:, :, :, None, :].expand(b, c, h, q, q).triu(1)  # k > s
    above = torch.full((q, q), float("-inf"), dtype=lam.dtype, device=lam.device).tril(-1)
    return terms.cumsum(-1) + above


def ssd_chunked(x, dt, A, B, C, chunk_size=64):
    """Causal SSD in matmul form, one sequence per batch row, no options.

    x (b, l, h, p); dt (b, l, h) already effective (bias/softplus applied); A (h,);
    B, C (b, l, g, n). Returns (b, l, h, p) in the compute dtype of x.

    Inside a chunk of Q tokens with chunk-local cumulative log-decay L_t:
        y_t = sum_{s<=t} exp(L_t - L_s) (C_t . B_s) dt_s x_s  +  exp(L_t) C_t . H_in
    and the state entering the next chunk is
        H_out = exp(L_Q) H_in + sum_s exp(L_Q - L_s) dt_s x_s (x) B_s.
    """
    cd = compute_dtype(x)
    b, l, h, p = x.shape
    n = B.shape[-1]
    if l == 0:
        return x.new_zeros(b, 0, h, p, dtype=cd)
    q = chunk_size
    nc = -(-l // q)
    pad = nc * q - l
    Bh, Ch = _expand_groups(B, h, cd), _expand_groups(C, h, cd)
    xc, dtc = x.to(cd), dt.to(cd)
    if pad:
        xc = F.pad(xc, (0, 0, 0, 0, 0, pad))
        dtc = F.pad(dtc, (0, 0, 0, pad))
        Bh = F.pad(Bh, (0, 0, 0, 0, 0, pad))
        Ch = F.pad(Ch, (0, 0, 0, 0, 0, pad))
    xc = xc.view(b, nc, q, h, p)
    dtc = dtc.view(b, nc, q, h)
    Bh = Bh.view(b, nc, q, h, n)
    Ch = Ch.view(b, nc, q, h, n)
    lam = dtc * A.to(cd)  # (b, c, q, h) log-decay per token
    Lc = torch.cumsum(lam, dim=2)  # chunk-local inclusive cumsum
    xdt = xc * dtc[..., None]
    # intra-chunk: decay matrix exp(L_t - L_s) for s <= t
    segsum = _segment_sums(lam)  # (b, c, h, s, t)
    CB = torch.einsum("bcthn,bcshn->bchst", Ch, Bh)
    y = torch.einsum("bchst,bcshp->bcthp", CB * torch.exp(segsum), xdt)
    # chunk-local states and their passing from chunk to chunk
    L_end = Lc[:, :, -1]  # (b, c, h)
    w = torch.exp(segsum[..., -1])  # (b, c, h, s): exp(L_end - L_s), seg's last column
    local = torch.einsum("bchs,bcshp,bcshn->bchpn", w, xdt, Bh)
    # unbind, not indexing per chunk: the backward of x[:, c] writes a zero tensor of x's size
    # for every chunk (quadratic in the length), that of unbind one stack
    states = []
    running = x.new_zeros(b, h, p, n, dtype=cd)
    for carry_c, local_c in zip(torch.exp(L_end).unbind(1), local.unbind(1)):
        states.append(running)
        running = carry_c[:, :, None, None] * running + local_c
    H_in = torch.stack(states, dim=1)  # (b, c, h, p, n)
    y = y + torch.einsum("bcthn,bchpn,bcth->bcthp", Ch, H_in, torch.exp(Lc))
    return y.reshape(b, nc * q, h, p)[:, :l]


def _direction_chunked(x, dt, A, B, C, reverse, cu_seqlens, chunk_size):
    """One direction of the chunked scan: per sequence, reverse = flip, causal SSD, flip."""
    parts = []
    for s in _sequence_slices(x.shape[1], cu_seqlens):
        xs, dts, Bs, Cs = x[:, s], dt[:, s], B[:, s], C[:, s]
        if reverse:
            xs, dts, Bs, Cs = (t.flip(1) for t in (xs, dts, Bs, Cs))
        ys = ssd_chunked(xs, dts, A, Bs, Cs, chunk_size)
        parts.append(ys.flip(1) if reverse else ys)
    return torch.cat(parts, dim=1)


def selective_scan_chunked(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           reverse=False, cu_seqlens=None, chunk_size=64):
    """``selective_scan`` through the chunked SSD (the "reference" backend)."""
    cd = compute_dtype(x)
    dte = effective_dt(dt, dt_bias, dt_softplus, cd)
    y = _direction_chunked(x, dte, A, B, C, reverse, cu_seqlens, chunk_size)
    return _finish(y, x, D, z, cd)


def bi_selective_scan_chunked(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                              dt_rev=None, A_rev=None, B_rev=None, C_rev=None, mode="sum",
                              cu_seqlens=None, chunk_size=64):
    """``bi_selective_scan`` as two chunked passes, the reverse one with flips (the Hydra way)."""
    cd = compute_dtype(x)
    dtf = effective_dt(dt, dt_bias, dt_softplus, cd)
    dtr = dtf if dt_rev is None else effective_dt(dt_rev, dt_bias, dt_softplus, cd)
    yf = _direction_chunked(x, dtf, A, B, C, False, cu_seqlens, chunk_size)
    yr = _direction_chunked(
        x, dtr, A if A_rev is None else A_rev, B if B_rev is None else B_rev,
        C if C_rev is None else C_rev, True, cu_seqlens, chunk_size)
    return _finish(_combine_bi(yf, yr, mode, cu_seqlens), x, D, z, cd)
from .reference_routing import *  # noqa: F401,F403
