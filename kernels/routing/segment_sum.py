"""Deterministic segment sum: out[s] = sum of the rows j with seg_id[j] == s, seg_id
non-decreasing (the backward of chunk_scatter, and token_scatter after a stable sort).

No atomics: the result is the same bit for bit on every run.

Pass 1, one program per block of BLOCK_T rows (and BLOCK_D columns): the rows' segments are
ranked inside the block and summed with a one-hot matrix product. A segment that begins and ends
inside the block is written to out directly. A segment cut by the block's edge leaves a partial
sum instead: ``head[b]`` for the one continuing from the previous block (the whole block's sum
when the block lies inside one segment), ``tail[b]`` for the one continuing into the next.
Pass 2, one program per block whose last segment continues: tail[b] + head[b+1] + ... up to the
block where that segment ends, in block order.

NaN and inf stay in their segment: the one-hot product would spread them to every segment of the
block (0 * NaN), so it takes their rows as 0, and a block that holds any adds each segment's
non-finite values back with where-reductions (a slow path only such blocks take).
"""

import torch
import triton
import triton.language as tl

from .common import dim_block, empty

__all__ = ["segment_sum"]

BLOCK_T = 32


@triton.jit
def _seg(seg_ptr, j, N):
    """seg_id[j], or -1 outside [0, N)."""
    return tl.load(seg_ptr + j, mask=(j >= 0) & (j < N), other=-1)


@triton.jit
def _nonfinite_sums(x, finite, rank, k, n_seg):
    """(BLOCK_T, BLOCK_D): row k = the sum of the non-finite values of the rows of segment rank
    k (0 where there are none), by where-reductions, one segment at a time."""
    out = tl.zeros(x.shape, tl.float32)
    for r in range(0, n_seg):
        col = tl.sum(tl.where((rank == r)[:, None] & ~finite, x, 0.0), 0)
        out += tl.where(k[:, None] == r, col[None, :], 0.0)
    return out


@triton.jit
def _segment_sum_blocks_kernel(src_ptr, seg_ptr, order_ptr, out_ptr, head_ptr, tail_ptr, N, R, D,
                               HAS_ORDER: tl.constexpr, BLOCK_T: tl.constexpr,
                               BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    first = b * BLOCK_T
    last = tl.minimum(first + BLOCK_T, N) - 1
    j = first + tl.arange(0, BLOCK_T)
    valid = j < N
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    seg = _seg(seg_ptr, j, N)
    seg_before = _seg(seg_ptr, j - 1, N)
    if HAS_ORDER:
        row = tl.load(order_ptr + j, mask=valid, other=0).to(tl.int64)
    else:
        row = j.to(tl.int64)
    x = tl.load(src_ptr + row[:, None] * D + d[None, :], mask=valid[:, None] & dm[None, :],
                other=0.0).to(tl.float32)
    # rank of each row's segment inside the block: 0, 1, ... (a segment may skip ids)
    new = valid & ((j == first) | (seg != seg_before))
    rank = tl.cumsum(new.to(tl.int32), 0) - 1
    rank = tl.where(valid, rank, -1)
    k = tl.arange(0, BLOCK_T)
    onehot = (rank[None, :] == k[:, None]).to(tl.float32)  # (segment rank, row)
    finite = tl.abs(x) < float("inf")  # False for NaN too
    sums = tl.dot(onehot, tl.where(finite, x, 0.0), input_precision="ieee")
    seg_of = tl.max(tl.where(rank[None, :] == k[:, None], seg[None, :], -1), 1)
    n_seg = tl.max(rank, 0) + 1
    if tl.sum(tl.sum(tl.where(finite, 0, 1), 1), 0) > 0:
        sums += _nonfinite_sums(x, finite, rank, k, n_seg)
    open_start = _seg(seg_ptr, first - 1, N) == _seg(seg_ptr, first, N)
    open_end = _seg(seg_ptr, last + 1, N) == _seg(seg_ptr, last, N)
    # (``!= 0`` keeps the block-and-scalar combinations boolean under the interpreter)
    is_head = ((k == 0) & open_start) != 0
    is_tail = ((k == n_seg - 1) & open_end & ~is_head) != 0
    complete = (k < n_seg) & ~is_head & ~is_tail & (seg_of >= 0) & (seg_of < R)
    out_ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + seg_of[:, None].to(tl.int64) * D + d[None, :], sums.to(out_ty),
             mask=complete[:, None] & dm[None, :])
    tl.store(head_ptr + b * D + d[None, :] + k[:, None] * 0, sums, mask=is_head[:, None] & dm[None, :])
    tl.store(tail_ptr + b * D + d[None, :] + k[:, None] * 0, sums, mask=is_tail[:, None] & dm[None, :])


@triton.jit
def _segment_sum_carry_kernel(seg_ptr, out_ptr, head_ptr, tail_ptr, N, R, D, n_blocks,
                              BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    first = b * BLOCK_T
    last = tl.minimum(first + BLOCK_T, N) - 1
    s = _seg(seg_ptr, last, N)
    continues = _seg(seg_ptr, last + 1, N) == s
    # the block's last segment starts inside it (else an earlier block carries it)
    starts_here = (_seg(seg_ptr, first, N) != s) | (_seg(seg_ptr, first - 1, N) != s)
    if continues & starts_here:
        acc = tl.load(tail_ptr + b * D + d, mask=dm, other=0.0)
        nb = b + 1
        going = nb < n_blocks
        while going:
            acc += tl.load(head_ptr + nb * D + d, mask=dm, other=0.0)
            nb_last = tl.minimum((nb + 1) * BLOCK_T, N) - 1
            going = (_seg(seg_ptr, nb_last + 1, N) == s) & (nb + 1 < n_blocks)
            nb += 1
        if (s >= 0) & (s < R):
            tl.store(out_ptr + s.to(tl.int64) * D + d, acc.to(out_ptr.dtype.element_ty), mask=dm)


def segment_sum(src, seg_id, num_segments, order=None, dense=True):
    """src (M, D) contiguous; seg_id (N,) int32/int64 non-decreasing; order None | (N,) rows of
    src to read (row order[j] for position j; None: row j, N == M). Returns (num_segments, D)
    like src. dense: every segment has a row (chunk ids); else absent segments are 0."""
    n = seg_id.shape[0]
    dim = src.shape[1]
    if dense:
        out = empty((num_segments, dim), src.dtype, src.device)
    else:
        out = torch.zeros(num_segments, dim, dtype=src.dtype, device=src.device)
    if n == 0 or dim == 0:
        return out
    bd = dim_block(dim, cap=64)
    n_blocks = triton.cdiv(n, BLOCK_T)
    head = empty((n_blocks, dim), torch.float32, src.device)
    tail = empty((n_blocks, dim), torch.float32, src.device)
    grid = (n_blocks, triton.cdiv(dim, bd))
    _segment_sum_blocks_kernel[grid](src, seg_id, seg_id if order is None else order, out, head,
                                     tail, n, num_segments, dim, HAS_ORDER=order is not None,
                                     BLOCK_T=BLOCK_T, BLOCK_D=bd)
    _segment_sum_carry_kernel[grid](seg_id, out, head, tail, n, num_segments, dim, n_blocks,
                                    BLOCK_T=BLOCK_T, BLOCK_D=bd)
    return out
