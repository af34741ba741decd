"""Backward of the fused bidirectional scan: one program per (chunk, batch*head) computes every
gradient of its chunk for both directions and writes dx once.

Per direction, with upstream dy' (dy_pre, read one row away in quasiseparable mode), the
adjoint of the state at token s is g_s (forward direction: from tokens t >= s; reverse: from
t <= s). Inside a chunk (W = the direction's decay matrix, W[t, s] weight of s in the state at t):
    gB_s  = sum_t W[t,s] (C_t . B_s) dy'_t + w_in_s Adj B_s         (= g_s B_s,  (Q, P))
    dx_s  = dt'_s gB_s,           ddt'_s (input term) = x_s . gB_s
    dB_s  = dt'_s [sum_t W[t,s] (dy'_t . x_s) C_t + w_in_s x_s Adj]
    dC_t  = sum_s W[t,s] dt'_s (dy'_t . x_s) B_s + w_out_t dy'_t S_in
where S_in is the state entering the chunk (recomputed forward pass) and Adj the adjoint
entering it (adjoint pass). The log-decay gradient comes from the identity
    dL_k = C_k . dC_k - B_k . dB_k        (forward: L inclusive, d lam_u = sum_{k>=u} dL_k)
    dM_k = B_k . dB_k - C_k . dC_k        (reverse: M exclusive, d lam_u = sum_{k>u} dM_k)
where the sums run over u's sequence. dL sums to zero over a sequence (L and M enter only
through differences), so for the forward d lam_u = -sum_{k<u} dL_k. In both directions d lam_u
is then minus the sum of e_k = C_k . dC_k - B_k . dB_k over the tokens the direction reaches
before u (k < u forward, k > u reverse): empty, so exactly 0, at the direction's first token of
a sequence, as the state before it is. That sum is the part inside the chunk plus, for a
sequence entering the chunk on the direction's side (left for the forward, right for the
reverse), the part outside: the derivative with respect to the scale of the incoming state,
T = sum_t C_t . dC_in_t + <adjoint, state> through the chunk. Both are made of tiles this
program already holds (the incoming state and the inter-chunk terms of dC), so no chunk reads
another's.
"""

import triton
import triton.language as tl

from .common import (chunk_coords, chunk_seq_ids, load_dt_pair, load_rows, load_state, mm,
                     mm_tokens, seq_cumsum)


@triton.jit
def _store_or_add(ptrs, value, mask, ADD: tl.constexpr):
    """Store a (Q, N) gradient tile, or add it to the tile this program stored before (the other
    direction's gradient of a shared tensor)."""
    if ADD:
        tl.debug_barrier()
        value += tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, value, mask=mask)


