"""Triton kernels of the dynamic chunking and routing ops (DESIGN.md, "Op 2"): plain
@triton.jit kernels and thin launchers, no autograd (that lives in mmhnet/ops/routing.py)."""

from .boundaries import boundaries_bwd, boundaries_fwd
from .compaction import chunk_index, compact_rows
from .ema import ema_bwd, ema_fwd
from .means import mask_p_means
from .rows import confidence_grad, gather_rows
from .segment_sum import segment_sum

__all__ = ["boundaries_fwd", "boundaries_bwd", "chunk_index", "compact_rows", "gather_rows",
           "confidence_grad", "segment_sum", "ema_fwd", "ema_bwd", "mask_p_means"]
