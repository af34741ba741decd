"""RMS norms: the plain one of the pre-norm blocks, and the gated one of Mamba-2 / Hydra.

``RMSNormGated`` follows mamba_ssm's gated RMSNorm (weight named ``weight``, so state dicts
match). With gate z and ``norm_before_gate=False`` (Mamba-2):

    n = rmsnorm_g(y * silu(z)) * weight

and with ``norm_before_gate=True`` (Hydra): ``n = rmsnorm_g(y) * weight * silu(z)``, where
rmsnorm_g normalises each group of ``group_size`` consecutive channels on its own.

``gated_rms_norm_linear`` applies the gated norm and then a linear map, and keeps only
y, z and the per-group inverse RMS for backward: the normalised activations, as wide as y,
are recomputed there instead of stored (the memory-efficient path of Mamba-2's fused kernel).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.reference import compute_dtype

__all__ = ["RMSNorm", "RMSNormGated", "gated_rms_norm_linear"]


class RMSNorm(nn.Module):
    """x (..., d) -> x / rms(x) * weight, same shape and dtype."""

    def __init__(self, d, eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def _silu_grad(z):
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _grouped(t, group_size):
    return t.reshape(*t.shape[:-1], t.shape[-1] // group_size, group_size)


def _normalise(y, z, weight, eps, group_size, norm_before_gate):
    """The gated norm in the compute dtype. Returns (n, rstd), rstd (..., ngroups, 1)."""
    cd = compute_dtype(y)
    h = y.to(cd)
    gate = None if z is None else F.silu(z.to(cd))
    if gate is not None and not norm_before_gate:
        h = h * gate
    hg = _grouped(h, group_size)
    rstd = torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + eps)
    n = (hg * rstd).reshape(h.shape) * weight.to(cd)
    if gate is not None and norm_before_gate:
        n = n * gate
    return n, rstd


class RMSNormGated(nn.Module):
    """Gated RMSNorm: y (..., d), z None | (..., d) -> (..., d) in y's dtype.

    group_size: channels normalised together (None: all d). norm_before_gate: see the module
    docstring.
    """

    def __init__(self, d, eps=1e-5, group_size=None, norm_before_gate=False, device=None,
                 dtype=None):
        super().__init__()
        group_size = d if group_size is None else group_size
        if group_size <= 0 or d % group_size != 0:
            raise ValueError(f"group_size ({group_size}) must divide d ({d})")
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, y, z=None):
        n, _ = _normalise(y, z, self.weight, self.eps, self.group_size, self.norm_before_gate)
        return n.to(y.dtype)


class _GatedRMSNormLinear(torch.autograd.Function):
    """out = F.linear(gated_rmsnorm(y, z), weight, bias); backward recomputes the norm."""

    @staticmethod
    def forward(ctx, y, z, norm_weight, eps, group_size, norm_before_gate, weight, bias):
        n, rstd = _normalise(y, z, norm_weight, eps, group_size, norm_before_gate)
        out = F.linear(n.to(weight.dtype), weight, bias)
        ctx.save_for_backward(y, z, norm_weight, rstd, weight)
        ctx.cfg = (group_size, norm_before_gate, bias is not None)
        return out

    @staticmethod
    def backward(ctx, dout):
        # temporaries as wide as y are released (or reused in place) as soon as they are spent
        y, z, norm_weight, rstd, weight = ctx.saved_tensors
        group_size, norm_before_gate, has_bias = ctx.cfg
        cd = compute_dtype(y)
        nw = norm_weight.to(cd)
        gate = None if z is None else F.silu(z.to(cd))
        h = y.to(cd) * gate if gate is not None and not norm_before_gate else y.to(cd)
        xhat = (_grouped(h, group_size) * rstd).reshape(h.shape)
        del h
        # n = xhat * nw * post, post = gate when the norm comes before the gate
        post = gate if gate is not None and norm_before_gate else None
        n = xhat * nw if post is None else (xhat * nw).mul_(post)
        dout2 = dout.reshape(-1, dout.shape[-1])
        dweight = (dout2.t().to(cd) @ n.reshape(-1, n.shape[-1])).to(weight.dtype)
        del n
        dbias = dout2.sum(0) if has_bias else None

        dn = (dout @ weight).to(cd)
        dn_post = dn if post is None else dn * post
        dnorm_weight = (dn_post * xhat).reshape(-1, nw.shape[0]).sum(0).to(norm_weight.dtype)
        dz = None
        if post is not None:
            dxhat = dn_post.mul_(nw)
            dz = dn.mul_(xhat).mul_(nw).mul_(_silu_grad(z.to(cd)))
        else:
            dxhat = dn.mul_(nw)
        del dn, dn_post
        # through x / rms(x), per group
        dxg, xg = _grouped(dxhat, group_size), _grouped(xhat, group_size)
        dh = dxg.sub_(xg * (dxg * xg).mean(-1, keepdim=True)).mul_(rstd).reshape(y.shape)
        del xhat, xg, dxhat, dxg
        if gate is not None and not norm_before_gate:
            dz = (dh * y.to(cd)).mul_(_silu_grad(z.to(cd)))
            dh = dh.mul_(gate)
        return (dh.to(y.dtype), None if dz is None else dz.to(z.dtype), dnorm_weight,
                None, None, None, dweight, dbias)


def gated_rms_norm_linear(y, z, norm, weight, bias=None):
    """F.linear(norm(y, z), weight, bias) for an ``RMSNormGated`` ``norm``, keeping only y, z
    and the inverse RMS for backward. y, z (..., d); weight (d_out, d) -> (..., d_out)."""
    return _GatedRMSNormLinear.apply(y, z, norm.weight, norm.eps, norm.group_size,
                                     norm.norm_before_gate, weight, bias)