@triton.jit
def _cb(C_base, s_cl, s_cn, B_base, s_bl, s_bn, i, N, L_row, pos, seq, seq_ptr,
        HAS_SEQ: tl.constexpr, Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        MM_DTYPE: tl.constexpr, PREC: tl.constexpr):
    """(Q, Q) C B^T of the chunk, dstate summed BLOCK_K columns at a time."""
    CB = tl.zeros((Q, Q), dtype=tl.float32)
    for k in range(0, BLOCK_N, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        Ck = load_rows(C_base, s_cl, s_cn, i, offs_k, N, L_row, pos, seq, seq_ptr, 0, HAS_SEQ)
        Bk = load_rows(B_base, s_bl, s_bn, i, offs_k, N, L_row, pos, seq, seq_ptr, 0, HAS_SEQ)
        CB += mm(Ck, tl.trans(Bk), MM_DTYPE, PREC)
    return CB


@triton.jit
def _direction_grads(x, dy, CB, DYX, dtp, lam, A, B_base, s_bl, s_bn, C_base, s_cl, s_cn,
                     S_ptr, Adj_ptr, offs_p, P, N, L_row, pos, valid, seq, seq_ptr, seq_prev,
                     seq_next, i, dB_rows, dC_rows, ADD_B: tl.constexpr, ADD_C: tl.constexpr,
                     IS_REV: tl.constexpr, HAS_SEQ: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, MM_DTYPE: tl.constexpr, PREC: tl.constexpr):
    """Gradients of one direction for one chunk. Stores dB and dC (per head, fp32) and returns
    (dx contribution, d dt', dA contribution). B, C, the entering state S and adjoint Adj are
    read BLOCK_K dstate columns at a time (dB_rows / dC_rows: (Q,) pointers to each token's
    row), so that only (Q, BLOCK_K) and (P, BLOCK_K) slices of them are live: whole (Q, dstate)
    and (headdim, dstate) tiles made this kernel spill registers."""
    # (the valid tokens' ids do not decrease and the others' are -1: the max is the last's)
    L, L_end = seq_cumsum(lam, seq, tl.max(seq, 0), i, HAS_SEQ)
    t = i[:, None]
    s = i[None, :]
    same = seq[:, None] == seq[None, :]
    # reach[t, s]: s is in t's state; reach_T is its transpose. Terms of another sequence are
    # selected away with where (below), never multiplied by a 0 weight: NaN stays in its sequence.
    # D[t, s]: the log-decay from s to t, summed over the tokens between (the segment sum), not
    # a difference of two cumulative sums, whose float32 error grows with |L| (~1e3 under
    # strong decay) rather than with D itself.
    if IS_REV:
        reach = (s >= t) & same
        reach_T = (s <= t) & same
        D = tl.cumsum(tl.where(t < s, lam[:, None], 0.0), 0, reverse=True)  # sum t <= k < s
        out_rows = seq == seq_next
        in_rows = seq == seq_prev
        w_out = tl.exp(tl.cumsum(lam, 0, reverse=True))  # exp(L_end - Lex_t)
        w_in = tl.exp(tl.sum(tl.where(t == 0, D, 0.0), 0))  # exp(Lex_s), D's first row
    else:
        reach = (s <= t) & same
        reach_T = (s >= t) & same
        D = tl.cumsum(tl.where(t > s, lam[:, None], 0.0), 0)  # sum s < k <= t
        out_rows = seq == seq_prev
        in_rows = seq == seq_next
        w_out = tl.exp(L)
        w_in = tl.exp(tl.sum(tl.where(t == tl.max(i, 0), D, 0.0), 0))  # exp(L_end - L_s)
    W = tl.exp(tl.where(reach, D, float("-inf")))
    gB = mm_tokens(tl.trans(tl.where(reach, W * CB, 0.0)), dy, reach_T, MM_DTYPE, PREC)
    # WDt[t, s]: weight of (t, s) in dC_t (times B_s) and in dB_s (times C_t)
    WDt = tl.where(reach, W * DYX * dtp[None, :], 0.0)
    q = tl.zeros_like(dtp)  # C_t . dC_t through the state entering the chunk
    r = tl.zeros_like(dtp)  # B_s . dB_s through the adjoint entering it
    through = 0.0
    for k in range(0, BLOCK_N, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        io_k = valid[:, None] & (offs_k[None, :] < N)
        Bk = load_rows(B_base, s_bl, s_bn, i, offs_k, N, L_row, pos, seq, seq_ptr, 0, HAS_SEQ)
        Ck = load_rows(C_base, s_cl, s_cn, i, offs_k, N, L_row, pos, seq, seq_ptr, 0, HAS_SEQ)
        S_k = load_state(S_ptr, offs_p, offs_k, P, N)
        Adj_k = load_state(Adj_ptr, offs_p, offs_k, P, N)
        # <adjoint, state> through the whole chunk (used when one sequence runs across it)
        through += tl.sum(tl.sum(Adj_k * S_k, 1), 0)
        gB += tl.where(in_rows[:, None], w_in[:, None] * mm(Bk, tl.trans(Adj_k), MM_DTYPE, PREC),
                       0.0)
        dC_in = tl.where(out_rows[:, None], w_out[:, None] * mm(dy, S_k, MM_DTYPE, PREC), 0.0)
        dC = mm_tokens(WDt, Bk, reach, MM_DTYPE, PREC) + dC_in
        q += tl.sum(tl.where(out_rows[:, None], Ck * dC_in, 0.0), 1)
        _store_or_add(dC_rows[:, None] + offs_k[None, :], dC, io_k, ADD_C)
        dB_in = tl.where(in_rows[:, None],
                         (dtp * w_in)[:, None] * mm(x, Adj_k, MM_DTYPE, PREC), 0.0)
        dB = mm_tokens(tl.trans(WDt), Ck, reach_T, MM_DTYPE, PREC) + dB_in
        r += tl.sum(tl.where(in_rows[:, None], Bk * dB_in, 0.0), 1)
        _store_or_add(dB_rows[:, None] + offs_k[None, :], dB, io_k, ADD_B)
    ddt_in = tl.sum(x * gB, 1)
    dx = dtp[:, None] * gB
    # d lam_u: the gradient of every pair (t, s) whose decay path crosses u, summed directly:
    # pairs inside the chunk (G, the gradient of each pair's log-weight), pairs with one end
    # outside (q: through the entering state, r: through the entering adjoint) and pairs with
    # both ends outside (through). Not telescoped from e_k = C_k . dC_k - B_k . dB_k, whose
    # terms are as large as the pairs at both of their ends and cancel to a small d lam under
    # strong decay (float32 dA errors up to ~3e-3, issue 20). No pair crosses the direction's
    # first token of a sequence: there d lam is exactly 0 (a one-token sequence gets dA = 0).
    G = tl.where(reach, WDt * CB, 0.0)
    if IS_REV:  # pairs t <= u < s
        dlam = tl.sum(tl.where(s > t, tl.cumsum(G, 0), 0.0), 1) + tl.cumsum(q, 0) \
            + tl.sum(tl.where(s > t, r[None, :], 0.0), 1)
    else:  # pairs s < u <= t
        dlam = tl.sum(tl.where(s < t, tl.cumsum(G, 0, reverse=True), 0.0), 1) \
            + tl.cumsum(q, 0, reverse=True) + tl.sum(tl.where(s < t, r[None, :], 0.0), 1)
    dlam += tl.where(seq_next == seq_prev, tl.exp(L_end) * through, 0.0)
    dA = tl.sum(dtp * dlam, 0)
    ddtp = ddt_in + A * dlam
    return dx, ddtp, dA


@triton.jit
def chunk_scan_bwd_kernel(
    x_ptr, s_xb, s_xl, s_xh, s_xp,
    dy_ptr, s_dyb, s_dyl, s_dyh, s_dyp,        # dy_pre: gradient of the pre-gate output
    dx_ptr, s_dxb, s_dxl, s_dxh, s_dxp,
    Bf_ptr, s_bfb, s_bfl, s_bfg, s_bfn,
    Cf_ptr, s_cfb, s_cfl, s_cfg, s_cfn,
    Br_ptr, s_brb, s_brl, s_brg, s_brn,
    Cr_ptr, s_crb, s_crl, s_crg, s_crn,
    dtf_ptr, s_dtfb, s_dtfl, s_dtfh,
    dtr_ptr, s_dtrb, s_dtrl, s_dtrh,
    Af_ptr, Ar_ptr, bias_ptr, D_ptr, seq_ptr,
    statef_ptr, stater_ptr, adjf_ptr, adjr_ptr,
    ddtf_ptr, ddtr_ptr,                        # (B, L, H) fp32
    dBf_ptr, dBr_ptr, dCf_ptr, dCr_ptr,        # (B, L, H, N) fp32, per head
    dAf_ptr, dAr_ptr,                          # (BH, nchunks) fp32
    dD_ptr,                                    # (BH, nchunks, P) fp32
    L_row, H, heads_per_group, P, N, nchunks,
    HAS_F: tl.constexpr, HAS_R: tl.constexpr, DY_SHIFT_F: tl.constexpr,
    DY_SHIFT_R: tl.constexpr, SHARE_DT: tl.constexpr, SHARE_B: tl.constexpr,
    SHARE_C: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
    D_PER_P: tl.constexpr, HAS_SEQ: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MM_DTYPE: tl.constexpr, PREC: tl.constexpr,
):
    b, h, g, row0, start, end, i, pos, valid, chunk_idx = chunk_coords(L_row, H, heads_per_group,
                                                                       nchunks, Q)
    offs_p = tl.arange(0, BLOCK_P)
    seq, seq_first, seq_last, seq_prev, seq_next = chunk_seq_ids(seq_ptr, pos, valid, start, end,
                                                                 L_row, HAS_SEQ)
    x = load_rows(x_ptr + b * s_xb + row0 * s_xl + h * s_xh, s_xl, s_xp, i, offs_p, P, L_row, pos,
                  seq, seq_ptr, 0, HAS_SEQ)
    dy_base = dy_ptr + b * s_dyb + row0 * s_dyl + h * s_dyh
    state_off = chunk_idx * P * N
    dtp_f, pre_f, dtp_r, pre_r = load_dt_pair(dtf_ptr, s_dtfb, s_dtfl, s_dtfh, dtr_ptr, s_dtrb,
                                              s_dtrl, s_dtrh, bias_ptr, b, row0, h, i, valid,
                                              HAS_BIAS, SOFTPLUS, SHARE_DT)
    dy_f = load_rows(dy_base, s_dyl, s_dyp, i, offs_p, P, L_row, pos, seq, seq_ptr, DY_SHIFT_F,
                     HAS_SEQ)
    if DY_SHIFT_R == DY_SHIFT_F:
        dy_r = dy_f
    else:
        dy_r = load_rows(dy_base, s_dyl, s_dyp, i, offs_p, P, L_row, pos, seq, seq_ptr, DY_SHIFT_R,
                         HAS_SEQ)
    rows = b * L_row + pos  # token index in (B, L)
    dBC_rows = (rows * H + h) * N
    Bf_base = Bf_ptr + b * s_bfb + row0 * s_bfl + g * s_bfg
    Cf_base = Cf_ptr + b * s_cfb + row0 * s_cfl + g * s_cfg
    Br_base = Br_ptr + b * s_brb + row0 * s_brl + g * s_brg
    Cr_base = Cr_ptr + b * s_crb + row0 * s_crl + g * s_crg

    dx = tl.zeros((Q, BLOCK_P), dtype=tl.float32)
    if HAS_F:
        A_f = tl.load(Af_ptr + h).to(tl.float32)
        CB_f = _cb(Cf_base, s_cfl, s_cfn, Bf_base, s_bfl, s_bfn, i, N, L_row, pos, seq, seq_ptr,
                   HAS_SEQ, Q, BLOCK_N, BLOCK_K, MM_DTYPE, PREC)
        DYX_f = mm(dy_f, tl.trans(x), MM_DTYPE, PREC)
        dx_f, ddtp_f, dA_f = _direction_grads(
            x, dy_f, CB_f, DYX_f, dtp_f, dtp_f * A_f, A_f, Bf_base, s_bfl, s_bfn, Cf_base, s_cfl,
            s_cfn, statef_ptr + state_off, adjf_ptr + state_off, offs_p, P, N, L_row, pos, valid,
            seq, seq_ptr, seq_prev, seq_next, i, dBf_ptr + dBC_rows, dCf_ptr + dBC_rows, False,
            False, False, HAS_SEQ, BLOCK_N, BLOCK_K, MM_DTYPE, PREC)
        dx += dx_f
        tl.store(dAf_ptr + chunk_idx, dA_f)
    if HAS_R:
        A_r = tl.load(Ar_ptr + h).to(tl.float32)
        # recomputed even where the forward direction's are the same: keeping two (Q, Q) tiles
        # live through the forward direction made the kernel spill
        CB_r = _cb(Cr_base, s_crl, s_crn, Br_base, s_brl, s_brn, i, N, L_row, pos, seq, seq_ptr,
                   HAS_SEQ, Q, BLOCK_N, BLOCK_K, MM_DTYPE, PREC)
        DYX_r = mm(dy_r, tl.trans(x), MM_DTYPE, PREC)
        # a tensor shared with the forward direction accumulates into its gradient
        dx_r, ddtp_r, dA_r = _direction_grads(
            x, dy_r, CB_r, DYX_r, dtp_r, dtp_r * A_r, A_r, Br_base, s_brl, s_brn, Cr_base, s_crl,
            s_crn, stater_ptr + state_off, adjr_ptr + state_off, offs_p, P, N, L_row, pos, valid,
            seq, seq_ptr, seq_prev, seq_next, i, dBr_ptr + dBC_rows, dCr_ptr + dBC_rows,
            HAS_F and SHARE_B, HAS_F and SHARE_C, True, HAS_SEQ, BLOCK_N, BLOCK_K, MM_DTYPE, PREC)
        dx += dx_r
        tl.store(dAr_ptr + chunk_idx, dA_r)

    # dt, through bias and softplus; a shared dt gets the sum of both directions
    if HAS_F:
        if HAS_R and SHARE_DT:
            ddtp_f += ddtp_r
        if SOFTPLUS:
            ddtp_f = ddtp_f * tl.sigmoid(pre_f)
        tl.store(ddtf_ptr + rows * H + h, ddtp_f, mask=valid)
    if HAS_R:
        if not (HAS_F and SHARE_DT):
            if SOFTPLUS:
                ddtp_r = ddtp_r * tl.sigmoid(pre_r)
            tl.store(ddtr_ptr + rows * H + h, ddtp_r, mask=valid)

    dy0 = load_rows(dy_base, s_dyl, s_dyp, i, offs_p, P, L_row, pos, seq, seq_ptr, 0, HAS_SEQ)
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + h * P + offs_p, mask=offs_p < P, other=0.0).to(tl.float32)
            dx += dy0 * Dv[None, :]
        else:
            dx += dy0 * tl.load(D_ptr + h).to(tl.float32)
        tl.store(dD_ptr + chunk_idx * P + offs_p, tl.sum(dy0 * x, 0), mask=offs_p < P)
    tl.store(dx_ptr + b * s_dxb + row0 * s_dxl + h * s_dxh + i[:, None] * s_dxl
             + offs_p[None, :] * s_dxp, dx.to(dx_ptr.dtype.element_ty),
             mask=valid[:, None] & (offs_p[None, :] < P))
