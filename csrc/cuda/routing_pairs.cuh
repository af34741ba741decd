// The adjacent-token pair of the boundary maths on CUDA (csrc/cuda/routing_boundaries.cu has the
// formulas): sequence starts, the warp-reduced statistics of a pair (q_t, k_s), and p_t. Shared
// by the boundary kernels and the fused boundaries + compaction kernel.
#pragma once

#include "cuda/routing_common.cuh"

namespace mmhnet {
namespace routing_cuda {

constexpr double kNormEps = 1e-12;

// t is the first token of a (non-empty) sequence: the last offset <= t equals t.
__device__ __forceinline__ bool is_sequence_start(const int32_t* cu, int64_t nseq, int64_t t) {
    int64_t lo = 0, hi = nseq;  // cu[lo] <= t < cu[nseq]
    while (hi - lo > 1) {
        int64_t mid = (lo + hi) / 2;
        if (cu[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return cu[lo] == t;
}

// |q_t|^2, |k_s|^2 and q_t . k_s, summed over the warp's lanes (every lane gets the sums).
template <class T>
__device__ __forceinline__ void pair_stats(const T* q, const T* k, int64_t t, int64_t s,
                                           int64_t dim, compute_t<T>& qq, compute_t<T>& kk,
                                           compute_t<T>& qk) {
    using C = compute_t<T>;
    const int lane = threadIdx.x & 31;
    C a = 0, b = 0, c = 0;
#pragma unroll 4
    for (int64_t d = lane; d < dim; d += 32) {
        C qv = to_compute(q[t * dim + d]);
        C kv = to_compute(k[s * dim + d]);
        a += qv * qv;
        b += kv * kv;
        c += qv * kv;
    }
    qq = warp_sum(a);
    kk = warp_sum(b);
    qk = warp_sum(c);
}

// clamp(v, 0, 1) that passes NaN, as torch.clamp does (fmin/fmax, which max/min become on the
// device, return the other operand for a NaN: p would be 0 where q or k is NaN).
template <class C>
__device__ __forceinline__ C clamp_unit(C v) {
    return v < C(0) ? C(0) : (v > C(1) ? C(1) : v);
}

// p_t = clamp((1 - cos(q_t, k_{t-1})) / 2, 0, 1), or 1 at a sequence start; called by a whole
// warp, every lane gets p_t.
template <class T>
__device__ __forceinline__ compute_t<T> boundary_probability(const T* q, const T* k,
                                                             const int32_t* cu, int64_t nseq,
                                                             int64_t t, int64_t dim) {
    using C = compute_t<T>;
    if (is_sequence_start(cu, nseq, t)) return C(1);
    C qq, kk, qk;
    pair_stats(q, k, t, t - 1, dim, qq, kk, qk);
    C cos = qk / (max(sqrt(qq), C(kNormEps)) * max(sqrt(kk), C(kNormEps)));
    return clamp_unit((C(1) - cos) / 2);
}

}  // namespace routing_cuda
}  // namespace mmhnet
