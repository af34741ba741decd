"""Row gathers: out[i] = src[index[i]] (optionally 0 where keep[i] is False), and the gradient of
chunk_scatter's confidence straight-through estimator.

Indices outside [0, rows) read nothing (the row is 0): the kernels never read out of bounds.
"""

import torch
import triton
import triton.language as tl

from .common import dim_block, empty

__all__ = ["gather_rows", "confidence_grad"]

BLOCK_T = 32


@triton.jit
def _gather_rows_kernel(src_ptr, index_ptr, keep_ptr, out_ptr, N, R, D,
                        HAS_KEEP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    valid = i < N
    r = tl.load(index_ptr + i, mask=valid, other=0).to(tl.int64)
    ok = valid & (r >= 0) & (r < R)
    if HAS_KEEP:
        ok = ok & (tl.load(keep_ptr + i, mask=valid, other=0) != 0)
    dm = d[None, :] < D
    rows = tl.load(src_ptr + r[:, None] * D + d[None, :], mask=ok[:, None] & dm, other=0.0)
    tl.store(out_ptr + i[:, None].to(tl.int64) * D + d[None, :], rows, mask=valid[:, None] & dm)


@triton.jit
def _confidence_grad_kernel(dz_ptr, zc_ptr, chunk_id_ptr, mask_ptr, dp_ptr, T, C, D,
                            BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    valid = t < T
    c = tl.load(chunk_id_ptr + t, mask=valid, other=0).to(tl.int64)
    ok = valid & (c >= 0) & (c < C)
    acc = tl.zeros((BLOCK_T,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d[None, :] < D
        g = tl.load(dz_ptr + t[:, None].to(tl.int64) * D + d[None, :], mask=valid[:, None] & dm,
                    other=0.0)
        z = tl.load(zc_ptr + c[:, None] * D + d[None, :], mask=ok[:, None] & dm, other=0.0)
        acc += tl.sum(g.to(tl.float32) * z.to(tl.float32), 1)
    m = tl.load(mask_ptr + t, mask=valid, other=0) != 0
    # c_t = p_t where a boundary, else 1 - p_t
    tl.store(dp_ptr + t, tl.where(m, acc, -acc), mask=valid)


def gather_rows(src, index, keep=None):
    """src (R, D) contiguous, index (N,) int32/int64 -> (N, D); rows where keep is False are 0."""
    rows, dim = src.shape
    n = index.shape[0]
    out = empty((n, dim), src.dtype, src.device)
    if n == 0 or dim == 0:
        return out
    bd = dim_block(dim)
    grid = (triton.cdiv(n, BLOCK_T), triton.cdiv(dim, bd))
    _gather_rows_kernel[grid](src, index, index if keep is None else keep, out, n, rows, dim,
                              HAS_KEEP=keep is not None, BLOCK_T=BLOCK_T, BLOCK_D=bd)
    return out


def confidence_grad(dz, z_chunks, chunk_id, mask):
    """dp_t = +-sum_d dz[t, d] z_chunks[chunk_id[t], d] (+ where mask, - elsewhere), fp32 (T,)."""
    total, dim = dz.shape
    dp = empty((total,), torch.float32, dz.device)
    if total == 0:
        return dp
    grid = (triton.cdiv(total, BLOCK_T),)
    _confidence_grad_kernel[grid](dz, z_chunks, chunk_id, mask, dp, total, z_chunks.shape[0], dim,
                                  BLOCK_T=BLOCK_T, BLOCK_D=dim_block(dim))
    return dp
