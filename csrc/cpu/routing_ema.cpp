// EMA over the chunks of each sequence (ema_smooth), forward and backward, on CPU.
//
//   e_c = p_c z_c + a_c e_{c-1},  r_c = p_c z_c + a_c r_{c+1},  a = 1 - p;  out = e or (e + r)/2
// Backward (de = dout, or de = dr = dout / 2 when bidirectional):
//   G_c = de_c + a_{c+1} G_{c+1},  H_c = dr_c + a_{c-1} H_{c-1}
//   dz_c = p_c (G_c + H_c),  dp_c = sum_d G_c (z_c - e_{c-1}) + H_c (z_c - r_{c+1})
// One task per (sequence, block of columns) walks its chunks in order; dp is reduced over the
// column blocks in a fixed order afterwards, so results do not depend on the thread count.
#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu/routing_common.h"
#include "cpu/routing_kernels.h"

namespace mmhnet {
namespace routing {
namespace {

constexpr int64_t kColumnBlock = 64;

// A (C, D) compute-type buffer: `reuse` itself when the storage type is the compute type (the
// caller's output, about to be overwritten), else uninitialised scratch held in `holder`.
template <class T>
compute_t<T>* scratch_or(T* reuse, int64_t size, std::unique_ptr<compute_t<T>[]>& holder) {
    if constexpr (std::is_same_v<T, compute_t<T>>) {
        return reuse;
    } else {
        holder.reset(new compute_t<T>[static_cast<size_t>(size)]);
        advise_huge_pages(reinterpret_cast<uintptr_t>(holder.get()),
                          size * static_cast<int64_t>(sizeof(compute_t<T>)));
        return holder.get();
    }
}

template <class T, bool bidirectional>
void forward(const T* z, const compute_t<T>* p, const int32_t* cu, int64_t nseq,
             int64_t num_chunks, int64_t dim, T* out) {
    using C = compute_t<T>;
    const int64_t col_blocks = (dim + kColumnBlock - 1) / kColumnBlock;
    // the forward sweep's e, read back (and overwritten in place) by the reverse sweep
    std::unique_ptr<C[]> holder;
    C* e_all = bidirectional ? scratch_or(out, num_chunks * dim, holder) : nullptr;
#pragma omp parallel for collapse(2) schedule(dynamic) if (num_chunks * dim >= kMinParallelWork)
    for (int64_t s = 0; s < nseq; ++s) {
        for (int64_t cb = 0; cb < col_blocks; ++cb) {
            const int64_t d0 = cb * kColumnBlock, w = std::min(dim, d0 + kColumnBlock) - d0;
            C state[kColumnBlock] = {};
            for (int64_t c = cu[s]; c < cu[s + 1]; ++c) {
                const T* zc = z + c * dim + d0;
#pragma omp simd
                for (int64_t d = 0; d < w; ++d) {
                    state[d] = p[c] * load(zc, d) + (1 - p[c]) * state[d];
                    if constexpr (bidirectional)
                        e_all[c * dim + d0 + d] = state[d];
                    else
                        store(out + c * dim + d0, d, state[d]);
                }
            }
            if constexpr (!bidirectional) continue;
            std::fill(state, state + kColumnBlock, C(0));
            for (int64_t c = cu[s + 1] - 1; c >= cu[s]; --c) {
                const T* zc = z + c * dim + d0;
#pragma omp simd
                for (int64_t d = 0; d < w; ++d) {
                    state[d] = p[c] * load(zc, d) + (1 - p[c]) * state[d];
                    store(out + c * dim + d0, d, (e_all[c * dim + d0 + d] + state[d]) / 2);
                }
            }
        }
    }
}

template <class T, bool bidirectional>
void backward(const T* dout, const T* z, const compute_t<T>* p, const int32_t* cu, int64_t nseq,
              int64_t num_chunks, int64_t dim, T* dz, compute_t<T>* dp) {
    using C = compute_t<T>;
    const int64_t col_blocks = (dim + kColumnBlock - 1) / kColumnBlock;
    constexpr C scale = bidirectional ? C(0.5) : C(1);
    // e_{c-1}, and H_c kept where dz will go (read just before dz overwrites it)
    std::unique_ptr<C[]> e_prev(new C[static_cast<size_t>(num_chunks * dim)]);
    advise_huge_pages(reinterpret_cast<uintptr_t>(e_prev.get()),
                      num_chunks * dim * static_cast<int64_t>(sizeof(C)));
    std::unique_ptr<C[]> h_holder;
    C* h_all = bidirectional ? scratch_or(dz, num_chunks * dim, h_holder) : nullptr;
    std::vector<C> dp_part(static_cast<size_t>(col_blocks * num_chunks), C(0));
#pragma omp parallel for collapse(2) schedule(dynamic) if (num_chunks * dim >= kMinParallelWork)
    for (int64_t s = 0; s < nseq; ++s) {
        for (int64_t cb = 0; cb < col_blocks; ++cb) {
            const int64_t d0 = cb * kColumnBlock, w = std::min(dim, d0 + kColumnBlock) - d0;
            const int64_t first = cu[s], end = cu[s + 1];
            C e[kColumnBlock] = {}, h[kColumnBlock] = {};
            // left to right: e_{c-1}, and H_c
            for (int64_t c = first; c < end; ++c) {
                const C a_prev = c > first ? 1 - p[c - 1] : C(0);
#pragma omp simd
                for (int64_t d = 0; d < w; ++d) {
                    const int64_t i = c * dim + d0 + d;
                    e_prev[i] = e[d];
                    e[d] = p[c] * load(z, i) + (1 - p[c]) * e[d];
                    if constexpr (bidirectional) {
                        h[d] = scale * load(dout, i) + a_prev * h[d];
                        h_all[i] = h[d];
                    }
                }
            }
            // right to left: G_c and r_{c+1}, then dz and this block's part of dp
            C g[kColumnBlock] = {}, r[kColumnBlock] = {};
            for (int64_t c = end - 1; c >= first; --c) {
                const C a_next = c + 1 < end ? 1 - p[c + 1] : C(0);
                C part = 0;
#pragma omp simd reduction(+ : part)
                for (int64_t d = 0; d < w; ++d) {
                    const int64_t i = c * dim + d0 + d;
                    const C zc = load(z, i);
                    g[d] = scale * load(dout, i) + a_next * g[d];
                    C total = g[d];
                    part += g[d] * (zc - e_prev[i]);
                    if constexpr (bidirectional) {
                        total += h_all[i];
                        part += h_all[i] * (zc - r[d]);
                        r[d] = p[c] * zc + (1 - p[c]) * r[d];
                    }
                    store(dz, i, p[c] * total);
                }
                dp_part[cb * num_chunks + c] = part;
            }
        }
    }
#pragma omp parallel for schedule(static) if (num_chunks * col_blocks >= kMinParallelWork)
    for (int64_t c = 0; c < num_chunks; ++c) {
        C acc = 0;
        for (int64_t cb = 0; cb < col_blocks; ++cb) acc += dp_part[cb * num_chunks + c];
        dp[c] = acc;
    }
}

}  // namespace

void ema_forward(uintptr_t z, uintptr_t p, uintptr_t cu, int64_t nseq, int64_t num_chunks,
                 int64_t dim, int dtype, bool bidirectional, uintptr_t out) {
    dispatch(dtype, "routing_ema", [&](auto tag) {
        using T = decltype(tag);
        advise_huge_pages(out, num_chunks * dim * static_cast<int64_t>(sizeof(T)));
        auto run = bidirectional ? forward<T, true> : forward<T, false>;
        run(ptr<const T>(z), ptr<const compute_t<T>>(p), ptr<const int32_t>(cu), nseq, num_chunks,
            dim, ptr<T>(out));
    });
}

void ema_backward(uintptr_t dout, uintptr_t z, uintptr_t p, uintptr_t cu, int64_t nseq,
                  int64_t num_chunks, int64_t dim, int dtype, bool bidirectional, uintptr_t dz,
                  uintptr_t dp) {
    dispatch(dtype, "routing_ema_bwd", [&](auto tag) {
        using T = decltype(tag);
        advise_huge_pages(dz, num_chunks * dim * static_cast<int64_t>(sizeof(T)));
        auto run = bidirectional ? backward<T, true> : backward<T, false>;
        run(ptr<const T>(dout), ptr<const T>(z), ptr<const compute_t<T>>(p),
            ptr<const int32_t>(cu), nseq, num_chunks, dim, ptr<T>(dz), ptr<compute_t<T>>(dp));
    });
}

}  // namespace routing
}  // namespace mmhnet
