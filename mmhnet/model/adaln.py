"""adaLN-conditioned BiMamba2 blocks and the velocity head.

A block (DiT-style adaLN-Zero around the layers' BiMamba2 and SwiGLU):

    shift1, scale1, gate1, shift2, scale2, gate2 = Linear(c)          c: (B, d) global condition
    x = x + gate1 * BiMamba2(LayerNorm(x) * (1 + scale1) + shift1)
    x = x + gate2 * SwiGLU(LayerNorm(x) * (1 + scale2) + shift2)

The modulation is zero-initialised, so every block starts as the identity. Tokens may be a
batch (B, L, d) or packed sequences (1, T, d) with cu_seqlens; packed tokens take their
sequence's modulation through ``token_sequence`` (T,), the sequence index of each token.
"""

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mmhnet.layers import BiMamba2, SwiGLU

__all__ = ["AdaLNBlock", "AdaLNStack", "VelocityHead", "per_token"]


def per_token(modulation, token_sequence):
    """modulation (B, k) -> (B, 1, k) for a batch layout, or (1, T, k) for packed tokens."""
    if token_sequence is None:
        return modulation[:, None]
    return modulation.index_select(0, token_sequence)[None]


class AdaLNBlock(nn.Module):
    """One adaLN-Zero block (module docstring): (B, L, d) or packed (1, T, d) -> same."""

    def __init__(self, d_model, mixer_options, d_intermediate=None):
        super().__init__()
        self.norm_mixer = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.mixer = BiMamba2(d_model, **mixer_options)
        self.norm_mlp = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.mlp = SwiGLU(d_model, d_intermediate)
        self.modulation = nn.Linear(d_model, 6 * d_model)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x, cond, token_sequence=None, cu_seqlens=None):
        """x (B, L, d) | (1, T, d); cond (B, d); token_sequence None | (T,) int64;
        cu_seqlens None | (nseq + 1,) int32 (packed)."""
        mod = per_token(self.modulation(cond), token_sequence).to(x.dtype)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        h = self.norm_mixer(x) * (1 + scale1) + shift1
        x = x + gate1 * self.mixer(h, cu_seqlens=cu_seqlens)
        h = self.norm_mlp(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class AdaLNStack(nn.Module):
    """``depth`` AdaLNBlocks. ``recompute``: gradient checkpointing of each block (activations
    recomputed in backward instead of stored; set it on the model with
    ``model.set_recompute(True)``)."""

    def __init__(self, depth, d_model, mixer_options, d_intermediate=None):
        super().__init__()
        self.blocks = nn.ModuleList(AdaLNBlock(d_model, mixer_options, d_intermediate)
                                    for _ in range(depth))
        self.recompute = False

    def __len__(self):
        return len(self.blocks)

    def forward(self, x, cond, token_sequence=None, cu_seqlens=None):
        for block in self.blocks:
            if self.recompute and torch.is_grad_enabled():
                x = checkpoint(block, x, cond, token_sequence, cu_seqlens, use_reentrant=False)
            else:
                x = block(x, cond, token_sequence, cu_seqlens)
        return x


class VelocityHead(nn.Module):
    """(B, A, d) -> (B, A, latent_dim): LayerNorm with adaLN shift/scale, then Linear.
    Zero-initialised output, as DiT's final layer."""

    def __init__(self, d_model, latent_dim):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, latent_dim)
        for layer in (self.modulation, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, cond):
        shift, scale = self.modulation(cond)[:, None].to(x.dtype).chunk(2, dim=-1)
        return self.out(self.norm(x) * (1 + scale) + shift)
