// Boundary probabilities of adjacent tokens (route_boundaries), forward and backward, on CPU.
//
//   cos_t = q_t . k_{t-1} / (nq_t nk_{t-1}),  nq = max(|q|, eps), nk = max(|k|, eps)
//   p_t = clamp((1 - cos_t) / 2, 0, 1), 1 at a sequence's first token;  mask_t = p_t > 0.5
// Backward, with g_t = -dp_t / 2 where the clamp passes (0 <= v <= 1) and t is not a start:
//   dq_t = g_t / (nq_t nk_{t-1}) k_{t-1} - [|q_t| > eps] g_t cos_t / nq_t^2 q_t
//   dk_t = g_{t+1} / (nk_t nq_{t+1}) q_{t+1} - [|k_t| > eps] g_{t+1} cos_{t+1} / nk_t^2 k_t
// The forward keeps the statistics of every token, (|q_t|, |k_t|, q_t . k_{t-1}), 12 bytes a
// token, so the backward reads q and k only to form the gradients, without reducing them again.
// A pair across a sequence start (or past an end) gives no gradient term at all, rather than a 0
// coefficient times the neighbouring sequence's row, which may be NaN (0 * NaN = NaN).
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

// |q_t|, |k_t| and q_t . k_{t-1} (0 for t = 0).
template <class T>
struct RowStats {
    compute_t<T> rq = 0, rk = 0, qk = 0;
};

// (stats: the (T, 3) rows |q_t|, |k_t|, q_t . k_{t-1} kept by the forward)
template <class T>
RowStats<T> saved_stats(const compute_t<T>* stats, int64_t t) {
    return {stats[3 * t], stats[3 * t + 1], stats[3 * t + 2]};
}

template <class T>
compute_t<T> squared_norm(const T* a, int64_t dim) {
    compute_t<T> sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t d = 0; d < dim; ++d) sum += load(a, d) * load(a, d);
    return sum;
}

// |a|^2, |b|^2 and a . b in one pass (vectorised: the reductions may be reassociated).
template <class T>
void pair_dots(const T* a, const T* b, int64_t dim, compute_t<T>& aa, compute_t<T>& bb,
               compute_t<T>& ab) {
    compute_t<T> s_aa = 0, s_bb = 0, s_ab = 0;
#pragma omp simd reduction(+ : s_aa, s_bb, s_ab)
    for (int64_t d = 0; d < dim; ++d) {
        const compute_t<T> x = load(a, d), y = load(b, d);
        s_aa += x * x;
        s_bb += y * y;
        s_ab += x * y;
    }
    aa = s_aa;
    bb = s_bb;
    ab = s_ab;
}

// The pair (q_t, k_{t-1}) gives p_t and the statistics |q_t|, q_t . k_{t-1} of token t and
// |k_{t-1}| of token t-1; |q_0| and |k_{T-1}| belong to no pair and are reduced apart.
template <class T>
void forward(const T* q, const T* k, const int32_t* cu, int64_t nseq, int64_t total, int64_t dim,
             compute_t<T>* p, uint8_t* mask, compute_t<T>* stats) {
    using C = compute_t<T>;
    if (total == 0) return;
    const std::vector<uint8_t> starts = start_flags(cu, nseq, total);
    const C eps = C(kEps);
    stats[0] = std::sqrt(squared_norm(q, dim));
    stats[2] = 0;
    stats[3 * (total - 1) + 1] = std::sqrt(squared_norm(k + (total - 1) * dim, dim));
    p[0] = 1;  // token 0 starts a sequence
    mask[0] = 1;
#pragma omp parallel for schedule(static) if (total * dim >= kMinParallelWork)
    for (int64_t t = 1; t < total; ++t) {
        C qq, kk, qk;
        pair_dots(q + t * dim, k + (t - 1) * dim, dim, qq, kk, qk);
        const C rq = std::sqrt(qq), rk_prev = std::sqrt(kk);
        stats[3 * t] = rq;
        stats[3 * (t - 1) + 1] = rk_prev;
        stats[3 * t + 2] = qk;
        C pt = 1;
        if (!starts[t]) {
            const C cos = qk / (std::max(rq, eps) * std::max(rk_prev, eps));
            pt = std::min<C>(std::max<C>((1 - cos) / 2, 0), 1);
        }
        p[t] = pt;
        mask[t] = pt > C(0.5);
    }
}

