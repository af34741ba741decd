"""Rotary position embedding (RoPE) at real-valued positions, for the attention baseline.

For a head vector split in halves (x1, x2) and frequencies f_k = base^(-2k / headdim):

    rope(x, p) = [x1 cos(p f) - x2 sin(p f),  x1 sin(p f) + x2 cos(p f)]

Positions are in audio-frame units; video frame j sits at j * audio_rate / visual_fps, so audio
and video tokens of the same instant share a position (as MMAudio aligns its rotations).
"""

import torch

__all__ = ["rotary_angles", "apply_rotary"]


def rotary_angles(positions, headdim, base):
    """positions (N,) float -> (cos, sin), each (N, headdim // 2) float32."""
    half = headdim // 2
    freqs = base ** (-torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None] * freqs[None]
    return torch.cos(angles), torch.sin(angles)


def apply_rotary(x, cos, sin):
    """x (B, H, N, headdim), cos/sin (N, headdim // 2) -> rotated x, same shape and dtype."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)
