"""Fused boundary kernel: normalise, cosine with the previous token, p and mask in one pass.

    cos_t = (q_t . k_{t-1}) / (max(|q_t|, eps) max(|k_{t-1}|, eps))
    p_t   = clamp((1 - cos_t) / 2, 0, 1),   p_t = 1 at the first token of a sequence
    mask_t = p_t > 0.5

Backward (clamp passes the gradient on [0, 1]; g_t = -dp_t / 2 where it does, else 0):
    dq_t = g_t / nq_t * (k_{t-1} / nk_{t-1} - [|q_t| > eps] cos_t q_t / nq_t)
    dk_t = g_{t+1} / nk_t * (q_{t+1} / nq_{t+1} - [|k_t| > eps] cos_{t+1} k_t / nk_t)
with nq = max(|q|, eps), nk = max(|k|, eps) (F.normalize's convention).

NaN stays in its sequence: the clamp passes NaN (as torch.clamp does), and a pair that crosses a
sequence start (or the ends) is selected away with where, never multiplied by 0, so a NaN row of
the neighbouring sequence cannot reach a gradient.
"""

import torch
import triton
import triton.language as tl

from .common import dim_block, empty, sequence_start_flags

__all__ = ["boundaries_fwd", "boundaries_bwd"]

EPS = 1e-12
BLOCK_T = 16


