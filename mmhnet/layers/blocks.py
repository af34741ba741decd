"""Pre-norm residual blocks and the isotropic stack that H-Net layouts describe.

A layout string such as "m4M2" lists runs of blocks: ``m`` = BiMamba2 mixer block, ``M`` =
BiMamba2 mixer block followed by a SwiGLU MLP block; the digits count the blocks of the run.
H-Net's attention letters (t, T) are not offered: the stack stays attention-free, so nothing in
it depends on absolute positions.
"""

import re

import torch.nn as nn

from ._checks import check_tokens
from .bimamba2 import BiMamba2
from .mlp import SwiGLU
from .norms import RMSNorm

__all__ = ["Block", "Isotropic", "parse_layout"]

_RUN = re.compile(r"([mM])(\d+)")


def parse_layout(layout):
    """"m2M1" -> ["m", "m", "M"]. Raises ValueError on anything else."""
    if not isinstance(layout, str) or not re.fullmatch(r"(?:[mM]\d+)+", layout):
        raise ValueError(f"a layout string is runs of m<count> (BiMamba2) or M<count> "
                         f"(BiMamba2 + SwiGLU MLP), e.g. 'm4' or 'm2M2'; got {layout!r}")
    return [kind for kind, n in _RUN.findall(layout) for _ in range(int(n))]


class Block(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm_mlp(x)) when there is an MLP.

    x (batch, seqlen, d_model) or packed (1, total, d_model) -> same shape."""

    def __init__(self, d_model, mixer, mlp=None, eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.norm = RMSNorm(d_model, eps, device=device, dtype=dtype)
        self.mixer = mixer
        if mlp is not None:
            self.norm_mlp = RMSNorm(d_model, eps, device=device, dtype=dtype)
        self.mlp = mlp

    def forward(self, x, cu_seqlens=None, mask=None):
        x = x + self.mixer(self.norm(x), cu_seqlens=cu_seqlens, mask=mask)
        if self.mlp is not None:
            x = x + self.mlp(self.norm_mlp(x))
        return x


class Isotropic(nn.Module):
    """A stack of blocks at one width, then a final RMSNorm (as H-Net's isotropic networks).

    layout: e.g. "m4" or "m2M2" (module docstring). mixer_options: keyword arguments of every
    BiMamba2. d_intermediate: SwiGLU width of the M blocks (None: 8/3 d_model, rounded).
    forward(x (batch, seqlen, d_model) or packed (1, total, d_model), cu_seqlens=None,
    mask=None) -> same shape (padding rows zero).
    """

    def __init__(self, d_model, layout, mixer_options=None, d_intermediate=None, device=None,
                 dtype=None):
        super().__init__()
        self.d_model, self.layout = d_model, layout
        factory = {"device": device, "dtype": dtype}
        options = dict(mixer_options or {})
        blocks = []
        for i, kind in enumerate(parse_layout(layout)):
            mixer = BiMamba2(d_model, layer_idx=i, **options, **factory)
            mlp = SwiGLU(d_model, d_intermediate, **factory) if kind == "M" else None
            blocks.append(Block(d_model, mixer, mlp, **factory))
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(d_model, **factory)

    def forward(self, x, cu_seqlens=None, mask=None):
        check_tokens(x, self.d_model, cu_seqlens, mask)
        for block in self.blocks:
            x = block(x, cu_seqlens=cu_seqlens, mask=mask)
        x = self.norm(x)
        return x if mask is None else x * mask[..., None].to(x.dtype)
