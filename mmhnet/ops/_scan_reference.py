"""The "reference" backend of the scans: the chunked pure-torch SSD, with torch autograd for
the backward (recomputing the forward)."""

import torch

from . import reference
from .scan import BOTH, REVERSE, ScanGrads

_GRAD_FIELDS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "dt_rev", "A_rev", "B_rev", "C_rev")


def forward(a):
    common = dict(D=a.D, z=a.z, dt_bias=a.dt_bias, dt_softplus=a.dt_softplus,
                  cu_seqlens=a.cu_seqlens)
    if a.directions == BOTH:
        return reference.bi_selective_scan_chunked(
            a.x, a.dt, a.A, a.B, a.C, dt_rev=a.dt_rev, A_rev=a.A_rev, B_rev=a.B_rev,
            C_rev=a.C_rev, mode="quasiseparable" if a.quasi else "sum", **common)
    return reference.selective_scan_chunked(a.x, a.dt, a.A, a.B, a.C,
                                            reverse=a.directions == REVERSE, **common)


def backward(dy, a):
    with torch.enable_grad():
        leaves = {name: getattr(a, name).detach().requires_grad_(True)
                  for name in _GRAD_FIELDS if getattr(a, name) is not None}
        y = forward(a._replace(**leaves))
        grads = torch.autograd.grad(y, list(leaves.values()), dy, allow_unused=True)
    by_name = {name: (torch.zeros_like(t) if g is None else g)
               for (name, t), g in zip(leaves.items(), grads)}
    return ScanGrads(*[by_name.get(name) for name in _GRAD_FIELDS])
