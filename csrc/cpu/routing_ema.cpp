// EMA over the chunks of each sequence (ema_smooth), forward and backward, on CPU.
//
//   e_c = p_c z_c + a_c e_{c-1},  r_c = p_c z_c + a_c r_{c+1},  a = 1 - p;  out = e or (e + r)/2
// Backward (de = dout, or de = dr = dout / 2 when bidirectional):
//   G_c = de_c + a_{c+1} G_{c+1},  H_c = dr_c + a_{c-1} H_{c-1}
//   dz_c = p_c (G_c + H_c),  dp_c = sum_d G_c (z_c - e_{c-1}) + H_c (z_c - r_{c+1})
// One task per (sequence, group of columns) walks its chunks in order; dp is summed per block of
// 64 columns and then over the blocks in a fixed order, so results do not depend on the thread
// count.
#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu/routing_common.h"
#include "cpu/routing_kernels.h"

namespace mmhnet {
namespace routing {
namespace {

// dp is summed per block of kColumnBlock columns, then over the blocks in order.
constexpr int64_t kColumnBlock = 64;

// Columns per task, a multiple of kColumnBlock: whole rows when there are enough sequences to
// keep every thread busy (a task then streams through contiguous rows), else rows split so that
// there are about two tasks per thread.
int64_t task_columns(int64_t dim, int64_t nseq) {
#ifdef _OPENMP
    const int64_t threads = omp_get_max_threads();
#else
    const int64_t threads = 1;
#endif
    const int64_t blocks = (dim + kColumnBlock - 1) / kColumnBlock;
    const int64_t splits = std::min(blocks, std::max<int64_t>(1, (2 * threads + nseq - 1) / nseq));
    return (blocks + splits - 1) / splits * kColumnBlock;
}

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
    const int64_t width = task_columns(dim, nseq);
    const int64_t col_tasks = (dim + width - 1) / width;
    // the forward sweep's e, read back (and overwritten in place) by the reverse sweep
    std::unique_ptr<C[]> holder;
    C* e_all = bidirectional ? scratch_or(out, num_chunks * dim, holder) : nullptr;
#pragma omp parallel for collapse(2) schedule(dynamic) if (num_chunks * dim >= kMinParallelWork)
    for (int64_t s = 0; s < nseq; ++s) {
        for (int64_t ct = 0; ct < col_tasks; ++ct) {
            const int64_t d0 = ct * width, w = std::min(dim, d0 + width) - d0;
            std::vector<C> state(static_cast<size_t>(w), C(0));
            C* st = state.data();
            for (int64_t c = cu[s]; c < cu[s + 1]; ++c) {
                const T* zc = z + c * dim + d0;
                const C pc = p[c];
#pragma omp simd
                for (int64_t d = 0; d < w; ++d) {
                    st[d] = pc * load(zc, d) + (1 - pc) * st[d];
                    if constexpr (bidirectional)
                        e_all[c * dim + d0 + d] = st[d];
                    else
                        store(out + c * dim + d0, d, st[d]);
                }
            }
            if constexpr (!bidirectional) continue;
            std::fill(state.begin(), state.end(), C(0));
            for (int64_t c = cu[s + 1] - 1; c >= cu[s]; --c) {
                const T* zc = z + c * dim + d0;
                const C pc = p[c];
#pragma omp simd
                for (int64_t d = 0; d < w; ++d) {
                    st[d] = pc * load(zc, d) + (1 - pc) * st[d];
                    store(out + c * dim + d0, d, (e_all[c * dim + d0 + d] + st[d]) / 2);
                }
            }
        }
    }
}

template <class T, bool bidirectional>
void backward(const T* dout, const T* z, const compute_t<T>* p, const int32_t* cu, int64_t nseq,
              int64_t num_chunks, int64_t dim, T* dz, compute_t<T>* dp) {
    using C = compute_t<T>;
    const int64_t width = task_columns(dim, nseq);
    const int64_t col_tasks = (dim + width - 1) / width;
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
        for (int64_t ct = 0; ct < col_tasks; ++ct) {
            const int64_t d0 = ct * width, w = std::min(dim, d0 + width) - d0;
            const int64_t first = cu[s], end = cu[s + 1];
            std::vector<C> buffers(static_cast<size_t>(4 * w), C(0));
            C* e = buffers.data();  // e_{c-1} entering chunk c, then G, r_{c+1}, H
            C* g = e + w;
            C* r = g + w;
            C* h = r + w;
            // left to right: e_{c-1}, and H_c
            for (int64_t c = first; c < end; ++c) {
                const C pc = p[c];
                const C a_prev = c > first ? 1 - p[c - 1] : C(0);
                const int64_t row = c * dim + d0;
#pragma omp simd
                for (int64_t d = 0; d < w; ++d) {
                    e_prev[row + d] = e[d];
                    e[d] = pc * load(z, row + d) + (1 - pc) * e[d];
                    if constexpr (bidirectional) {
                        h[d] = scale * load(dout, row + d) + a_prev * h[d];
                        h_all[row + d] = h[d];
                    }
                }
            }
            // right to left: G_c and r_{c+1}, then dz and dp's part of each column block
            for (int64_t c = end - 1; c >= first; --c) {
                const C pc = p[c];
                const C a_next = c + 1 < end ? 1 - p[c + 1] : C(0);
                const int64_t row = c * dim + d0;
                for (int64_t b0 = 0; b0 < w; b0 += kColumnBlock) {
                    const int64_t b1 = std::min(w, b0 + kColumnBlock);
                    C part = 0;
#pragma omp simd reduction(+ : part)
                    for (int64_t d = b0; d < b1; ++d) {
                        const C zc = load(z, row + d);
                        g[d] = scale * load(dout, row + d) + a_next * g[d];
                        C total = g[d];
                        part += g[d] * (zc - e_prev[row + d]);
                        if constexpr (bidirectional) {
                            total += h_all[row + d];
                            part += h_all[row + d] * (zc - r[d]);
                            r[d] = pc * zc + (1 - pc) * r[d];
                        }
                        store(dz, row + d, pc * total);
                    }
                    dp_part[((d0 + b0) / kColumnBlock) * num_chunks + c] = part;
                }
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
