// Boundary probabilities of adjacent tokens (route_boundaries), forward and backward, on CPU.
//
//   cos_t = q_t . k_{t-1} / (nq_t nk_{t-1}),  nq = max(|q|, eps), nk = max(|k|, eps)
//   p_t = clamp((1 - cos_t) / 2, 0, 1), 1 at a sequence's first token;  mask_t = p_t > 0.5
// Backward, with g_t = -dp_t / 2 where the clamp passes (0 <= v <= 1) and t is not a start:
//   dq_t = g_t / (nq_t nk_{t-1}) k_{t-1} - [|q_t| > eps] g_t cos_t / nq_t^2 q_t
//   dk_t = g_{t+1} / (nk_t nq_{t+1}) q_{t+1} - [|k_t| > eps] g_{t+1} cos_{t+1} / nk_t^2 k_t
#include <algorithm>
#include <vector>

#include "cpu/routing_common.h"
#include "cpu/routing_kernels.h"

namespace mmhnet {
namespace routing {
namespace {

constexpr double kEps = 1e-12;

std::vector<uint8_t> start_flags(const int32_t* cu, int64_t nseq, int64_t total) {
    std::vector<uint8_t> starts(static_cast<size_t>(total), 0);
    for (int64_t s = 0; s < nseq; ++s)
        if (cu[s] < cu[s + 1]) starts[cu[s]] = 1;
    return starts;
}

template <class T>
compute_t<T> dot(const T* a, const T* b, int64_t dim) {
    compute_t<T> acc = 0;
    for (int64_t d = 0; d < dim; ++d) acc += load(a, d) * load(b, d);
    return acc;
}

template <class T>
void forward(const T* q, const T* k, const int32_t* cu, int64_t nseq, int64_t total, int64_t dim,
             compute_t<T>* p, uint8_t* mask) {
    using C = compute_t<T>;
    std::vector<uint8_t> starts = start_flags(cu, nseq, total);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < total; ++t) {
        C pt = 1;
        if (!starts[t]) {
            const T* qt = q + t * dim;
            const T* kp = k + (t - 1) * dim;
            C nq = std::max<C>(std::sqrt(dot(qt, qt, dim)), C(kEps));
            C nk = std::max<C>(std::sqrt(dot(kp, kp, dim)), C(kEps));
            C cos = dot(qt, kp, dim) / (nq * nk);
            pt = std::min<C>(std::max<C>((1 - cos) / 2, 0), 1);
        }
        p[t] = pt;
        mask[t] = pt > C(0.5);
    }
}

template <class T>
void backward(const compute_t<T>* dp, const T* q, const T* k, const int32_t* cu, int64_t nseq,
              int64_t total, int64_t dim, T* dq, T* dk) {
    using C = compute_t<T>;
    std::vector<uint8_t> starts = start_flags(cu, nseq, total);
    std::vector<C> rq(total), rk(total), cos(total, 0), g(total, 0);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < total; ++t) {
        rq[t] = std::sqrt(dot(q + t * dim, q + t * dim, dim));
        rk[t] = std::sqrt(dot(k + t * dim, k + t * dim, dim));
    }
#pragma omp parallel for schedule(static)
    for (int64_t t = 1; t < total; ++t) {
        if (starts[t]) continue;
        C nq = std::max<C>(rq[t], C(kEps)), nk = std::max<C>(rk[t - 1], C(kEps));
        cos[t] = dot(q + t * dim, k + (t - 1) * dim, dim) / (nq * nk);
        C v = (1 - cos[t]) / 2;
        g[t] = (v >= 0 && v <= 1) ? -dp[t] / 2 : C(0);
    }
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < total; ++t) {
        C nq = std::max<C>(rq[t], C(kEps)), nk = std::max<C>(rk[t], C(kEps));
        C a0 = 0, b0 = 0, a1 = 0, b1 = 0;
        if (t > 0 && g[t] != 0) {
            a0 = g[t] / (nq * std::max<C>(rk[t - 1], C(kEps)));
            b0 = rq[t] > C(kEps) ? g[t] * cos[t] / (nq * nq) : C(0);
        }
        if (t + 1 < total && g[t + 1] != 0) {
            a1 = g[t + 1] / (nk * std::max<C>(rq[t + 1], C(kEps)));
            b1 = rk[t] > C(kEps) ? g[t + 1] * cos[t + 1] / (nk * nk) : C(0);
        }
        const T* qt = q + t * dim;
        const T* kt = k + t * dim;
        for (int64_t d = 0; d < dim; ++d) {
            C kprev = t > 0 ? load(k + (t - 1) * dim, d) : C(0);
            C qnext = t + 1 < total ? load(q + (t + 1) * dim, d) : C(0);
            store(dq + t * dim, d, a0 * kprev - b0 * load(qt, d));
            store(dk + t * dim, d, a1 * qnext - b1 * load(kt, d));
        }
    }
}

}  // namespace

void boundaries_forward(uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq, int64_t total,
                        int64_t dim, int dtype, uintptr_t p, uintptr_t mask) {
    dispatch(dtype, "routing_boundaries", [&](auto tag) {
        using T = decltype(tag);
        forward<T>(ptr<const T>(q), ptr<const T>(k), ptr<const int32_t>(cu), nseq, total, dim,
                   ptr<compute_t<T>>(p), ptr<uint8_t>(mask));
    });
}

void boundaries_backward(uintptr_t dp, uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq,
                         int64_t total, int64_t dim, int dtype, uintptr_t dq, uintptr_t dk) {
    dispatch(dtype, "routing_boundaries_bwd", [&](auto tag) {
        using T = decltype(tag);
        backward<T>(ptr<const compute_t<T>>(dp), ptr<const T>(q), ptr<const T>(k),
                    ptr<const int32_t>(cu), nseq, total, dim, ptr<T>(dq), ptr<T>(dk));
    });
}

}  // namespace routing
}  // namespace mmhnet
