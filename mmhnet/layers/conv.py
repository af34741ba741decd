"""Depthwise conv1d followed by SiLU, on channel-last tokens, centred by default.

Output token t reads the window t - left ... t + right of its own sequence, right =
d_conv - 1 - left. The default (non-causal, centred) split is

    left = d_conv // 2,   right = (d_conv - 1) // 2

so an odd width is symmetric (Hydra's ``padding=d_conv // 2``) and an even width (Mamba-2's
default 4) sees one more token of the past than of the future: t-2, t-1, t, t+1 for width 4.
left = d_conv - 1 gives a causal conv. Weight tap j multiplies token t - left + j; with
``reverse=True`` the taps run the other way, tap j multiplying token t + left - j (so left =
d_conv - 1, reverse=True is a causal conv applied right to left, Vim v2's backward conv).
Tokens outside the sequence read as zero: at sequence ends, across the boundaries of packed
sequences (``cu_seqlens``), and at the padding of a padded batch (``mask``), whose rows are
also zeroed at the output.

Two implementations, one result:

* "torch": a sum of shifted multiply-adds with its own backward, which keeps only the input
  and recomputes the pre-activation (so nothing as wide as the output is stored);
* "causal_conv1d": the causal-conv1d package's fused CUDA kernel, applied to the input shifted
  ``right`` tokens ahead (a causal window ending at t + right is the centred window of t).
  Packed sequences are laid out with d_conv - 1 zero rows between them, so no window crosses a
  boundary. The package is imported lazily (its import fails without CUDA).

``impl="auto"`` takes causal_conv1d for CUDA tensors when the package imports and supports the
width (2 to 4), else "torch".
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.reference import compute_dtype

__all__ = ["DepthwiseConv1d", "load_causal_conv1d", "CONV_IMPLS"]

CONV_IMPLS = ("auto", "torch", "causal_conv1d")
_CAUSAL_CONV1D_WIDTHS = (2, 3, 4)


@functools.lru_cache(maxsize=None)
def load_causal_conv1d():
    """``causal_conv1d.causal_conv1d_fn``, or None where the package is missing or cannot load."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # ImportError, or a CUDA/ABI error raised while loading its extension
        return None
    return causal_conv1d_fn


def _sequence_bounds(cu_seqlens, total):
    """Per token: (index of its sequence, start, end) of the packed sequence it belongs to.
    Offsets that do not end at ``total`` are left for the scan op to reject; here they only
    must not index out of range."""
    cu = cu_seqlens.to(torch.long)
    pos = torch.arange(total, device=cu.device)
    seq = torch.searchsorted(cu[1:], pos, right=True).clamp(max=cu.numel() - 2)
    return seq, cu[seq], cu[seq + 1]


def _tap_masks(cu_seqlens, mask, total, width, left, dtype):
    """(batch', width, total) multipliers: 1 where tap j of token t reads a token of t's own
    sequence, 0 elsewhere; None when every in-range tap is valid (plain batch)."""
    if cu_seqlens is not None:
        offsets = torch.arange(width, device=cu_seqlens.device) - left
        _, start, end = _sequence_bounds(cu_seqlens, total)
        src = torch.arange(total, device=start.device)[None, :] + offsets[:, None]
        valid = (src >= start) & (src < end)
        return valid.to(dtype)[None]
    if mask is not None:
        padded = F.pad(mask, (left, width - 1 - left))
        return torch.stack([padded[:, j:j + total] for j in range(width)], dim=1).to(dtype)
    return None


def _conv_taps(x, weight, bias, taps, left):
    """Pre-activation sum_j w_j * x_{t - left + j} (+ bias), in float32 (float64 for float64)."""
    b, L, C = x.shape
    width = weight.shape[1]
    cd = compute_dtype(x)
    xp = F.pad(x, (0, 0, left, width - 1 - left)).to(cd)
    w = weight.to(cd)
    out = x.new_zeros(b, L, C, dtype=cd) if bias is None else bias.to(cd).expand(b, L, C).clone()
    for j in range(width):
        tap = xp[:, j:j + L]
        if taps is not None:
            tap = tap * taps[:, j, :, None]
        out.addcmul_(tap, w[:, j])
    return out


