"""mean(mask) and mean(p) in one pass (the statistics of the ratio loss); fixed-order partial
sums, so the result is deterministic."""

import torch
import triton
import triton.language as tl

from .common import empty

__all__ = ["mask_p_means"]

BLOCK = 1024


@triton.jit
def _partial_sums_kernel(mask_ptr, p_ptr, part_ptr, T, BLOCK: tl.constexpr):
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = t < T
    m = (tl.load(mask_ptr + t, mask=ok, other=0) != 0).to(tl.float32)
    p = tl.load(p_ptr + t, mask=ok, other=0.0).to(tl.float32)
    tl.store(part_ptr + 2 * tl.program_id(0), tl.sum(m, 0))
    tl.store(part_ptr + 2 * tl.program_id(0) + 1, tl.sum(p, 0))


def mask_p_means(mask, p):
    """mask (T,) bool, p (T,) float, T > 0 -> fp32 (2,): [mean(mask), mean(p)]."""
    total = p.shape[0]
    n_blocks = triton.cdiv(total, BLOCK)
    part = empty((n_blocks, 2), torch.float32, p.device)
    _partial_sums_kernel[(n_blocks,)](mask, p, part, total, BLOCK=BLOCK)
    return part.sum(0) / total
