"""EMA scan over the chunks of each sequence, forward and backward; bidirectional in one launch.

    e_c = p_c z_c + a_c e_{c-1}   (a = 1 - p, e = 0 before the sequence)     left to right
    r_c = p_c z_c + a_c r_{c+1}   (r = 0 after the sequence)                  right to left
    out = e, or (e + r) / 2

One program owns one sequence and BLOCK_D columns, and walks it in tiles of BLOCK_L chunks: a
tile is an associative scan of the affine maps s -> a s + b (compose (a1, b1) then (a2, b2) =
(a1 a2, a2 b1 + b2)), then the carry from the previous tile enters as A s_in + B. The reverse
direction walks the tiles right to left with the rows of each tile reversed.

Backward, with de = dout (or dout / 2 and dr = dout / 2 when bidirectional):
    G_c = de_c + a_{c+1} G_{c+1}   (right to left),   H_c = dr_c + a_{c-1} H_{c-1}   (left to right)
    dz_c = p_c (G_c + H_c),   dp_c = sum_d G_c (z_c - e_{c-1}) + H_c (z_c - r_{c+1})
Each term pairs a state of one direction with an adjoint of the other, so the kernel makes two
sweeps: left to right it stores e_{c-1} (and H_c) in fp32 scratch, right to left it finishes.
"""

import torch
import triton
import triton.language as tl

from .common import empty

__all__ = ["ema_fwd", "ema_bwd"]

BLOCK_L = 32


