"""Public selective-scan ops: ``selective_scan`` and ``bi_selective_scan`` (DESIGN.md, Op 1).

Both lower to one custom op, ``mmhnet::bi_scan``, whose backward is ``mmhnet::bi_scan_bwd``;
both are registered with torch.library (custom_op + register_fake + register_autograd), so they
work under torch.compile(fullgraph=True). Kernel backends implement two functions,
``forward(args) -> y`` and ``backward(dy, args) -> ScanGrads`` (``_scan_triton.py``,
``_scan_native.py``). The "reference" backend is plain torch (``_scan_reference.py``): autograd
differentiates it directly, without the custom op.
"""

import importlib
from typing import Optional, Tuple

import torch

from . import _scan_reference
from ._backend import resolve_backend
from ._checks import (check_choice, check_cu_seqlens_meta, check_cu_seqlens_values, check_flag,
                      check_same_device, check_tensor, check_token_count, offsets_int32)
from ._scan_args import BOTH, FORWARD, MODES, REVERSE, ScanArgs, ScanGrads

__all__ = ["selective_scan", "bi_selective_scan", "ScanArgs", "ScanGrads"]

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

def selective_scan(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                   reverse=False, cu_seqlens=None, backend=None):
    """One-direction selective scan (Mamba-2 SSD recurrence).

    x (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads); A (nheads,), negative;
    B, C (batch, seqlen, ngroups, dstate); D None | (nheads,) | (nheads, headdim);
    z None | like x; dt_bias None | (nheads,); cu_seqlens None | int32 (nseq + 1,) with batch 1.

    h_t = exp(dt'_t A) h_{t-1} + dt'_t B_t (x) x_t (or right to left when ``reverse``),
    y_t = C_t . h_t + D x_t, then y * silu(z). Returns a tensor like x.
    """
    _check_scan_args(x, dt, A, B, C, D, z, dt_bias, cu_seqlens)
    be = resolve_backend(backend, x.device, "selective_scan", NATIVE_SYMBOL)
    return _run(be, ScanArgs(x, dt, A, B, C, D, z, dt_bias, None, None, None, None,
                             offsets_int32(cu_seqlens, x.shape[1]),
                             check_flag("dt_softplus", dt_softplus),
                             REVERSE if check_flag("reverse", reverse) else FORWARD, False))


def bi_selective_scan(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                      dt_rev=None, A_rev=None, B_rev=None, C_rev=None, mode="sum",
                      cu_seqlens=None, backend=None):
    """Fused bidirectional selective scan: both directions from one pass over the inputs.

    Shapes as ``selective_scan``; dt_rev, A_rev, B_rev, C_rev (shaped like dt, A, B, C) drive
    the reverse direction where given, else the forward ones do.
    mode="sum":            y_t = yf_t + yr_t + D x_t
    mode="quasiseparable": y_t = yf_{t-1} + yr_{t+1} + D x_t   (Hydra; zero across boundaries)
    then y * silu(z) if z is given. Returns a tensor like x.
    """
    check_choice("mode", mode, MODES)
    _check_scan_args(x, dt, A, B, C, D, z, dt_bias, cu_seqlens, rev=(dt_rev, A_rev, B_rev, C_rev))
    be = resolve_backend(backend, x.device, "bi_selective_scan", NATIVE_SYMBOL)
    return _run(be, ScanArgs(x, dt, A, B, C, D, z, dt_bias, dt_rev, A_rev, B_rev, C_rev,
                             offsets_int32(cu_seqlens, x.shape[1]),
                             check_flag("dt_softplus", dt_softplus), BOTH,
                             mode == "quasiseparable"))


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
