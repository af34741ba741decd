"""Compaction: a prefix sum of the boundary mask gives chunk_id, chunk_cu_seqlens and the
gathered rows.

    chunk_id[t]      = (number of boundaries at or before t) - 1      (global over the tokens)
    chunk_cu[i]      = number of boundaries before cu_seqlens[i]
    x_chunks[chunk_id[t]] = x[t] where mask[t]

chunk_index runs entirely on device (per-block counts, a scan of the counts, per-block local
prefix sums); the caller reads the chunk count once on the host to size x_chunks.
"""

import torch
import triton
import triton.language as tl

from .common import dim_block, empty

__all__ = ["chunk_index", "compact_rows"]

BLOCK = 1024
BLOCK_T = 32


@triton.jit
def _block_counts_kernel(mask_ptr, counts_ptr, T, BLOCK: tl.constexpr):
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = tl.load(mask_ptr + t, mask=t < T, other=0).to(tl.int32)
    tl.store(counts_ptr + tl.program_id(0), tl.sum(m, 0))


@triton.jit
def _chunk_id_kernel(mask_ptr, block_offsets_ptr, chunk_id_ptr, T, BLOCK: tl.constexpr):
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = tl.load(mask_ptr + t, mask=t < T, other=0).to(tl.int32)
    before = tl.load(block_offsets_ptr + tl.program_id(0))
    tl.store(chunk_id_ptr + t, before + tl.cumsum(m, 0) - 1, mask=t < T)


@triton.jit
def _chunk_offsets_kernel(cu_ptr, chunk_id_ptr, chunk_cu_ptr, n_offsets, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n_offsets
    cu = tl.load(cu_ptr + i, mask=ok, other=0)
    # boundaries before offset cu = chunk_id[cu - 1] + 1 (0 at offset 0)
    last = tl.load(chunk_id_ptr + (cu - 1), mask=ok & (cu > 0), other=-1)
    tl.store(chunk_cu_ptr + i, last + 1, mask=ok)


@triton.jit
def _compact_rows_kernel(x_ptr, mask_ptr, chunk_id_ptr, out_ptr, T, C, D,
                         BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = tl.load(mask_ptr + t, mask=t < T, other=0) != 0
    c = tl.load(chunk_id_ptr + t, mask=t < T, other=-1)
    keep = m & (c >= 0) & (c < C)
    dm = d[None, :] < D
    rows = tl.load(x_ptr + t[:, None].to(tl.int64) * D + d[None, :], mask=keep[:, None] & dm)
    tl.store(out_ptr + c[:, None].to(tl.int64) * D + d[None, :], rows, mask=keep[:, None] & dm)


def chunk_index(mask, cu_seqlens):
    """mask (T,) bool; cu_seqlens int32 (nseq+1,) with values in [0, T].
    Returns chunk_id (T,) int32 and chunk_cu_seqlens (nseq+1,) int32, without a host sync."""
    total = mask.shape[0]
    chunk_id = empty((total,), torch.int32, mask.device)
    chunk_cu = empty(cu_seqlens.shape, torch.int32, mask.device)
    nblocks = triton.cdiv(total, BLOCK)
    if nblocks:
        counts = empty((nblocks,), torch.int32, mask.device)
        _block_counts_kernel[(nblocks,)](mask, counts, total, BLOCK=BLOCK)
        block_offsets = (torch.cumsum(counts, 0, dtype=torch.int32) - counts).contiguous()
        _chunk_id_kernel[(nblocks,)](mask, block_offsets, chunk_id, total, BLOCK=BLOCK)
    n = cu_seqlens.shape[0]
    _chunk_offsets_kernel[(triton.cdiv(n, 256),)](cu_seqlens, chunk_id, chunk_cu, n, BLOCK=256)
    return chunk_id, chunk_cu


def compact_rows(x, mask, chunk_id, num_chunks):
    """x (T, D) contiguous -> (num_chunks, D): the rows where mask is True, at chunk_id."""
    total, dim = x.shape
    out = empty((num_chunks, dim), x.dtype, x.device)
    if total == 0 or dim == 0:
        return out
    bd = dim_block(dim)
    grid = (triton.cdiv(total, BLOCK_T), triton.cdiv(dim, bd))
    _compact_rows_kernel[grid](x, mask, chunk_id, out, total, num_chunks, dim,
                               BLOCK_T=BLOCK_T, BLOCK_D=bd)
    return out
