"""Turning the three input layouts of the layers into packed tokens and back.

Layouts: a batch (batch, seqlen, d); packed sequences (1, total, d) with ``cu_seqlens``; a
padded batch (batch, seqlen, d) with ``mask`` (True for real tokens). The routing ops work on
packed tokens only (DESIGN.md, Op 2), so DynamicChunking and HNet pack first.
"""

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F


class Packing(NamedTuple):
    """How a (batch, seqlen, d) input was packed: ``cu_seqlens`` of the packed tokens (None for
    one unpadded sequence), and the batch shape and mask needed to restore it."""
    cu_seqlens: Optional[torch.Tensor]
    batch: int
    seqlen: int
    mask: Optional[torch.Tensor]

    def unpack(self, y):
        """(1, total, d') -> the input's layout (padding rows zero)."""
        if self.mask is not None:
            out = y.new_zeros(self.batch, self.seqlen, y.shape[-1])
            out[self.mask] = y[0]
            return out
        return y.reshape(self.batch, self.seqlen, y.shape[-1])


def pack(x, cu_seqlens=None, mask=None):
    """x (batch, seqlen, d) -> (packed x (1, total, d), Packing)."""
    b, L, d = x.shape
    if cu_seqlens is not None:
        return x, Packing(cu_seqlens, b, L, None)
    if mask is not None:
        lengths = mask.sum(1, dtype=torch.int32)
        cu = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        return x[mask][None], Packing(cu, b, L, mask)
    if b == 1:
        return x, Packing(None, 1, L, None)
    cu = torch.arange(b + 1, device=x.device, dtype=torch.int32) * L
    return x.reshape(1, b * L, d), Packing(cu, b, L, None)
