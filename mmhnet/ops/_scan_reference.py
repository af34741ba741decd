"""The "reference" backend of the scans: the chunked pure-torch SSD, differentiated by torch
autograd (it does not go through the custom op)."""

from . import reference
from ._scan_args import BOTH, REVERSE


def forward(a):
    common = dict(D=a.D, z=a.z, dt_bias=a.dt_bias, dt_softplus=a.dt_softplus,
                  cu_seqlens=a.cu_seqlens)
    if a.directions == BOTH:
        return reference.bi_selective_scan_chunked(
            a.x, a.dt, a.A, a.B, a.C, dt_rev=a.dt_rev, A_rev=a.A_rev, B_rev=a.B_rev,
            C_rev=a.C_rev, mode="quasiseparable" if a.quasi else "sum", **common)
    return reference.selective_scan_chunked(a.x, a.dt, a.A, a.B, a.C,
                                            reverse=a.directions == REVERSE, **common)
