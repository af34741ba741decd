"""Output of the fused bidirectional scan: one program per (chunk, batch*head) computes both
directions for its chunk and writes y once.

For token t of the chunk (DESIGN.md Op 1; notation in common.py), the forward direction gives
    yf_t = sum_{s<=t} exp(L_t - L_s) (C_t . B_s) dt'_s x_s + exp(L_t) C_t . H_in
and the reverse direction
    yr_t = sum_{s>=t} exp(Lex_s - Lex_t) (C_t . B_s) dt'_s x_s + exp(L_end - Lex_t) C_t . R_in
with H_in / R_in the states entering the chunk from the left / right (state_passing.py).

Quasiseparable mode needs yf_{t-1} and yr_{t+1}. Since h_{t-1} has log-decay Lex_t and
r_{t+1} has L_t inside the chunk, both are the same sums with C read one row away (t-1 / t+1),
strict masks (s < t / s > t) and the other cumulative sum: no shifted copy of anything.

GATE_BWD=True turns the kernel into the first step of the backward: it recomputes the pre-gate
output y_pre, and writes dz = dy y_pre silu'(z) and dy_pre = dy silu(z) instead of y.
"""

import triton
import triton.language as tl

from .common import (chunk_coords, chunk_seq_ids, load_dt_pair, load_rows, load_state, mm,
                     mm_tokens, seq_cumsum)


@triton.jit
def _direction_matrix(lam, seq, seq_last, seq_prev, seq_next, i, IS_REV: tl.constexpr,
                      QUASI: tl.constexpr, HAS_SEQ: tl.constexpr):
    """(Q, Q) decay matrix W[t, s] of one direction (0 where s does not reach t), reach[t, s]
    (whether it does), the (Q,) weight of the state entering the chunk, for the outputs as
    computed by this kernel, and whether that state reaches token t (the sequence entering)."""
    L, L_end = seq_cumsum(lam, seq, seq_last, i, HAS_SEQ)
    Lex = L - lam
    t = i[:, None]
    s = i[None, :]
    same = seq[:, None] == seq[None, :]
    if IS_REV:
        if QUASI:
            K_out = L
            reach = (s > t) & same
        else:
            K_out = Lex
            reach = (s >= t) & same
        W = tl.exp(tl.where(reach, Lex[None, :] - K_out[:, None], float("-inf")))
        entering = seq == seq_next
        w_in = tl.where(entering, tl.exp(L_end - K_out), 0.0)
    else:
        if QUASI:
            K_out = Lex
            reach = (s < t) & same
        else:
            K_out = L
            reach = (s <= t) & same
        W = tl.exp(tl.where(reach, K_out[:, None] - L[None, :], float("-inf")))
        entering = seq == seq_prev
        w_in = tl.where(entering, tl.exp(K_out), 0.0)
    return W, reach, w_in, entering


@triton.jit
def _state_term(Cm, w_in, entering, S_in, MM_DTYPE: tl.constexpr, PREC: tl.constexpr):
    """(Q, P): w_in_t C_t . S_in on the rows the entering state reaches, 0 elsewhere (selected:
    S_in holds the state of another sequence for those rows, maybe NaN)."""
    return tl.where(entering[:, None], mm(Cm * w_in[:, None], tl.trans(S_in), MM_DTYPE, PREC), 0.0)


