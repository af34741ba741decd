"""The "triton" backend of the scans: maps ScanArgs onto mmhnet.kernels.scan."""

import torch

from mmhnet.kernels.scan import CHUNK_SIZE as KERNEL_CHUNK_SIZE
from mmhnet.kernels.scan import Direction, scan_bwd, scan_fwd

from ._backend import BackendUnavailableError
from ._scan_args import BOTH, FORWARD, ScanGrads

# Chunk length of the kernels (chosen in launch.py); tests lower it to cover many chunks with
# short sequences.
CHUNK_SIZE = KERNEL_CHUNK_SIZE


def _check_dtypes(a):
    for name in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "dt_rev", "A_rev", "B_rev", "C_rev"):
        t = getattr(a, name)
        if t is not None and t.dtype == torch.float64:
            raise BackendUnavailableError(
                f"backend 'triton' computes in float32 and takes float32, float16 or bfloat16; "
                f"{name} is float64 (use backend='reference' or 'cpu' for float64)")


def _dense(t):
    """The kernels index the per-head vectors (A, D, dt_bias) without strides."""
    return None if t is None else t.contiguous()


def _directions(a):
    A = _dense(a.A)
    main = Direction(a.dt, A, a.B, a.C)
    if a.directions == FORWARD:
        return main, None
    if a.directions != BOTH:
        return None, main
    # the same tensor object where the reverse direction shares a parameter
    rev = Direction(a.dt if a.dt_rev is None else a.dt_rev,
                    A if a.A_rev is None else _dense(a.A_rev),
                    a.B if a.B_rev is None else a.B_rev, a.C if a.C_rev is None else a.C_rev)
    return main, rev


def _seq_idx(cu_seqlens, total):
    """Sequence index of every packed token, on device and without a host sync."""
    if cu_seqlens is None:
        return None
    pos = torch.arange(total, device=cu_seqlens.device, dtype=torch.int32)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), pos, right=True).to(torch.int32)


def forward(a):
    _check_dtypes(a)
    fwd, rev = _directions(a)
    return scan_fwd(a.x, fwd, rev, _dense(a.D), a.z, _dense(a.dt_bias),
                    _seq_idx(a.cu_seqlens, a.x.shape[1]), a.dt_softplus, a.quasi, CHUNK_SIZE)


def _reverse_grad(grad, given):
    """The gradient of a reverse-direction input. None where the caller gave none; zero where
    it gave the forward tensor itself (dt_rev=dt): the kernels then share it and return both
    directions' gradient in the forward slot, and autograd adds the two slots."""
    if given is None:
        return None
    return torch.zeros_like(given) if grad is None else grad


def backward(dy, a):
    _check_dtypes(a)
    fwd, rev = _directions(a)
    g = scan_bwd(dy, a.x, fwd, rev, _dense(a.D), a.z, _dense(a.dt_bias),
                 _seq_idx(a.cu_seqlens, a.x.shape[1]), a.dt_softplus, a.quasi, CHUNK_SIZE)
    main = g.fwd if g.fwd is not None else g.rev
    ddt_rev = dA_rev = dB_rev = dC_rev = None
    dA = main.dA
    if a.directions == BOTH:
        r = g.rev
        ddt_rev = _reverse_grad(r.ddt, a.dt_rev)
        dB_rev = _reverse_grad(r.dB, a.B_rev)
        dC_rev = _reverse_grad(r.dC, a.C_rev)
        if a.A_rev is None:
            dA = dA + r.dA
        else:
            dA_rev = r.dA
    return ScanGrads(g.dx, main.ddt, dA, main.dB, main.dC, g.dD, g.dz, g.ddt_bias,
                     ddt_rev, dA_rev, dB_rev, dC_rev)
