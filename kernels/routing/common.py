"""Launch helpers shared by the routing kernels."""

import torch
import triton

from mmhnet._alloc import empty

__all__ = ["dim_block", "sequence_start_flags", "empty"]


def dim_block(dim, cap=128):
    """Power-of-two tile width covering ``dim`` up to ``cap`` (then the kernel loops)."""
    return max(16, min(cap, triton.next_power_of_2(max(dim, 1))))


def sequence_start_flags(cu_seqlens, total):
    """int32 (total,): 1 at the first token of every non-empty sequence, else 0. On device,
    without a host sync (an empty sequence shares its offset with the next one and adds 0)."""
    flags = torch.zeros(total, dtype=torch.int32, device=cu_seqlens.device)
    if total == 0:
        return flags
    first = cu_seqlens[:-1].long()
    nonempty = (cu_seqlens[1:] > cu_seqlens[:-1]).to(torch.int32)
    return flags.index_add_(0, first.clamp(max=total - 1), nonempty)
