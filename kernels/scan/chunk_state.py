"""Chunk-local states of both scan directions from one read of the chunk.

For every (chunk, batch*head) program, with u a (Q, P) tile and v a (Q, N) tile:

* forward pass (ADJOINT=False), u = dt' x, v = B:
    forward  state at the chunk's last token   S_f = sum_s exp(L_end - L_s)  u_s (x) v_s
    reverse  state at the chunk's first token  S_r = sum_s exp(Lex_s)        u_s (x) v_s
* adjoint pass (ADJOINT=True), u = dy' (dy shifted by SHIFT_F / SHIFT_R), v = C:
    forward-direction adjoint, passed leftwards  S_f = sum_t exp(L_t)          u_t (x) v_t
    reverse-direction adjoint, passed rightwards S_r = sum_t exp(L_end - Lex_t) u_t (x) v_t

Only tokens of the sequence that owns the chunk's edge (last token when passing rightwards,
first token when passing leftwards) contribute: both operands are zeroed outside it, so a NaN of
another sequence in the chunk stays out. Each program also writes the carry factor of its chunk:
exp(L_end) when the sequence entering from the neighbour runs through the whole chunk, else
RESET (state_passing.py combines states with it, selecting the local state at a RESET).
"""

import triton
import triton.language as tl

from .common import chunk_coords, chunk_seq_ids, load_dt_pair, load_rows, mm, seq_cumsum
from .state_passing import RESET


@triton.jit
def _local_state(u, v, lam, seq, seq_first, seq_last, seq_prev, seq_next, i,
                 TO_RIGHT: tl.constexpr, K_EXCL: tl.constexpr, HAS_SEQ: tl.constexpr,
                 MM_DTYPE: tl.constexpr, PREC: tl.constexpr):
    L, L_end = seq_cumsum(lam, seq, seq_last, i, HAS_SEQ)
    if K_EXCL:
        K = L - lam
    else:
        K = L
    if TO_RIGHT:
        own = seq == seq_last
        w = tl.exp(L_end - K)
        carry = tl.where(seq_prev == seq_last, tl.exp(L_end), RESET)
    else:
        own = seq == seq_first
        w = tl.exp(K)
        carry = tl.where(seq_next == seq_first, tl.exp(L_end), RESET)
    uw = tl.where(own[:, None], u * w[:, None], 0.0)
    state = mm(tl.trans(uw), tl.where(own[:, None], v, 0.0), MM_DTYPE, PREC)  # (P, N)
    return state, carry


@triton.jit
def chunk_state_kernel(
    u_ptr, s_ub, s_ul, s_uh, s_up,
    vf_ptr, s_vfb, s_vfl, s_vfg, s_vfn,
    vr_ptr, s_vrb, s_vrl, s_vrg, s_vrn,
    dtf_ptr, s_dtfb, s_dtfl, s_dtfh,
    dtr_ptr, s_dtrb, s_dtrl, s_dtrh,
    Af_ptr, Ar_ptr, bias_ptr, seq_ptr,
    statef_ptr, stater_ptr, carryf_ptr, carryr_ptr,
    L_row, H, heads_per_group, P, N, nchunks,
    HAS_F: tl.constexpr, HAS_R: tl.constexpr, ADJOINT: tl.constexpr,
    SHIFT_F: tl.constexpr, SHIFT_R: tl.constexpr, SHARE_DT: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    MM_DTYPE: tl.constexpr, PREC: tl.constexpr,
):
    b, h, g, row0, start, end, i, pos, valid, chunk_idx = chunk_coords(L_row, H, heads_per_group,
                                                                       nchunks, Q)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    seq, seq_first, seq_last, seq_prev, seq_next = chunk_seq_ids(seq_ptr, pos, valid, start, end,
                                                                 L_row, HAS_SEQ)
    u_base = u_ptr + b * s_ub + row0 * s_ul + h * s_uh
    state_off = chunk_idx * P * N + offs_p[:, None] * N + offs_n[None, :]
    state_mask = (offs_p[:, None] < P) & (offs_n[None, :] < N)

    dtp_f, pre_f, dtp_r, pre_r = load_dt_pair(dtf_ptr, s_dtfb, s_dtfl, s_dtfh, dtr_ptr, s_dtrb,
                                              s_dtrl, s_dtrh, bias_ptr, b, row0, h, i, valid,
                                              HAS_BIAS, SOFTPLUS, SHARE_DT)
    u_f = load_rows(u_base, s_ul, s_up, i, offs_p, P, L_row, pos, seq, seq_ptr, SHIFT_F, HAS_SEQ)
    if SHIFT_R == SHIFT_F:
        u_r = u_f
    else:
        u_r = load_rows(u_base, s_ul, s_up, i, offs_p, P, L_row, pos, seq, seq_ptr, SHIFT_R, HAS_SEQ)

    if HAS_F:
        A_f = tl.load(Af_ptr + h).to(tl.float32)
        v = load_rows(vf_ptr + b * s_vfb + row0 * s_vfl + g * s_vfg, s_vfl, s_vfn, i, offs_n, N,
                      L_row, pos, seq, seq_ptr, 0, HAS_SEQ)
        if ADJOINT:
            uf = u_f
        else:
            uf = u_f * dtp_f[:, None]
        state, carry = _local_state(uf, v, dtp_f * A_f, seq, seq_first, seq_last, seq_prev,
                                    seq_next, i, not ADJOINT, False, HAS_SEQ, MM_DTYPE, PREC)
        tl.store(statef_ptr + state_off, state, mask=state_mask)
        tl.store(carryf_ptr + chunk_idx, carry)
    if HAS_R:
        A_r = tl.load(Ar_ptr + h).to(tl.float32)
        v = load_rows(vr_ptr + b * s_vrb + row0 * s_vrl + g * s_vrg, s_vrl, s_vrn, i, offs_n, N,
                      L_row, pos, seq, seq_ptr, 0, HAS_SEQ)
        if ADJOINT:
            ur = u_r
        else:
            ur = u_r * dtp_r[:, None]
        state, carry = _local_state(ur, v, dtp_r * A_r, seq, seq_first, seq_last, seq_prev,
                                    seq_next, i, ADJOINT, True, HAS_SEQ, MM_DTYPE, PREC)
        tl.store(stater_ptr + state_off, state, mask=state_mask)
        tl.store(carryr_ptr + chunk_idx, carry)
