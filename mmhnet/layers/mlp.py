"""SwiGLU feed-forward: x (..., d_model) -> fc2(silu(a) * b), [a, b] = fc1(x) -> (..., d_model)."""

import math

import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SwiGLU", "default_intermediate"]


def default_intermediate(d_model, multiple_of=64):
    """8/3 d_model rounded up to a multiple of 64: the parameter count of a 4 d_model GELU MLP."""
    return multiple_of * math.ceil(8 * d_model / 3 / multiple_of)


class SwiGLU(nn.Module):
    """SwiGLU MLP with hidden width ``d_intermediate`` (default ``default_intermediate``)."""

    def __init__(self, d_model, d_intermediate=None, bias=False, device=None, dtype=None):
        super().__init__()
        self.d_intermediate = d_intermediate or default_intermediate(d_model)
        self.fc1 = nn.Linear(d_model, 2 * self.d_intermediate, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(self.d_intermediate, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x):
        a, b = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(a) * b)