@triton.jit
def chunk_scan_fwd_kernel(
    x_ptr, s_xb, s_xl, s_xh, s_xp,
    z_ptr, s_zb, s_zl, s_zh, s_zp,
    y_ptr, s_yb, s_yl, s_yh, s_yp,            # y (or dy_pre with GATE_BWD)
    dy_ptr, s_dyb, s_dyl, s_dyh, s_dyp,       # GATE_BWD only
    dz_ptr, s_dzb, s_dzl, s_dzh, s_dzp,       # GATE_BWD only
    Bf_ptr, s_bfb, s_bfl, s_bfg, s_bfn,
    Cf_ptr, s_cfb, s_cfl, s_cfg, s_cfn,
    Br_ptr, s_brb, s_brl, s_brg, s_brn,
    Cr_ptr, s_crb, s_crl, s_crg, s_crn,
    dtf_ptr, s_dtfb, s_dtfl, s_dtfh,
    dtr_ptr, s_dtrb, s_dtrl, s_dtrh,
    Af_ptr, Ar_ptr, bias_ptr, D_ptr, seq_ptr,
    statef_ptr, stater_ptr,
    L_row, H, heads_per_group, P, N, nchunks,
    HAS_F: tl.constexpr, HAS_R: tl.constexpr, QUASI: tl.constexpr, C_SHIFT_F: tl.constexpr,
    C_SHIFT_R: tl.constexpr, SHARE_CB: tl.constexpr,
    SHARE_DT: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, GATE_BWD: tl.constexpr,
    HAS_SEQ: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    MM_DTYPE: tl.constexpr, PREC: tl.constexpr,
):
    b, h, g, row0, start, end, i, pos, valid, chunk_idx = chunk_coords(L_row, H, heads_per_group,
                                                                       nchunks, Q)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    seq, seq_first, seq_last, seq_prev, seq_next = chunk_seq_ids(seq_ptr, pos, valid, start, end,
                                                                 L_row, HAS_SEQ)
    x = load_rows(x_ptr + b * s_xb + row0 * s_xl + h * s_xh, s_xl, s_xp, i, offs_p, P, L_row, pos,
                  seq, seq_ptr, 0, HAS_SEQ)
    state_off = chunk_idx * P * N
    dtp_f, pre_f, dtp_r, pre_r = load_dt_pair(dtf_ptr, s_dtfb, s_dtfl, s_dtfh, dtr_ptr, s_dtrb,
                                              s_dtrl, s_dtrh, bias_ptr, b, row0, h, i, valid,
                                              HAS_BIAS, SOFTPLUS, SHARE_DT)
    acc = tl.zeros((Q, BLOCK_P), dtype=tl.float32)
    # both directions read B and C at t: one C B^T and one matmul with x serve both
    if SHARE_CB:
        A_f = tl.load(Af_ptr + h).to(tl.float32)
        A_r = tl.load(Ar_ptr + h).to(tl.float32)
        Cm = load_rows(Cf_ptr + b * s_cfb + row0 * s_cfl + g * s_cfg, s_cfl, s_cfn, i, offs_n, N,
                       L_row, pos, seq, seq_ptr, 0, HAS_SEQ)
        Bm = load_rows(Bf_ptr + b * s_bfb + row0 * s_bfl + g * s_bfg, s_bfl, s_bfn, i, offs_n, N,
                       L_row, pos, seq, seq_ptr, 0, HAS_SEQ)
        W_f, reach_f, win_f, in_f = _direction_matrix(dtp_f * A_f, seq, seq_last, seq_prev,
                                                      seq_next, i, False, False, HAS_SEQ)
        W_r, reach_r, win_r, in_r = _direction_matrix(dtp_r * A_r, seq, seq_last, seq_prev,
                                                      seq_next, i, True, False, HAS_SEQ)
        CB = mm(Cm, tl.trans(Bm), MM_DTYPE, PREC)
        # (where, not products with W = 0: dt' and C B^T of another sequence may be NaN)
        reach = reach_f | reach_r
        W = tl.where(reach_f, W_f * dtp_f[None, :], 0.0) + tl.where(reach_r, W_r * dtp_r[None, :],
                                                                     0.0)
        acc += mm_tokens(tl.where(reach, CB * W, 0.0), x, reach, MM_DTYPE, PREC)
        H_in = load_state(statef_ptr + state_off, offs_p, offs_n, P, N)
        R_in = load_state(stater_ptr + state_off, offs_p, offs_n, P, N)
        acc += _state_term(Cm, win_f, in_f, H_in, MM_DTYPE, PREC)
        acc += _state_term(Cm, win_r, in_r, R_in, MM_DTYPE, PREC)
    else:
        if HAS_F:
            A_f = tl.load(Af_ptr + h).to(tl.float32)
            Cm = load_rows(Cf_ptr + b * s_cfb + row0 * s_cfl + g * s_cfg, s_cfl, s_cfn, i, offs_n,
                           N, L_row, pos, seq, seq_ptr, C_SHIFT_F, HAS_SEQ)
            Bm = load_rows(Bf_ptr + b * s_bfb + row0 * s_bfl + g * s_bfg, s_bfl, s_bfn, i, offs_n,
                           N, L_row, pos, seq, seq_ptr, 0, HAS_SEQ)
            W_f, reach_f, win_f, in_f = _direction_matrix(dtp_f * A_f, seq, seq_last, seq_prev,
                                                          seq_next, i, False, QUASI, HAS_SEQ)
            CB = mm(Cm, tl.trans(Bm), MM_DTYPE, PREC)
            acc += mm_tokens(tl.where(reach_f, CB * (W_f * dtp_f[None, :]), 0.0), x, reach_f,
                             MM_DTYPE, PREC)
            H_in = load_state(statef_ptr + state_off, offs_p, offs_n, P, N)
            acc += _state_term(Cm, win_f, in_f, H_in, MM_DTYPE, PREC)
        if HAS_R:
            A_r = tl.load(Ar_ptr + h).to(tl.float32)
            Cm = load_rows(Cr_ptr + b * s_crb + row0 * s_crl + g * s_crg, s_crl, s_crn, i, offs_n,
                           N, L_row, pos, seq, seq_ptr, C_SHIFT_R, HAS_SEQ)
            Bm = load_rows(Br_ptr + b * s_brb + row0 * s_brl + g * s_brg, s_brl, s_brn, i, offs_n,
                           N, L_row, pos, seq, seq_ptr, 0, HAS_SEQ)
            W_r, reach_r, win_r, in_r = _direction_matrix(dtp_r * A_r, seq, seq_last, seq_prev,
                                                          seq_next, i, True, QUASI, HAS_SEQ)
            CB = mm(Cm, tl.trans(Bm), MM_DTYPE, PREC)
            acc += mm_tokens(tl.where(reach_r, CB * (W_r * dtp_r[None, :]), 0.0), x, reach_r,
                             MM_DTYPE, PREC)
            R_in = load_state(stater_ptr + state_off, offs_p, offs_n, P, N)
            acc += _state_term(Cm, win_r, in_r, R_in, MM_DTYPE, PREC)
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + h * P + offs_p, mask=offs_p < P, other=0.0).to(tl.float32)
            acc += x * Dv[None, :]
        else:
            acc += x * tl.load(D_ptr + h).to(tl.float32)
    io_mask = valid[:, None] & (offs_p[None, :] < P)
    if HAS_Z:
        zz = tl.load(z_ptr + b * s_zb + row0 * s_zl + h * s_zh + i[:, None] * s_zl
                     + offs_p[None, :] * s_zp, mask=io_mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(zz)
        if GATE_BWD:
            dy = tl.load(dy_ptr + b * s_dyb + row0 * s_dyl + h * s_dyh + i[:, None] * s_dyl
                         + offs_p[None, :] * s_dyp, mask=io_mask, other=0.0).to(tl.float32)
            dz = dy * acc * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + b * s_dzb + row0 * s_dzl + h * s_dzh + i[:, None] * s_dzl
                     + offs_p[None, :] * s_dzp, dz.to(dz_ptr.dtype.element_ty), mask=io_mask)
            acc = dy * zz * sig
        else:
            acc = acc * zz * sig
    tl.store(y_ptr + b * s_yb + row0 * s_yl + h * s_yh + i[:, None] * s_yl + offs_p[None, :] * s_yp,
             acc.to(y_ptr.dtype.element_ty), mask=io_mask)
