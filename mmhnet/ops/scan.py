"""Public selective-scan ops: ``selective_scan`` and ``bi_selective_scan`` (DESIGN.md, Op 1).

Both lower to one custom op, ``mmhnet::bi_scan``, whose backward is ``mmhnet::bi_scan_bwd``;
both are registered with torch.library (custom_op + register_fake + register_autograd), so they
work under torch.compile(fullgraph=True). Kernel backends implement two functions,
``forward(args) -> y`` and ``backward(dy, args) -> ScanGrads`` (``_scan_triton.py``,
``_scan_native.py``). The "reference" backend is plain torch (``_scan_reference.py``): autograd
differentiates it directly, without the custom op.

mamba_ssm's keywords (chunk_size, seq_idx, dt_limit, initial_states, return_final_states) are
resolved here, in plain torch around the op (``_scan_states.py``), so the op's schema is the
same with or without them and a call without them takes the same path as before.
"""

import importlib
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import _scan_reference
from ._backend import resolve_backend
from ._checks import (check_choice, check_cu_seqlens_meta, check_cu_seqlens_values, check_flag,
                      check_same_device, check_tensor, check_token_count, offsets_int32)
from ._scan_args import BOTH, FORWARD, MODES, REVERSE, ScanArgs, ScanGrads
from ._scan_states import (NO_DT_LIMIT, check_chunk_size, check_dt_limit, check_seq_idx,
                           check_state, direction_terms, effective_dt, seq_idx_to_cu_seqlens,
                           unpack_pair)
from .reference import compute_dtype

__all__ = ["selective_scan", "bi_selective_scan", "seq_idx_to_cu_seqlens", "ScanArgs", "ScanGrads"]

# The native symbol a backend module must export to serve the scans.
NATIVE_SYMBOL = "bi_scan_fwd"

_GRAD_INPUTS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "dt_rev", "A_rev", "B_rev", "C_rev")


def _impl(backend):
    """The kernel backend's module (imported on first use: triton is imported only if needed)."""
    if backend not in _BACKEND_MODULES:
        raise ValueError(f"mmhnet::bi_scan serves the kernel backends {tuple(_BACKEND_MODULES)}, "
                         f"got {backend!r}; the 'reference' backend is plain torch "
                         f"(call mmhnet.ops.bi_selective_scan)")
    return importlib.import_module("mmhnet.ops._scan_" + _BACKEND_MODULES[backend])


_BACKEND_MODULES = {"triton": "triton", "cpu": "native", "cuda": "native"}


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------