// One pass over q and k, with the statistics the forward kept.
template <class T>
void backward(const compute_t<T>* dp, const T* q, const T* k, const int32_t* cu, int64_t nseq,
              int64_t total, int64_t dim, const compute_t<T>* stats, T* dq, T* dk) {
    using C = compute_t<T>;
    const std::vector<uint8_t> starts = start_flags(cu, nseq, total);
    const C eps = C(kEps);
    // whether the pair (t, t-1) exists (t - 1 in t's sequence), and its cos and g (0 if not)
    auto pair = [&](int64_t t, const RowStats<T>& st, C rk_prev, C& cos, C& g) {
        cos = 0;
        g = 0;
        if (t <= 0 || t >= total || starts[t]) return false;
        cos = st.qk / (std::max(st.rq, eps) * std::max(rk_prev, eps));
        const C v = (1 - cos) / 2;
        if (v >= 0 && v <= 1) g = -dp[t] / 2;
        return true;
    };
    const bool stream = streams(total * dim * static_cast<int64_t>(sizeof(T)));
    parallel_ranges(total, total * dim, [&](int64_t lo, int64_t hi) {
        RowOutput<T> out_q(stream), out_k(stream);
        auto stats_of = [&](int64_t t) {
            return t >= 0 && t < total ? saved_stats<T>(stats, t) : RowStats<T>{};
        };
        RowStats<T> prev = stats_of(lo - 1);
        RowStats<T> cur = stats_of(lo);
        for (int64_t t = lo; t < hi; ++t) {
            const RowStats<T> next = stats_of(t + 1);
            C cos0, g0, cos1, g1;
            const bool has0 = pair(t, cur, prev.rk, cos0, g0);
            const bool has1 = pair(t + 1, next, cur.rk, cos1, g1);
            const C nq = std::max(cur.rq, eps), nk = std::max(cur.rk, eps);
            const T* qt = q + t * dim;
            const T* kt = k + t * dim;
            // dq_t = a0 k_{t-1} - b0 q_t from the pair (t, t-1); dk_t = a1 q_{t+1} - b1 k_t
            // from (t+1, t); exactly 0 where the pair does not exist
            auto write_grad = [&](RowOutput<T>& out, T* dst, bool has, C a, C b, const T* other,
                                  const T* own) {
                out.write(dst, dim, [&](T* o, int64_t d0, int64_t m) {
                    if (!has) {
                        for (int64_t j = 0; j < m; ++j) store(o, j, C(0));
                        return;
                    }
#pragma omp simd
                    for (int64_t j = 0; j < m; ++j)
                        store(o, j, a * load(other, d0 + j) - b * load(own, d0 + j));
                });
            };
            write_grad(out_q, dq + t * dim, has0, g0 / (nq * std::max(prev.rk, eps)),
                       cur.rq > eps ? g0 * cos0 / (nq * nq) : C(0), has0 ? kt - dim : kt, qt);
            write_grad(out_k, dk + t * dim, has1, g1 / (nk * std::max(next.rq, eps)),
                       cur.rk > eps ? g1 * cos1 / (nk * nk) : C(0), has1 ? qt + dim : qt, kt);
            prev = cur;
            cur = next;
        }
    });
}

}  // namespace

void boundaries_forward(uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq, int64_t total,
                        int64_t dim, int dtype, uintptr_t p, uintptr_t mask, uintptr_t stats) {
    dispatch(dtype, "routing_boundaries", [&](auto tag) {
        using T = decltype(tag);
        forward<T>(ptr<const T>(q), ptr<const T>(k), ptr<const int32_t>(cu), nseq, total, dim,
                   ptr<compute_t<T>>(p), ptr<uint8_t>(mask), ptr<compute_t<T>>(stats));
    });
}

void boundaries_backward(uintptr_t dp, uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq,
                         int64_t total, int64_t dim, int dtype, uintptr_t stats, uintptr_t dq,
                         uintptr_t dk) {
    dispatch(dtype, "routing_boundaries_bwd", [&](auto tag) {
        using T = decltype(tag);
        advise_huge_pages(dq, total * dim * static_cast<int64_t>(sizeof(T)));
        advise_huge_pages(dk, total * dim * static_cast<int64_t>(sizeof(T)));
        backward<T>(ptr<const compute_t<T>>(dp), ptr<const T>(q), ptr<const T>(k),
                    ptr<const int32_t>(cu), nseq, total, dim, ptr<const compute_t<T>>(stats),
                    ptr<T>(dq), ptr<T>(dk));
    });
}

}  // namespace routing
}  // namespace mmhnet