@triton.jit
def _compose(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _affine_scan(a, b, carry):
    """States of s_i = a_i s_{i-1} + b_i along axis 0 of (BLOCK_L, BLOCK_D) tiles, s_{-1} = carry
    (BLOCK_D,). Returns the states and the last one (the next tile's carry)."""
    A, B = tl.associative_scan((a, b), 0, _compose)
    s = A * carry[None, :] + B
    last = tl.sum(tl.where(tl.arange(0, a.shape[0])[:, None] == a.shape[0] - 1, s, 0.0), 0)
    return s, last


@triton.jit
def _load_rows(ptr, rows, ok, d, D):
    return tl.load(ptr + rows[:, None].to(tl.int64) * D + d[None, :],
                   mask=ok[:, None] & (d[None, :] < D), other=0.0).to(tl.float32)


@triton.jit
def _load_p(p_ptr, rows, ok, BLOCK_D: tl.constexpr):
    """p of the rows, broadcast to (BLOCK_L, BLOCK_D); 0 outside the sequence."""
    p = tl.load(p_ptr + rows, mask=ok, other=0.0).to(tl.float32)
    return p[:, None] + tl.zeros((1, BLOCK_D), tl.float32)


@triton.jit
def _ema_fwd_kernel(z_ptr, p_ptr, cu_ptr, tmp_ptr, out_ptr, D,
                    BIDIR: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    start = tl.load(cu_ptr + tl.program_id(0))
    end = tl.load(cu_ptr + tl.program_id(0) + 1)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    i = tl.arange(0, BLOCK_L)
    n_tiles = tl.cdiv(end - start, BLOCK_L)
    carry = tl.zeros((BLOCK_D,), tl.float32)
    for tile in range(0, n_tiles):
        rows = start + tile * BLOCK_L + i
        ok = rows < end
        p = _load_p(p_ptr, rows, ok, BLOCK_D)
        e, carry = _affine_scan(1.0 - p, p * _load_rows(z_ptr, rows, ok, d, D), carry)
        dst = rows[:, None].to(tl.int64) * D + d[None, :]
        dmask = ok[:, None] & (d[None, :] < D)
        if BIDIR:
            tl.store(tmp_ptr + dst, e, mask=dmask)
        else:
            tl.store(out_ptr + dst, e.to(out_ptr.dtype.element_ty), mask=dmask)
    if BIDIR:
        tl.debug_barrier()  # the reverse sweep reads what other threads stored
        carry = tl.zeros((BLOCK_D,), tl.float32)
        for tile in range(0, n_tiles):
            rows = end - 1 - tile * BLOCK_L - i
            ok = rows >= start
            p = _load_p(p_ptr, rows, ok, BLOCK_D)
            r, carry = _affine_scan(1.0 - p, p * _load_rows(z_ptr, rows, ok, d, D), carry)
            e = _load_rows(tmp_ptr, rows, ok, d, D)
            dst = rows[:, None].to(tl.int64) * D + d[None, :]
            tl.store(out_ptr + dst, ((e + r) * 0.5).to(out_ptr.dtype.element_ty),
                     mask=ok[:, None] & (d[None, :] < D))


@triton.jit
def _ema_bwd_kernel(dout_ptr, z_ptr, p_ptr, cu_ptr, eprev_ptr, h_ptr, dz_ptr, dp_part_ptr, C, D,
                    BIDIR: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    start = tl.load(cu_ptr + tl.program_id(0))
    end = tl.load(cu_ptr + tl.program_id(0) + 1)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d[None, :] < D
    i = tl.arange(0, BLOCK_L)
    n_tiles = tl.cdiv(end - start, BLOCK_L)
    scale = 0.5 if BIDIR else 1.0
    # left to right: e_{c-1} (the scan of the rows shifted by one) and H_c
    e_carry = tl.zeros((BLOCK_D,), tl.float32)
    h_carry = tl.zeros((BLOCK_D,), tl.float32)
    for tile in range(0, n_tiles):
        rows = start + tile * BLOCK_L + i
        ok = rows < end
        prev_ok = ok & (rows - 1 >= start)
        p_prev = _load_p(p_ptr, rows - 1, prev_ok, BLOCK_D)
        z_prev = _load_rows(z_ptr, rows - 1, prev_ok, d, D)
        e_prev, e_carry = _affine_scan(1.0 - p_prev, p_prev * z_prev, e_carry)
        dst = rows[:, None].to(tl.int64) * D + d[None, :]
        tl.store(eprev_ptr + dst, e_prev, mask=ok[:, None] & dmask)
        if BIDIR:
            dr = scale * _load_rows(dout_ptr, rows, ok, d, D)
            h, h_carry = _affine_scan(tl.where(prev_ok[:, None], 1.0 - p_prev, 0.0), dr, h_carry)
            tl.store(h_ptr + dst, h, mask=ok[:, None] & dmask)
    tl.debug_barrier()  # the right-to-left sweep reads what other threads stored
    # right to left: G_c (and r_{c+1}), then dz and this column block's part of dp
    g_carry = tl.zeros((BLOCK_D,), tl.float32)
    r_carry = tl.zeros((BLOCK_D,), tl.float32)
    for tile in range(0, n_tiles):
        rows = end - 1 - tile * BLOCK_L - i
        ok = rows >= start
        next_ok = ok & (rows + 1 < end)
        p = tl.load(p_ptr + rows, mask=ok, other=0.0).to(tl.float32)
        p_next = _load_p(p_ptr, rows + 1, next_ok, BLOCK_D)
        z = _load_rows(z_ptr, rows, ok, d, D)
        de = scale * _load_rows(dout_ptr, rows, ok, d, D)
        g, g_carry = _affine_scan(tl.where(next_ok[:, None], 1.0 - p_next, 0.0), de, g_carry)
        e_prev = _load_rows(eprev_ptr, rows, ok, d, D)
        dz = g
        dp = tl.sum(g * (z - e_prev), 1)
        if BIDIR:
            z_next = _load_rows(z_ptr, rows + 1, next_ok, d, D)
            r_next, r_carry = _affine_scan(1.0 - p_next, p_next * z_next, r_carry)
            h = _load_rows(h_ptr, rows, ok, d, D)
            dz += h
            dp += tl.sum(h * (z - r_next), 1)
        dst = rows[:, None].to(tl.int64) * D + d[None, :]
        tl.store(dz_ptr + dst, (p[:, None] * dz).to(dz_ptr.dtype.element_ty),
                 mask=ok[:, None] & dmask)
        tl.store(dp_part_ptr + tl.program_id(1).to(tl.int64) * C + rows, dp, mask=ok)


def _dim_block(dim, nseq):
    # narrower column blocks when there are few sequences, to give the GPU enough programs
    bd = 32 if nseq * triton.cdiv(dim, 32) >= 128 else 16
    return bd


def ema_fwd(z, p, cu_seqlens, bidirectional):
    """z (C, D) contiguous, p (C,), cu_seqlens int32 (nseq+1,) -> (C, D) like z."""
    total, dim = z.shape
    nseq = cu_seqlens.shape[0] - 1
    out = empty((total, dim), z.dtype, z.device)
    if total == 0 or dim == 0:
        return out
    tmp = None
    if bidirectional:
        tmp = out if z.dtype == torch.float32 else empty((total, dim), torch.float32, z.device)
    bd = _dim_block(dim, nseq)
    _ema_fwd_kernel[(nseq, triton.cdiv(dim, bd))](z, p, cu_seqlens, out if tmp is None else tmp,
                                                  out, dim, BIDIR=bidirectional,
                                                  BLOCK_L=BLOCK_L, BLOCK_D=bd)
    return out


def ema_bwd(dout, z, p, cu_seqlens, bidirectional):
    """dout, z (C, D) contiguous; p (C,). Returns dz (C, D) like z and dp (C,) fp32."""
    total, dim = z.shape
    nseq = cu_seqlens.shape[0] - 1
    dz = empty((total, dim), z.dtype, z.device)
    if total == 0 or dim == 0:
        return dz, torch.zeros(total, dtype=torch.float32, device=z.device)
    bd = _dim_block(dim, nseq)
    n_dblocks = triton.cdiv(dim, bd)
    e_prev = empty((total, dim), torch.float32, z.device)
    h = empty((total, dim), torch.float32, z.device) if bidirectional else e_prev
    dp_part = empty((n_dblocks, total), torch.float32, z.device)
    _ema_bwd_kernel[(nseq, n_dblocks)](dout, z, p, cu_seqlens, e_prev, h, dz, dp_part, total, dim,
                                       BIDIR=bidirectional, BLOCK_L=BLOCK_L, BLOCK_D=bd)
    return dz, dp_part.sum(0)