def _check_scan_args(x, dt, A, B, C, D, z, dt_bias, cu_seqlens, rev=None):
    check_tensor("x", x, ndim=4)
    b, l, h, p = x.shape
    check_tensor("dt", dt, shape=(b, l, h))
    check_tensor("A", A, shape=(h,))
    check_tensor("B", B, ndim=4)
    g, n = B.shape[2], B.shape[3]
    check_tensor("B", B, shape=(b, l, g, n))
    if g == 0 or h % g != 0:
        raise ValueError(f"nheads ({h}, from x) must be divisible by ngroups ({g}, from B)")
    check_tensor("C", C, shape=(b, l, g, n))
    check_tensor("D", D, optional=True)
    if D is not None and tuple(D.shape) not in ((h,), (h, p)):
        raise ValueError(f"D must have shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
    check_tensor("z", z, shape=(b, l, h, p), optional=True)
    check_tensor("dt_bias", dt_bias, shape=(h,), optional=True)
    named = [("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
             ("dt_bias", dt_bias), ("cu_seqlens", cu_seqlens)]
    if rev is not None:
        dt_rev, A_rev, B_rev, C_rev = rev
        check_tensor("dt_rev", dt_rev, shape=(b, l, h), optional=True)
        check_tensor("A_rev", A_rev, shape=(h,), optional=True)
        check_tensor("B_rev", B_rev, shape=(b, l, g, n), optional=True)
        check_tensor("C_rev", C_rev, shape=(b, l, g, n), optional=True)
        named += [("dt_rev", dt_rev), ("A_rev", A_rev), ("B_rev", B_rev), ("C_rev", C_rev)]
    check_same_device(named)
    check_cu_seqlens_meta(cu_seqlens, b)
    if cu_seqlens is not None:
        check_token_count("x", l, "packed tokens")


# ----------------------------------------------------------------------------------------------
# public ops
# ----------------------------------------------------------------------------------------------

def selective_scan(x, dt, A, B, C, chunk_size=None, *, D=None, z=None, dt_bias=None,
                   dt_softplus=False, reverse=False, cu_seqlens=None, seq_idx=None,
                   initial_states=None, return_final_states=False, dt_limit=NO_DT_LIMIT,
                   backend=None):
    """One-direction selective scan (Mamba-2 SSD recurrence).

    x (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads); A (nheads,), negative;
    B, C (batch, seqlen, ngroups, dstate); D None | (nheads,) | (nheads, headdim);
    z None | like x; dt_bias None | (nheads,); cu_seqlens None | int32 (nseq + 1,) with batch 1.

    h_t = exp(dt'_t A) h_{t-1} + dt'_t B_t (x) x_t (or right to left when ``reverse``),
    y_t = C_t . h_t + D x_t, then y * silu(z). Returns a tensor like x.

    mamba_ssm's keywords (``mamba_chunk_scan_combined``), with its meanings:
    chunk_size: a tuning hint (positive int), ignored: the backends choose their chunking.
    seq_idx (batch, seqlen) int, non-decreasing along each row: tokens with different values
    (or in different rows) never interact; an alternative to cu_seqlens (one host sync).
    dt_limit (min, max): dt' = softplus(dt + dt_bias) clamped to [min, max].
    initial_states None | (nseq, nheads, headdim, dstate): the state before the first token
    (the last when ``reverse``) of each sequence (nseq = batch, or one per packed sequence).
    return_final_states: return (y, final_states), the state after each sequence's last
    token (first when ``reverse``), float32 (float64 for float64 inputs), like initial_states.
    """
    _check_scan_args(x, dt, A, B, C, D, z, dt_bias, cu_seqlens)
    limit, want_final = _check_mamba_keywords(x, chunk_size, cu_seqlens, seq_idx, dt_limit,
                                              return_final_states)
    if initial_states is not None and not isinstance(initial_states, torch.Tensor):
        raise TypeError(f"initial_states must be a torch.Tensor or None, got "
                        f"{type(initial_states).__name__}")
    be = resolve_backend(backend, x.device, "selective_scan", NATIVE_SYMBOL)
    args = ScanArgs(x, dt, A, B, C, D, z, dt_bias, None, None, None, None, cu_seqlens,
                    check_flag("dt_softplus", dt_softplus),
                    REVERSE if check_flag("reverse", reverse) else FORWARD, False)
    y, finals = _scan(be, args, seq_idx, {"initial_states": initial_states}, want_final, limit)
    return (y, finals[0]) if want_final else y


def bi_selective_scan(x, dt, A, B, C, chunk_size=None, *, D=None, z=None, dt_bias=None,
                      dt_softplus=False, dt_rev=None, A_rev=None, B_rev=None, C_rev=None,
                      mode="sum", cu_seqlens=None, seq_idx=None, initial_states=None,
                      return_final_states=False, dt_limit=NO_DT_LIMIT, backend=None):
    """Fused bidirectional selective scan: both directions from one pass over the inputs.

    Shapes as ``selective_scan``; dt_rev, A_rev, B_rev, C_rev (shaped like dt, A, B, C) drive
    the reverse direction where given, else the forward ones do.
    mode="sum":            y_t = yf_t + yr_t + D x_t
    mode="quasiseparable": y_t = yf_{t-1} + yr_{t+1} + D x_t   (Hydra; zero across boundaries)
    then y * silu(z) if z is given. Returns a tensor like x.

    chunk_size, seq_idx, dt_limit as ``selective_scan``. initial_states: None or a pair
    (h0_fwd, h0_rev), either None, each (nseq, nheads, headdim, dstate): h0_fwd enters each
    sequence at its first token, h0_rev at its last. return_final_states: return
    (y, (hT_fwd, hT_rev)), the forward state after each sequence's last token and the reverse
    state after its first.
    """
    check_choice("mode", mode, MODES)
    _check_scan_args(x, dt, A, B, C, D, z, dt_bias, cu_seqlens, rev=(dt_rev, A_rev, B_rev, C_rev))
    limit, want_final = _check_mamba_keywords(x, chunk_size, cu_seqlens, seq_idx, dt_limit,
                                              return_final_states)
    h0_fwd, h0_rev = unpack_pair(initial_states)
    be = resolve_backend(backend, x.device, "bi_selective_scan", NATIVE_SYMBOL)
    args = ScanArgs(x, dt, A, B, C, D, z, dt_bias, dt_rev, A_rev, B_rev, C_rev, cu_seqlens,
                    check_flag("dt_softplus", dt_softplus), BOTH, mode == "quasiseparable")
    y, finals = _scan(be, args, seq_idx, {"initial_states[0] (h0_fwd)": h0_fwd,
                                          "initial_states[1] (h0_rev)": h0_rev}, want_final, limit)
    return (y, tuple(finals)) if want_final else y


# ----------------------------------------------------------------------------------------------
# mamba_ssm's keywords: seq_idx, dt_limit, initial and final states (plain torch around the op)
# ----------------------------------------------------------------------------------------------

def _check_mamba_keywords(x, chunk_size, cu_seqlens, seq_idx, dt_limit, return_final_states):
    """Metadata checks of the keywords; returns (dt limit or None, return_final_states)."""
    check_chunk_size(chunk_size)
    check_seq_idx(seq_idx, x.shape[0], x.shape[1], cu_seqlens)
    if seq_idx is not None:
        check_same_device([("x", x), ("seq_idx", seq_idx)])
    return check_dt_limit(dt_limit), check_flag("return_final_states", return_final_states)


# per-token inputs of ScanArgs, reshaped when seq_idx packs the rows
_TOKEN_FIELDS = ("x", "dt", "B", "C", "z", "dt_rev", "B_rev", "C_rev")


def _pack_rows(args, cu_seqlens):
    """(batch, seqlen, ...) inputs as one packed row (1, batch * seqlen, ...), keeping a reverse
    input that is the forward tensor itself the same object."""
    packed = {}
    for name in _TOKEN_FIELDS:
        t = getattr(args, name)
        if t is not None and id(t) not in packed:
            packed[id(t)] = t.reshape(1, t.shape[0] * t.shape[1], *t.shape[2:])
    return args._replace(cu_seqlens=cu_seqlens, **{
        name: packed[id(getattr(args, name))] for name in _TOKEN_FIELDS
        if getattr(args, name) is not None})


def _scan(backend, args, seq_idx, states, want_final, limit):
    """Run the scan with mamba_ssm's keywords resolved. states: {argument name: initial state
    or None}, one per direction. Returns (y, list of final states or None)."""
    batch, seqlen = args.x.shape[:2]
    if seq_idx is not None:
        args = _pack_rows(args, seq_idx_to_cu_seqlens(seq_idx))
    args = args._replace(cu_seqlens=offsets_int32(args.cu_seqlens, args.x.shape[1]))
    nseq = batch if args.cu_seqlens is None else args.cu_seqlens.shape[0] - 1
    for name, h0 in states.items():
        check_state(name, h0, (nseq, args.x.shape[2], args.x.shape[3], args.B.shape[3]),
                    args.x.device)
    h0s = list(states.values())
    finals = None
    if limit is None and not want_final and all(h0 is None for h0 in h0s):
        y = _run(backend, args)
    else:
        y, finals = _run_with_states(backend, args, h0s, want_final, limit)
    if seq_idx is not None:
        y = y.reshape(batch, seqlen, *y.shape[2:])
    return y, finals


def _run_with_states(backend, a, h0s, want_final, limit):
    """The kernels get dt' = clamp(softplus(dt + dt_bias)) computed here (no bias, no softplus),
    so that every backend clamps and the state terms use the same dt'; with an initial state the
    gate silu(z) is applied here, after the state's share is added."""
    cd = compute_dtype(a.x)
    dtf = effective_dt(a.dt, a.dt_bias, a.dt_softplus, limit, cd)
    dtr = a.dt_rev
    if dtr is not None:
        dtr = dtf if dtr is a.dt else effective_dt(dtr, a.dt_bias, a.dt_softplus, limit, cd)
    has_h0 = any(h0 is not None for h0 in h0s)
    k = a._replace(dt=dtf, dt_rev=dtr, dt_bias=None, dt_softplus=False,
                   z=None if has_h0 else a.z)
    y = _run(backend, k)
    if not has_h0 and not want_final:
        return y, None
    # the offsets were validated by _run; the per-sequence terms need them on the host
    bounds = None if k.cu_seqlens is None else k.cu_seqlens.tolist()
    extra, finals = None, []
    for (dt_d, A_d, B_d, C_d, rev), h0 in zip(_directions(k), h0s):
        e, f = direction_terms(k.x, dt_d, A_d, B_d, C_d, h0, want_final, rev, k.quasi, bounds)
        extra = e if extra is None else extra if e is None else extra + e
        finals.append(f)
    if has_h0:
        y = y.to(cd) + extra
        y = (y if a.z is None else y * F.silu(a.z.to(cd))).to(a.x.dtype)
    return y, finals if want_final else None


def _directions(k):
    """(dt', A, B, C, reverse) of each direction the call scans, in the order of its states."""
    if k.directions != BOTH:
        return [(k.dt, k.A, k.B, k.C, k.directions == REVERSE)]
    pick = lambda rev, fwd: fwd if rev is None else rev  # noqa: E731
    return [(k.dt, k.A, k.B, k.C, False),
            (pick(k.dt_rev, k.dt), pick(k.A_rev, k.A), pick(k.B_rev, k.B), pick(k.C_rev, k.C),
             True)]


def _run(backend, args):
    """The reference backend is plain differentiable torch (autograd records it directly);
    every other backend goes through the registered custom op."""
    if backend == "reference":
        check_cu_seqlens_values(args.cu_seqlens, args.x.shape[1])
        return _scan_reference.forward(args)
    return torch.ops.mmhnet.bi_scan(*args, backend)


# ----------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("mmhnet::bi_scan", mutates_args=())
def _bi_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
             dt_bias: Optional[torch.Tensor], dt_rev: Optional[torch.Tensor],
             A_rev: Optional[torch.Tensor], B_rev: Optional[torch.Tensor],
             C_rev: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
             dt_softplus: bool, directions: int, quasi: bool, backend: str) -> torch.Tensor:
    args = ScanArgs(x, dt, A, B, C, D, z, dt_bias, dt_rev, A_rev, B_rev, C_rev, cu_seqlens,
                    dt_softplus, directions, quasi)
    check_cu_seqlens_values(cu_seqlens, x.shape[1])
    if x.shape[1] == 0 or x.numel() == 0:
        return torch.zeros_like(x, memory_format=torch.contiguous_format)
    return _impl(backend).forward(args)


@_bi_scan.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, dt_rev, A_rev, B_rev, C_rev, cu_seqlens, dt_softplus,
      directions, quasi, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)  # as every kernel returns