class _DepthwiseConvSiLU(torch.autograd.Function):
    """silu(depthwise conv(x)) * row_mask; backward recomputes the pre-activation."""

    @staticmethod
    def forward(ctx, x, weight, bias, taps, rows, left):
        pre = _conv_taps(x, weight, bias, taps, left)
        out = F.silu(pre)
        if rows is not None:
            out = out * rows[..., None]
        ctx.save_for_backward(x, weight, bias, taps, rows)
        ctx.left = left
        # not out.to(x.dtype) when that is a no-op: torch 2.11's torch.compile returns zero
        # gradients for an autograd.Function whose output is such an alias (2.13 does not)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, taps, rows = ctx.saved_tensors
        left = ctx.left
        b, L, C = x.shape
        width = weight.shape[1]
        pre = _conv_taps(x, weight, bias, taps, left)
        s = torch.sigmoid(pre)
        # silu'(pre) = s (1 + pre (1 - s)), built in place in pre
        dpre = pre.mul_(1 - s).add_(1).mul_(s).mul_(dout)
        del s
        if rows is not None:
            dpre = dpre * rows[..., None]
        xp = F.pad(x, (0, 0, left, width - 1 - left)).to(pre.dtype)
        dxp = torch.zeros_like(xp)
        dweight = torch.empty(C, width, dtype=pre.dtype, device=x.device)
        for j in range(width):
            d_tap = dpre if taps is None else dpre * taps[:, j, :, None]
            dweight[:, j] = (d_tap * xp[:, j:j + L]).sum((0, 1))
            dxp[:, j:j + L].addcmul_(d_tap, weight[:, j].to(pre.dtype))
        dx = dxp[:, left:left + L].to(x.dtype)
        dbias = None if bias is None else dpre.sum((0, 1)).to(bias.dtype)
        return dx, dweight.to(weight.dtype), dbias, None, None, None


class DepthwiseConv1d(nn.Conv1d):
    """Depthwise conv + SiLU over channel-last tokens; the window has ``left`` taps before the
    token (default d_conv // 2: centred) and the rest after it, or, with ``reverse``, ``left``
    taps after it and the rest before it.

    Parameters as nn.Conv1d(channels, channels, d_conv, groups=channels): ``weight``
    (channels, 1, d_conv) and ``bias`` (channels,), so Mamba-2 / Hydra state dicts load.

    forward(x (batch, seqlen, channels), cu_seqlens=None, mask=None) -> same shape.
    """

    def __init__(self, channels, d_conv, bias=True, left=None, reverse=False, impl="auto",
                 device=None, dtype=None):
        if impl not in CONV_IMPLS:
            raise ValueError(f"conv impl must be one of {', '.join(map(repr, CONV_IMPLS))}; "
                             f"got {impl!r}")
        left = d_conv // 2 if left is None else left
        if not 0 <= left < d_conv:
            raise ValueError(f"left ({left}) must be in 0 .. d_conv - 1 ({d_conv - 1})")
        super().__init__(channels, channels, d_conv, groups=channels, bias=bias, padding=0,
                         device=device, dtype=dtype)
        self.impl, self.reverse = impl, reverse
        # the window actually read, in token order: `left` before t, `right` after it
        self.left = d_conv - 1 - left if reverse else left
        self.right = d_conv - 1 - self.left

    def _use_causal_conv1d(self, x):
        if self.impl == "torch" or (self.impl == "auto" and not x.is_cuda):
            return False
        fn = load_causal_conv1d()
        if self.impl == "causal_conv1d":
            if fn is None:
                raise RuntimeError("conv impl 'causal_conv1d' needs the causal-conv1d package "
                                   "(pip install causal-conv1d, on a CUDA machine)")
            return True
        return (fn is not None and x.is_cuda and self.kernel_size[0] in _CAUSAL_CONV1D_WIDTHS
                and x.dtype in (torch.float32, torch.float16, torch.bfloat16))

    def forward(self, x, cu_seqlens=None, mask=None):
        weight = self.weight[:, 0, :].flip(-1) if self.reverse else self.weight[:, 0, :]
        if self._use_causal_conv1d(x):
            return self._forward_causal_conv1d(x, weight, cu_seqlens, mask)
        taps = _tap_masks(cu_seqlens, mask, x.shape[1], self.kernel_size[0], self.left, x.dtype)
        rows = None if mask is None else mask.to(x.dtype)
        return _DepthwiseConvSiLU.apply(x, weight, self.bias, taps, rows, self.left)

    def _forward_causal_conv1d(self, x, weight, cu_seqlens, mask):
        fn = load_causal_conv1d()
        width, right = self.kernel_size[0], self.right
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        if cu_seqlens is None:
            buf = F.pad(x, (0, 0, 0, right))
            out = fn(buf.transpose(1, 2), weight, self.bias, activation="silu").transpose(1, 2)
            out = out[:, right:right + x.shape[1]]
        else:
            # token t of sequence s sits at t + s * (width - 1): zero gaps between sequences
            seq, _, _ = _sequence_bounds(cu_seqlens, x.shape[1])
            pos = torch.arange(x.shape[1], device=x.device) + seq * (width - 1)
            length = x.shape[1] + (cu_seqlens.numel() - 2) * (width - 1) + right
            buf = x.new_zeros(1, length, x.shape[2]).index_copy(1, pos, x)
            out = fn(buf.transpose(1, 2), weight, self.bias, activation="silu").transpose(1, 2)
            out = out.index_select(1, pos + right)
        if mask is not None:
            out = out * mask[..., None].to(out.dtype)
        return out
