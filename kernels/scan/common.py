"""@triton.jit helpers shared by the chunked bidirectional scan kernels.

Notation (one head, one chunk of Q tokens, DESIGN.md Op 1):
    dt'_t  effective step (bias, softplus), 0 outside the row
    lam_t  = dt'_t A               log-decay of token t (<= 0)
    L_t    = sum_{u<=t} lam_u      chunk-local inclusive cumulative log-decay (a non-finite
                                   lam only reaches its own sequence, see seq_cumsum)
    Lex_t  = L_t - lam_t           chunk-local exclusive cumulative log-decay
    L_end  = sum over the chunk
Forward direction:  weight of token s in h_t is exp(L_t - L_s)       (s <= t)
Reverse direction:  weight of token s in r_t is exp(Lex_s - Lex_t)   (s >= t)

Sequences (cu_seqlens) are handled with per-token sequence ids ``seq``: two tokens interact only
when their ids are equal; states entering a chunk belong to the token just outside it.

NaN isolation (DESIGN.md): a NaN or inf of one sequence never reaches another's outputs or
gradients. So nothing of another sequence is ever multiplied by a 0 weight (0 * NaN = NaN):
weights are selected with where, operands of a product over the chunk's tokens are zeroed
outside the tokens that may interact (mm_tokens), row-local products with a state from a
neighbouring chunk are selected per row, and state passing selects the local state at a
sequence start instead of multiplying the carry by 0.
"""

import os

import triton
import triton.language as tl

# Under TRITON_INTERPRET=1 (read when the kernels are defined, as triton.jit does) the matmul
# operands are rounded in fp32 bit arithmetic: the interpreter's own fp32 -> bf16 cast rounds
# toward zero and its tl.dot multiplies bf16 operands' raw bit patterns. False when compiling,
# so the GPU code is unchanged.
EMULATE_ROUNDING = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def softplus(v):
    """softplus as torch computes it (threshold 20), accurate for very negative v."""
    e = tl.exp(-tl.abs(v))
    log1p_e = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
    return tl.where(v > 20.0, v, tl.maximum(v, 0.0) + log1p_e)


