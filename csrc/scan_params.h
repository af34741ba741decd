// Parameters of one call of the fused (bi)directional selective scan, shared by the CPU
// (csrc/cpu/scan_*.cpp) and CUDA (csrc/cuda/scan_*.cu) kernels. No torch: Python hands over raw
// pointers, sizes and element strides (int64, so tensors past 2^31 elements index correctly).
//
// Maths (docs/DESIGN.md, Op 1). Per sequence, head h, direction d, in the direction's
// processing order k (time order for the forward direction, reversed for the reverse one):
//     h_k = a_k h_{k-1} + u_k (x) B_k,   a_k = exp(dt'_k A_d),   u_k = dt'_k x_k,   yhat_k = C_k . h_k
// y_t = sum_d yhat_d(t or, quasi, the previous token in d's order) + D x_t, then y * silu(z).
//
// Every pass of forward and backward is the same "rank-1 scan" over a state S[i][j]:
//     S_k = a_k S_{k-1} + v_k (x) b_k,   out_k[i] = sum_j c_k[j] S_k[i][j]
// forward  F_p: i = p, j = n:  v = u,             b = B, c = C      -> yhat
// backward F_n: i = n, j = p:  v = B,             b = u, c = gyhat  -> dC
//          R_n: i = n, j = p:  v = C,             b = gyhat, c = u  -> dB   (adjoint, reversed order)
//          R_p: i = p, j = n:  v = gyhat,         b = C, c = B      -> du = dx / dt'
// where the adjoint runs over the reversed processing order with decays shifted by one
// (dS_k = a_{k+1} dS_{k+1} + C_k (x) gyhat_k). The gradient of the log-decays needs no state:
//     g(log a_k) = sum_{k' >= k} (C_k'.dC_k' - B_k'.dB_k')  =  a_k <dS_k, S_{k-1}>,
// so the backward recomputes nothing but these four scans. The sum telescopes: its terms do not
// shrink with g(log a_k), so their rounding errors add up along the sequence, and dA and dt_bias
// (sums of g(log a) over all tokens) would lose precision in proportion to the length. Each
// step's own term (C_k.B_k)(u_k.gyhat_k) enters C_k.dC_k and B_k.dB_k alike and cancels: the
// F_n and R_n passes output dC and dB without it ("exclusive": from a_k S_{k-1}, not S_k) for
// the terms, then add it, as under strong decay it dwarfs g(log a_k) (which holds a_k) and its
// rounding did too (issue 20). At "anchors" (every 64 steps on CPU, fewer under strong decay;
// max(64, 4 * dstate) on CUDA) the sum is made exact from the inner product on the right, which
// the F_n and R_n passes' states give there (the F_n pass saves its state for the R_n pass), and
// at k = 0 it is 0; the drift between two exact points is taken off linearly
// (log_decay_sweep.h).
//
// dtypes: the "big" tensors (x, z, B, C, B_rev, C_rev, y, dy, dx, dz) have the storage dtype
// `dtype`; the compute dtype is float64 for float64 storage and float32 otherwise (the state is
// never kept in half precision). dt, dt_rev, A, A_rev, D, dt_bias and every other gradient
// output (ddt, ddt_rev, the partial sums and per-head dB/dC) have the compute dtype.
//
// Gradients the kernels cannot finish without a cross-task reduction come back as partial
// sums that Python reduces (deterministically, independent of the thread count):
//     dA_part, dA_rev_part (batch * nseq, nheads);  dD_part (batch * nseq, nheads, headdim);
//     dB_heads, dC_heads, dB_rev_heads, dC_rev_heads (batch, seqlen, nheads, dstate): per-head
//     gradients, summed over the heads of a group in Python (they ARE dB/dC when
//     ngroups == nheads). A reverse-direction gradient whose parameter is shared with the
//     forward direction is accumulated into the forward one.
//
// Implementations.
// CPU (csrc/cpu, cpu_*.h): OpenMP over units of adjacent heads of one sequence, which advance
// in blocks of 64 steps together (a token's rows of all their heads are adjacent in memory);
// both directions run inside a unit, sharing dt', the decays and the gathered B/C rows. The
// rank-1 scan keeps a 16-column tile of the state in vector registers across the steps of a
// block and stores the state divided by the running decay (cpu_scan_schedule.h), two FMAs per
// state element and step; each block prefetches the rows of the next one, spread over its
// steps. Results are bitwise independent of the thread count.
// CUDA (csrc/cuda): one block per (task, direction), one thread per state row i holding its J
// entries in registers (J <= 256), the b/c rows staged in shared memory; the forward runs both
// directions in one launch into ws_yhat, then one elementwise kernel writes y. The backward
// runs the passes direction by direction, then a per-task sweep for ddt/dA. Deterministic.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MMHNET_HOST_DEVICE __host__ __device__
#else
#define MMHNET_HOST_DEVICE
#endif