@torch.library.custom_op("mmhnet::bi_scan_bwd", mutates_args=())
def _bi_scan_bwd(dy: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                 B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                 z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                 dt_rev: Optional[torch.Tensor], A_rev: Optional[torch.Tensor],
                 B_rev: Optional[torch.Tensor], C_rev: Optional[torch.Tensor],
                 cu_seqlens: Optional[torch.Tensor], dt_softplus: bool, directions: int,
                 quasi: bool, backend: str
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                            torch.Tensor, torch.Tensor]:
    args = ScanArgs(x, dt, A, B, C, D, z, dt_bias, dt_rev, A_rev, B_rev, C_rev, cu_seqlens,
                    dt_softplus, directions, quasi)
    if x.shape[1] == 0 or x.numel() == 0:
        grads = ScanGrads(*[None if t is None else torch.zeros_like(t)
                            for t in (getattr(args, n) for n in _GRAD_INPUTS)])
    else:
        grads = _impl(backend).backward(dy.contiguous(), args)
    out = []
    for name, g in zip(_GRAD_INPUTS, grads):
        inp = getattr(args, name)
        if inp is None:
            out.append(x.new_empty(0))
        else:
            out.append(g.to(inp.dtype).contiguous())
    return tuple(out)


@_bi_scan_bwd.register_fake
def _(dy, x, dt, A, B, C, D, z, dt_bias, dt_rev, A_rev, B_rev, C_rev, cu_seqlens, dt_softplus,
      directions, quasi, backend):
    inputs = (x, dt, A, B, C, D, z, dt_bias, dt_rev, A_rev, B_rev, C_rev)
    return tuple(x.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in inputs)


def _setup_context(ctx, inputs, output):
    (x, dt, A, B, C, D, z, dt_bias, dt_rev, A_rev, B_rev, C_rev, cu_seqlens,
     dt_softplus, directions, quasi, backend) = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, dt_rev, A_rev, B_rev, C_rev, cu_seqlens)
    ctx.flags = (dt_softplus, directions, quasi, backend)


def _backward(ctx, dy):
    saved = ctx.saved_tensors
    grads = torch.ops.mmhnet.bi_scan_bwd(dy, *saved, *ctx.flags)
    tensors = saved[:12]
    return tuple(None if t is None else g for t, g in zip(tensors, grads)) + (None,) * 5


torch.library.register_autograd("mmhnet::bi_scan", _backward, setup_context=_setup_context)