@triton.jit
def load_dt(dt_base, stride_l, i, valid, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Returns (dt', pre) for one chunk: pre = dt + bias (the softplus argument), dt' = 0
    outside the row."""
    pre = tl.load(dt_base + i * stride_l, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        pre = pre + bias
    if SOFTPLUS:
        dtp = softplus(pre)
    else:
        dtp = pre
    return tl.where(valid, dtp, 0.0), pre


@triton.jit
def chunk_coords(L_row, H, heads_per_group, nchunks, Q: tl.constexpr):
    """Where the program of grid (chunk, head, batch) works: batch b (int64), head h, group g,
    first row row0 (int64), first/last token start/end, in-chunk index i (Q,), token pos (Q,),
    pos < L_row, and the (batch*head, chunk) index into the per-chunk buffers (int64).
    (Heads and batch on grid axes 1 and 2, each limited to 65535 on a GPU; chunks on axis 0.)"""
    pid_c = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    start = pid_c * Q
    i = tl.arange(0, Q)
    pos = start + i
    return (b, h, h // heads_per_group, start.to(tl.int64), start,
            tl.minimum(start + Q, L_row) - 1, i, pos, pos < L_row,
            (b * H + h) * nchunks + pid_c)


@triton.jit
def load_dt_pair(dtf_ptr, s_dtfb, s_dtfl, s_dtfh, dtr_ptr, s_dtrb, s_dtrl, s_dtrh, bias_ptr, b,
                 row0, h, i, valid, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                 SHARE_DT: tl.constexpr):
    """(dt', softplus argument) of the chunk for the forward and the reverse direction."""
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h).to(tl.float32)
    dtp_f, pre_f = load_dt(dtf_ptr + b * s_dtfb + row0 * s_dtfl + h * s_dtfh, s_dtfl, i, valid,
                           bias, HAS_BIAS, SOFTPLUS)
    if SHARE_DT:
        dtp_r = dtp_f
        pre_r = pre_f
    else:
        dtp_r, pre_r = load_dt(dtr_ptr + b * s_dtrb + row0 * s_dtrl + h * s_dtrh, s_dtrl, i, valid,
                               bias, HAS_BIAS, SOFTPLUS)
    return dtp_f, pre_f, dtp_r, pre_r


@triton.jit
def load_rows(base, stride_l, stride_d, i, offs_d, D_SIZE, L_row, pos, seq, seq_ptr,
              SHIFT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """(Q, BLOCK_D) fp32 tile of rows t + SHIFT (SHIFT in {-1, 0, 1}) of a chunk; a row is 0
    where t + SHIFT leaves the row or the sequence of t."""
    src = pos + SHIFT
    ok = (pos < L_row) & (src >= 0) & (src < L_row)
    if SHIFT != 0:
        if HAS_SEQ:
            seq_src = tl.load(seq_ptr + src, mask=ok, other=-5)
            ok = ok & (seq_src == seq)
    ptrs = base + (i + SHIFT)[:, None] * stride_l + offs_d[None, :] * stride_d
    return tl.load(ptrs, mask=ok[:, None] & (offs_d[None, :] < D_SIZE), other=0.0).to(tl.float32)


@triton.jit
def chunk_seq_ids(seq_ptr, pos, valid, start, end, L_row, HAS_SEQ: tl.constexpr):
    """Sequence ids of the chunk's tokens (-1 outside the row) and of the tokens at the chunk's
    edges: first, last, the one before (-2 if none) and the one after (-3 if none)."""
    if HAS_SEQ:
        seq = tl.load(seq_ptr + pos, mask=valid, other=-1)
        seq_first = tl.load(seq_ptr + start)
        seq_last = tl.load(seq_ptr + end)
        seq_prev = tl.load(seq_ptr + start - 1, mask=start > 0, other=-2)
        seq_next = tl.load(seq_ptr + end + 1, mask=end + 1 < L_row, other=-3)
    else:
        seq = tl.where(valid, 0, -1)
        seq_first = start * 0
        seq_last = start * 0
        seq_prev = tl.where(start > 0, 0, -2)
        seq_next = tl.where(end + 1 < L_row, 0, -3)
    return seq, seq_first, seq_last, seq_prev, seq_next


@triton.jit
def round_like_gpu(a, DTYPE: tl.constexpr):
    """a (fp32) rounded to DTYPE (bf16 or fp16) to nearest, ties to even, as a GPU converts,
    and widened back to fp32; NaN and Inf kept. bf16 by rounding the fp32 bit pattern (bit 16
    is the kept part's last bit), fp16 by the interpreter's own (numpy) conversion."""
    a = a.to(tl.float32)
    if DTYPE == tl.bfloat16:
        bits = a.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        out = tl.where(a == a, bits.to(tl.float32, bitcast=True), a)  # a NaN's carry would wrap
    else:
        out = a.to(DTYPE).to(tl.float32)
    return out


@triton.jit
def mm(a, b, MM_DTYPE: tl.constexpr, PREC: tl.constexpr):
    """a @ b with fp32 accumulation; operands cast to MM_DTYPE (the input dtype on GPU).
    Under the interpreter 16-bit operands are rounded as a GPU rounds them and multiplied in
    fp32: exact products of 16-bit values, fp32 accumulation, as tensor cores give."""
    if EMULATE_ROUNDING and MM_DTYPE != tl.float32:
        out = tl.dot(round_like_gpu(a, MM_DTYPE), round_like_gpu(b, MM_DTYPE),
                     input_precision="ieee", out_dtype=tl.float32)
    else:
        out = tl.dot(a.to(MM_DTYPE), b.to(MM_DTYPE), input_precision=PREC, out_dtype=tl.float32)
    return out


@triton.jit
def load_state(ptr, offs_p, offs_n, P, N):
    """(BLOCK_P, BLOCK_N) tile of a contiguous (P, N) fp32 state."""
    return tl.load(ptr + offs_p[:, None] * N + offs_n[None, :],
                   mask=(offs_p[:, None] < P) & (offs_n[None, :] < N), other=0.0)


@triton.jit
def seq_cumsum(lam, seq, seq_last, i, HAS_SEQ: tl.constexpr):
    """(L, L_end) of a chunk's log-decays lam (Q,): the inclusive cumulative sum and the sum over
    the chunk; in-sequence decays are differences of them. With packed sequences a
    non-finite lam (NaN, inf) enters the sums as 0 and makes L NaN from its token on in its own
    sequence only (L_end too if that is the last), so it never reaches another sequence through
    a difference. Finite inputs give the plain chunk cumsum's values, bit for bit; the masked
    (Q, Q) sum runs only in a chunk holding a non-finite decay."""
    if HAS_SEQ:
        finite = tl.abs(lam) < float("inf")  # False for NaN too
        L = tl.cumsum(tl.where(finite, lam, 0.0), 0)
        L_end = tl.sum(tl.where(finite, lam, 0.0), 0)
        if tl.sum(tl.where(finite, 0, 1), 0) > 0:
            reach = (i[None, :] <= i[:, None]) & (seq[None, :] == seq[:, None])
            hits = tl.sum(tl.where(reach & ~finite[None, :], 1, 0), 1)
            L = tl.where(hits > 0, float("nan"), L)
            L_end = tl.where(tl.sum(tl.where((seq == seq_last) & ~finite, 1, 0), 0) > 0,
                             float("nan"), L_end)
    else:
        L = tl.cumsum(lam, 0)
        L_end = tl.sum(lam, 0)
    return L, L_end


@triton.jit
def mm_tokens(M, X, reach, MM_DTYPE: tl.constexpr, PREC: tl.constexpr):
    """M @ X over the chunk's tokens: M (Q, Q) with M[t, s] = 0 wherever reach[t, s] is False
    (the caller selects it so), X (Q, K) one row per token. A NaN or inf in X[s] reaches out[t]
    only where reach[t, s], as in the sequential scan, never through 0 * NaN: non-finite values
    enter the product as 0, and a tile holding any (a path only such tiles take) marks the
    outputs they reach NaN."""
    finite = tl.abs(X) < float("inf")  # False for NaN too
    out = mm(M, tl.where(finite, X, 0.0), MM_DTYPE, PREC)
    if tl.sum(tl.sum(tl.where(finite, 0, 1), 1), 0) > 0:
        hits = mm(tl.where(reach, 1.0, 0.0), tl.where(finite, 0.0, 1.0), MM_DTYPE, PREC)
        out = tl.where(hits > 0.0, float("nan"), out)
    return out