@triton.jit
def _pair_stats(q_ptr, k_ptr, t, prev_ok, T, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """|q_t|^2, |k_{t-1}|^2 and q_t . k_{t-1} for a block of tokens t, fp32 (BLOCK_T,)."""
    qq = tl.zeros([BLOCK_T], tl.float32)
    kk = tl.zeros([BLOCK_T], tl.float32)
    qk = tl.zeros([BLOCK_T], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d[None, :] < D
        q = tl.load(q_ptr + t[:, None] * D + d[None, :], mask=(t < T)[:, None] & dm, other=0.0)
        k = tl.load(k_ptr + (t - 1)[:, None] * D + d[None, :], mask=prev_ok[:, None] & dm,
                    other=0.0)
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        qq += tl.sum(q * q, 1)
        kk += tl.sum(k * k, 1)
        qk += tl.sum(q * k, 1)
    return qq, kk, qk


@triton.jit
def _boundaries_fwd_kernel(q_ptr, k_ptr, start_ptr, p_ptr, mask_ptr, T, D, eps,
                           BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)  # row offsets past 2^31
    valid = t < T
    start = tl.load(start_ptr + t, mask=valid, other=1) != 0
    qq, kk, qk = _pair_stats(q_ptr, k_ptr, t, valid & (t > 0), T, D, BLOCK_T, BLOCK_D)
    cos = qk / (tl.maximum(tl.sqrt(qq), eps) * tl.maximum(tl.sqrt(kk), eps))
    v = (1.0 - cos) * 0.5
    # clamp to [0, 1] by comparisons, which pass NaN (tl.minimum/maximum may drop it on a GPU)
    p = tl.where(v < 0.0, 0.0, tl.where(v > 1.0, 1.0, v))
    p = tl.where(start, 1.0, p)
    tl.store(p_ptr + t, p, mask=valid)
    tl.store(mask_ptr + t, p > 0.5, mask=valid)


@triton.jit
def _pair_grad_coef(dp_ptr, start_ptr, t, qq, kk, qk, T, eps):
    """For pairs (t, t-1): whether the pair exists (t - 1 in t's sequence), cos, g = dcos, the
    norms nq_t, nk_{t-1}, and |q_t| > eps."""
    valid = (t < T) & (t > 0)
    pair = valid & (tl.load(start_ptr + t, mask=valid, other=1) == 0)
    dp = tl.load(dp_ptr + t, mask=valid, other=0.0).to(tl.float32)
    rq = tl.sqrt(qq)
    nq = tl.maximum(rq, eps)
    nk = tl.maximum(tl.sqrt(kk), eps)
    cos = qk / (nq * nk)
    v = (1.0 - cos) * 0.5
    g = tl.where(pair & (v >= 0.0) & (v <= 1.0), -0.5 * dp, 0.0)
    return pair, cos, g, nq, nk, rq > eps


@triton.jit
def _boundaries_bwd_kernel(dp_ptr, q_ptr, k_ptr, start_ptr, dq_ptr, dk_ptr, T, D, eps,
                           BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)  # row offsets past 2^31
    valid = t < T
    nxt = t + 1
    # pair (t, t-1) gives dq_t; pair (t+1, t) gives dk_t
    qq0, kk0, qk0 = _pair_stats(q_ptr, k_ptr, t, valid & (t > 0), T, D, BLOCK_T, BLOCK_D)
    qq1, kk1, qk1 = _pair_stats(q_ptr, k_ptr, nxt, nxt < T, T, D, BLOCK_T, BLOCK_D)
    pair0, cos0, g0, nq0, nk0, q_big = _pair_grad_coef(dp_ptr, start_ptr, t, qq0, kk0, qk0, T,
                                                       eps)
    pair1, cos1, g1, nq1, nk1, _unused = _pair_grad_coef(dp_ptr, start_ptr, nxt, qq1, kk1, qk1, T,
                                                         eps)
    k_big = tl.sqrt(kk1) > eps
    # dq_t = a0 k_{t-1} - b0 q_t ;  dk_t = a1 q_{t+1} - b1 k_t
    a0 = g0 / (nq0 * nk0)
    b0 = tl.where(q_big, g0 * cos0 / (nq0 * nq0), 0.0)
    a1 = g1 / (nk1 * nq1)
    b1 = tl.where(k_big, g1 * cos1 / (nk1 * nk1), 0.0)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d[None, :] < D
        row = valid[:, None] & dm
        q = tl.load(q_ptr + t[:, None] * D + d[None, :], mask=row, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + t[:, None] * D + d[None, :], mask=row, other=0.0).to(tl.float32)
        k_prev = tl.load(k_ptr + (t - 1)[:, None] * D + d[None, :],
                         mask=(valid & (t > 0))[:, None] & dm, other=0.0).to(tl.float32)
        q_next = tl.load(q_ptr + nxt[:, None] * D + d[None, :], mask=(nxt < T)[:, None] & dm,
                         other=0.0).to(tl.float32)
        # where, not a zero coefficient: the rows of a missing pair may hold another
        # sequence's NaN (0 * NaN)
        dq = tl.where(pair0[:, None], a0[:, None] * k_prev - b0[:, None] * q, 0.0)
        dk = tl.where(pair1[:, None], a1[:, None] * q_next - b1[:, None] * k, 0.0)
        tl.store(dq_ptr + t[:, None] * D + d[None, :], dq.to(dq_ptr.dtype.element_ty), mask=row)
        tl.store(dk_ptr + t[:, None] * D + d[None, :], dk.to(dk_ptr.dtype.element_ty), mask=row)


def boundaries_fwd(q, k, cu_seqlens):
    """q, k (T, D) contiguous; cu_seqlens int32 (nseq+1,). Returns p (T,) fp32, mask (T,) bool."""
    total, dim = q.shape
    p = empty((total,), torch.float32, q.device)
    mask = torch.empty(total, dtype=torch.bool, device=q.device)
    if total == 0:
        return p, mask
    starts = sequence_start_flags(cu_seqlens, total)
    grid = (triton.cdiv(total, BLOCK_T),)
    _boundaries_fwd_kernel[grid](q, k, starts, p, mask, total, dim, EPS,
                                 BLOCK_T=BLOCK_T, BLOCK_D=dim_block(dim))
    return p, mask


def boundaries_bwd(dp, q, k, cu_seqlens):
    """dp (T,) float; q, k (T, D) contiguous. Returns dq, dk (T, D) like q, k."""
    total, dim = q.shape
    dq = empty(q.shape, q.dtype, q.device)
    dk = empty(k.shape, k.dtype, k.device)
    if total == 0:
        return dq, dk
    starts = sequence_start_flags(cu_seqlens, total)
    grid = (triton.cdiv(total, BLOCK_T),)
    _boundaries_bwd_kernel[grid](dp, q, k, starts, dq, dk, total, dim, EPS,
                                 BLOCK_T=BLOCK_T, BLOCK_D=dim_block(dim))
    return dq, dk
