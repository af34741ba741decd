// Fused boundary kernel on CUDA: one warp per token normalises q_t and k_{t-1}, takes their
// cosine, and writes p_t and mask_t in one pass; and its backward. Maths as in
// csrc/cpu/routing_boundaries.cpp:
//   cos_t = q_t . k_{t-1} / (nq_t nk_{t-1}),  nq = max(|q|, eps),  p_t = clamp((1 - cos_t)/2, 0, 1)
//   p_t = 1 at a sequence's first token,  mask_t = p_t > 0.5
//   dq_t = g_t / (nq_t nk_{t-1}) k_{t-1} - [|q_t| > eps] g_t cos_t / nq_t^2 q_t
//   dk_t = g_{t+1} / (nk_t nq_{t+1}) q_{t+1} - [|k_t| > eps] g_{t+1} cos_{t+1} / nk_t^2 k_t
// with g_t = -dp_t / 2 where the clamp passes and t is not a sequence start, else 0. A pair
// across a sequence start (or past an end) adds no term at all: a 0 coefficient times the other
// sequence's row would be NaN where that row is (0 * NaN), and NaN stays in its sequence.
#include "cuda/routing_kernels.h"
#include "cuda/routing_pairs.cuh"

namespace mmhnet {
namespace routing_cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

template <class T>
__global__ void boundaries_fwd_kernel(const T* q, const T* k, const int32_t* cu, int64_t nseq,
                                      int64_t total, int64_t dim, compute_t<T>* p, bool* mask) {
    using C = compute_t<T>;
    const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (t >= total) return;
    const C pt = boundary_probability(q, k, cu, nseq, t, dim);
    if ((threadIdx.x & 31) == 0) {
        p[t] = pt;
        mask[t] = pt > C(0.5);
    }
}

// For a pair (t, t-1) that does not cross a sequence start: cos, g, nq_t, nk_{t-1} and whether
// |q_t| > eps.
template <class C>
__device__ void pair_grad(C qq, C kk, C qk, C dp, C& cos, C& g, C& nq, C& nk, bool& q_big) {
    C rq = sqrt(qq);
    nq = max(rq, C(kNormEps));
    nk = max(sqrt(kk), C(kNormEps));
    q_big = rq > C(kNormEps);
    cos = qk / (nq * nk);
    C v = (C(1) - cos) / 2;
    g = (v >= C(0) && v <= C(1)) ? -dp / 2 : C(0);
}

template <class T>
__global__ void boundaries_bwd_kernel(const compute_t<T>* dp, const T* q, const T* k,
                                      const int32_t* cu, int64_t nseq, int64_t total, int64_t dim,
                                      T* dq, T* dk) {
    using C = compute_t<T>;
    const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (t >= total) return;
    C a0 = 0, b0 = 0, a1 = 0, b1 = 0;
    const bool has0 = t > 0 && !is_sequence_start(cu, nseq, t);
    const bool has1 = t + 1 < total && !is_sequence_start(cu, nseq, t + 1);
    if (has0) {
        C qq, kk, qk, cos, g, nq, nk;
        bool q_big;
        pair_stats(q, k, t, t - 1, dim, qq, kk, qk);
        pair_grad(qq, kk, qk, dp[t], cos, g, nq, nk, q_big);
        a0 = g / (nq * nk);
        b0 = q_big ? g * cos / (nq * nq) : C(0);
    }
    if (has1) {
        C qq, kk, qk, cos, g, nq, nk;
        bool q_big;
        pair_stats(q, k, t + 1, t, dim, qq, kk, qk);
        pair_grad(qq, kk, qk, dp[t + 1], cos, g, nq, nk, q_big);
        // here nk is |k_t| and nq is |q_{t+1}|
        a1 = g / (nk * nq);
        b1 = sqrt(kk) > C(kNormEps) ? g * cos / (nk * nk) : C(0);
    }
    const int lane = threadIdx.x & 31;
    for (int64_t d = lane; d < dim; d += 32) {
        store_as(dq, t * dim + d,
                 has0 ? a0 * to_compute(k[(t - 1) * dim + d]) - b0 * to_compute(q[t * dim + d])
                      : C(0));
        store_as(dk, t * dim + d,
                 has1 ? a1 * to_compute(q[(t + 1) * dim + d]) - b1 * to_compute(k[t * dim + d])
                      : C(0));
    }
}

}  // namespace

void boundaries_forward(uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq, int64_t total,
                        int64_t dim, int dtype, uintptr_t p, uintptr_t mask, uintptr_t stream) {
    if (total == 0) return;
    dispatch(dtype, "routing_boundaries", [&](auto tag) {
        using T = decltype(tag);
        dim3 grid(static_cast<unsigned>(ceil_div(total, kWarpsPerBlock)));
        boundaries_fwd_kernel<T><<<grid, kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
            ptr<const T>(q), ptr<const T>(k), ptr<const int32_t>(cu), nseq, total, dim,
            ptr<compute_t<T>>(p), ptr<bool>(mask));
    });
    check_launch("routing_boundaries");
}

void boundaries_backward(uintptr_t dp, uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq,
                         int64_t total, int64_t dim, int dtype, uintptr_t dq, uintptr_t dk,
                         uintptr_t stream) {
    if (total == 0) return;
    dispatch(dtype, "routing_boundaries_bwd", [&](auto tag) {
        using T = decltype(tag);
        dim3 grid(static_cast<unsigned>(ceil_div(total, kWarpsPerBlock)));
        boundaries_bwd_kernel<T><<<grid, kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
            ptr<const compute_t<T>>(dp), ptr<const T>(q), ptr<const T>(k),
            ptr<const int32_t>(cu), nseq, total, dim, ptr<T>(dq), ptr<T>(dk));
    });
    check_launch("routing_boundaries_bwd");
}

}  // namespace routing_cuda
}  // namespace mmhnet