namespace mmhnet {

enum ScanDirections : int { kScanForward = 1, kScanReverse = 2, kScanBoth = 3 };

enum class ScanDtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// One tensor operand: its data pointer (nullptr: absent) and element strides, outermost first.
struct ScanTensor {
    void* ptr = nullptr;
    int64_t stride[4] = {0, 0, 0, 0};

    MMHNET_HOST_DEVICE bool present() const { return ptr != nullptr; }
};

struct ScanParams {
    // sizes
    int64_t batch = 0, seqlen = 0, nheads = 0, headdim = 0, ngroups = 0, dstate = 0;
    int64_t nseq = 1;  // number of packed sequences (1 without cu_seqlens)

    // flags
    ScanDtype dtype = ScanDtype::kFloat32;
    int directions = kScanBoth;
    bool quasi = false;
    bool dt_softplus = false;
    bool d_per_channel = false;  // D has shape (nheads, headdim) rather than (nheads,)

    // forward inputs: x, z (b, l, h, p); dt, dt_rev (b, l, h); A, A_rev, dt_bias (h,);
    // D (h,) or (h, p); B, C, B_rev, C_rev (b, l, g, n). A reverse parameter that is absent
    // means "the forward one".
    ScanTensor x, dt, A, B, C, D, z, dt_bias, dt_rev, A_rev, B_rev, C_rev;
    const int32_t* cu_seqlens = nullptr;  // (nseq + 1,) packed offsets, batch == 1; may be null

    // forward output (b, l, h, p)
    ScanTensor y;

    // backward: the upstream gradient and the outputs described above
    ScanTensor dy;
    ScanTensor dx, dz, ddt, ddt_rev;
    ScanTensor dA_part, dA_rev_part, dD_part;
    ScanTensor dB_heads, dC_heads, dB_rev_heads, dC_rev_heads;

    // CUDA scratch, compute dtype, contiguous, allocated by the caller (1-D, flat):
    // ws_yhat (ndirs, b, l, h, p) per-direction outputs (forward, and the backward with z);
    // ws_gyp (b, l, h, p) the output gradient before the combination; ws_dx (b, l, h, p) dx
    // accumulated in the compute dtype (half storage only); ws_dlog, ws_xgu (ndirs, b, l, h),
    // ws_dlog zeroed when dstate is 0; ws_anchor_state (anchor_slots(), h, n, p) the F_n state
    // before each anchor step, ws_anchor_glog (ndirs, anchor_slots(), h) g(log a) there.
    ScanTensor ws_yhat, ws_gyp, ws_dx, ws_dlog, ws_xgu, ws_anchor_state, ws_anchor_glog;

    MMHNET_HOST_DEVICE int64_t group_of(int64_t head) const { return head / (nheads / ngroups); }
    MMHNET_HOST_DEVICE int64_t ntasks() const { return batch * nseq * nheads; }

    // CUDA backward anchors: at processing steps anchor_steps(), 2 anchor_steps(), ... of each
    // sequence; at least 4 * dstate steps apart, so the saved float32 states take at most one
    // byte per element of x. A sequence whose first token is the flat token F = b * seqlen +
    // begin uses the slots F / anchor_steps() + 0, 1, ...: never those of the next sequence,
    // which starts at F + len.
    MMHNET_HOST_DEVICE int64_t anchor_steps() const { return dstate * 4 > 64 ? dstate * 4 : 64; }
    MMHNET_HOST_DEVICE int64_t anchor_slots() const { return batch * seqlen / anchor_steps() + 1; }
};

}  // namespace mmhnet
