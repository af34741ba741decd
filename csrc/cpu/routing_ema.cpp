// EMA over the chunks of each sequence (ema_smooth), forward and backward, on CPU.
//
//   e_c = p_c z_c + a_c e_{c-1},  r_c = p_c z_c + a_c r_{c+1},  a = 1 - p;  out = e or (e + r)/2
// Backward (de = dout, or de = dr = dout / 2 when bidirectional):
//   G_c = de_c + a_{c+1} G_{c+1},  H_c = dr_c + a_{c-1} H_{c-1}
//   dz_c = p_c (G_c + H_c),  dp_c = sum_d G_c (z_c - e_{c-1}) + H_c (z_c - r_{c+1})
//
// One task per (sequence, group of at most kMaxTaskColumns columns). The left-to-right
// recurrences (e, and H in the bidirectional backward) are needed while walking right to left:
// a first sweep keeps only their value entering every block of kBlock chunks, and the
// right-to-left sweep recomputes them block by block into a cache-resident buffer. So nothing of
// size (C, D) is written besides the output, and z and dout are read twice.
// dp is summed per block of kColumnBlock columns and then over the blocks in a fixed order, so
// results do not depend on the thread count.
#include <algorithm>
#include <vector>

#include "cpu/routing_common.h"
#include "cpu/routing_kernels.h"

namespace mmhnet {
namespace routing {
namespace {

constexpr int64_t kColumnBlock = 64;      // dp partial sums, and the dz pieces written
static_assert(kColumnBlock <= RowOutput<float>::kBlock, "a dz piece must fit RowOutput's block");
constexpr int64_t kMaxTaskColumns = 256;  // a task's block buffers stay in L2
constexpr int64_t kBlock = 32;            // chunks between stored states
constexpr int64_t kAhead = 8;             // rows prefetched ahead in left-to-right sweeps

// Columns per task, a multiple of kColumnBlock: at most kMaxTaskColumns, fewer when there are
// too few sequences to give every thread about two tasks.
int64_t task_columns(int64_t dim, int64_t nseq) {
    const int64_t threads = max_threads();
    const int64_t blocks = std::max<int64_t>(1, (dim + kColumnBlock - 1) / kColumnBlock);
    const int64_t splits = std::min(blocks, std::max<int64_t>(1, (2 * threads + nseq - 1) / nseq));
    const int64_t width = (blocks + splits - 1) / splits * kColumnBlock;
    return std::min(width, kMaxTaskColumns);
}

// Calls task(first_chunk, end_chunk, d0, width, out) for every (sequence, column group), in
// parallel; `out` is the thread's RowOutput for the (C, D) output, streamed when that is large.
template <class T, class F>
void for_each_task(const int32_t* cu, int64_t nseq, int64_t num_chunks, int64_t dim, F&& task) {
    const int64_t width = task_columns(dim, nseq);
    const int64_t col_tasks = (dim + width - 1) / width;
    const bool stream = streams(num_chunks * dim * static_cast<int64_t>(sizeof(T)));
#pragma omp parallel if (num_chunks * dim >= kMinParallelWork)
    {
        RowOutput<T> out(stream);
#pragma omp for collapse(2) schedule(dynamic) nowait
        for (int64_t s = 0; s < nseq; ++s) {
            for (int64_t ct = 0; ct < col_tasks; ++ct) {
                const int64_t d0 = ct * width;
                const int64_t first = cu[s], end = cu[s + 1];
                if (first < end) task(first, end, d0, std::min(dim, d0 + width) - d0, out);
            }
        }
        streaming_fence();
    }
}

// One step of the EMA on w columns: st = p z + (1 - p) st.
template <class T>
inline void ema_step(compute_t<T>* st, const T* z, compute_t<T> p, int64_t w) {
#pragma omp simd
    for (int64_t d = 0; d < w; ++d) st[d] = p * load(z, d) + (1 - p) * st[d];
}

template <class T, bool bidirectional>
void forward(const T* z, const compute_t<T>* p, const int32_t* cu, int64_t nseq,
             int64_t num_chunks, int64_t dim, T* out) {
    using C = compute_t<T>;
    auto task = [&](int64_t first, int64_t end, int64_t d0, int64_t w, RowOutput<T>& rows) {
        std::vector<C> e(static_cast<size_t>(w), C(0));
        if constexpr (!bidirectional) {
            for (int64_t c = first; c < end; ++c) {
                if (c + kAhead < end) {
                    prefetch(z + (c + kAhead) * dim + d0, w);
                    if (!rows.streamed()) prefetch(out + (c + kAhead) * dim + d0, w, true);
                }
                ema_step(e.data(), z + c * dim + d0, p[c], w);
                rows.write(out + c * dim + d0, w, [&](T* o, int64_t j0, int64_t m) {
                    for (int64_t j = 0; j < m; ++j) store(o, j, e[j0 + j]);
                });
            }
            return;
        }
        const int64_t nblocks = (end - first + kBlock - 1) / kBlock;
        std::vector<C> entering(static_cast<size_t>(nblocks * w));  // e_{b0 - 1} per block
        for (int64_t c = first; c < end; ++c) {
            if ((c - first) % kBlock == 0)
                std::copy(e.begin(), e.end(), entering.begin() + (c - first) / kBlock * w);
            if (c + kAhead < end) prefetch(z + (c + kAhead) * dim + d0, w);
            ema_step(e.data(), z + c * dim + d0, p[c], w);
        }
        std::vector<C> eb(static_cast<size_t>(kBlock * w)), r(static_cast<size_t>(w), C(0));
        for (int64_t b = nblocks - 1; b >= 0; --b) {
            const int64_t b0 = first + b * kBlock, b1 = std::min(end, b0 + kBlock);
            std::copy_n(entering.begin() + b * w, w, e.begin());
            for (int64_t c = b0; c < b1; ++c) {
                ema_step(e.data(), z + c * dim + d0, p[c], w);
                std::copy(e.begin(), e.end(), eb.begin() + (c - b0) * w);
            }
            for (int64_t c = b1 - 1; c >= b0; --c) {
                // the rows the next (left) block will recompute from
                if (c - kBlock >= first) prefetch(z + (c - kBlock) * dim + d0, w);
                if (c - 2 >= first && !rows.streamed())
                    prefetch(out + (c - 2) * dim + d0, w, true);
                ema_step(r.data(), z + c * dim + d0, p[c], w);
                const C* ec = eb.data() + (c - b0) * w;
                rows.write(out + c * dim + d0, w, [&](T* o, int64_t j0, int64_t m) {
#pragma omp simd
                    for (int64_t j = 0; j < m; ++j) store(o, j, (ec[j0 + j] + r[j0 + j]) / 2);
                });
            }
        }
    };
    for_each_task<T>(cu, nseq, num_chunks, dim, task);
}

template <class T, bool bidirectional>
void backward(const T* dout, const T* z, const compute_t<T>* p, const int32_t* cu, int64_t nseq,
              int64_t num_chunks, int64_t dim, T* dz, compute_t<T>* dp) {
    using C = compute_t<T>;
    const int64_t col_blocks = (dim + kColumnBlock - 1) / kColumnBlock;
    constexpr C scale = bidirectional ? C(0.5) : C(1);
    constexpr int64_t kStates = bidirectional ? 2 : 1;  // e, and H
    std::vector<C> dp_part(static_cast<size_t>(col_blocks * num_chunks));
    auto task = [&](int64_t first, int64_t end, int64_t d0, int64_t w, RowOutput<T>& rows) {
        const int64_t nblocks = (end - first + kBlock - 1) / kBlock;
        // running e and H; their values entering each block; per block e_{c-1} and H_c
        std::vector<C> run(static_cast<size_t>(kStates * w), C(0));
        std::vector<C> entering(static_cast<size_t>(nblocks * kStates * w));
        std::vector<C> block(static_cast<size_t>(kBlock * kStates * w));
        C* e = run.data();
        C* h = e + w;  // used when bidirectional
        // one step left to right: e_{c-1} -> e_c and H_{c-1} -> H_c, recording e_{c-1} in
        // rec[0, w) and H_c in rec[w, 2w)
        auto left_step = [&](int64_t c, C* rec) {
            const C pc = p[c];
            const C a_prev = c > first ? 1 - p[c - 1] : C(0);
            const T* zc = z + c * dim + d0;
            const T* gc = dout + c * dim + d0;
#pragma omp simd
            for (int64_t d = 0; d < w; ++d) {
                rec[d] = e[d];
                e[d] = pc * load(zc, d) + (1 - pc) * e[d];
                if constexpr (bidirectional) {
                    h[d] = scale * load(gc, d) + a_prev * h[d];
                    rec[w + d] = h[d];
                }
            }
        };
        for (int64_t c = first; c < end; ++c) {
            if ((c - first) % kBlock == 0)
                std::copy(run.begin(), run.end(),
                          entering.begin() + (c - first) / kBlock * kStates * w);
            if (c + kAhead < end) {
                prefetch(z + (c + kAhead) * dim + d0, w);
                if constexpr (bidirectional) prefetch(dout + (c + kAhead) * dim + d0, w);
            }
            left_step(c, block.data());  // only the states matter here
        }
        std::vector<C> carries(static_cast<size_t>(2 * w), C(0));
        C* g = carries.data();  // G_c, then r_{c+1}
        C* r = g + w;
        for (int64_t b = nblocks - 1; b >= 0; --b) {
            const int64_t b0 = first + b * kBlock, b1 = std::min(end, b0 + kBlock);
            std::copy_n(entering.begin() + b * kStates * w, kStates * w, run.begin());
            for (int64_t c = b0; c < b1; ++c) {
                left_step(c, block.data() + (c - b0) * kStates * w);
            }
            for (int64_t c = b1 - 1; c >= b0; --c) {
                const C pc = p[c];
                const C a_next = c + 1 < end ? 1 - p[c + 1] : C(0);
                const C* e_prev = block.data() + (c - b0) * kStates * w;
                const C* hc = e_prev + w;  // read when bidirectional
                const T* zc = z + c * dim + d0;
                const T* gc = dout + c * dim + d0;
                if (c - kBlock >= first) {  // the rows the next (left) block recomputes from
                    prefetch(zc - kBlock * dim, w);
                    prefetch(gc - kBlock * dim, w);
                }
                if (c - 2 >= first && !rows.streamed())
                    prefetch(dz + (c - 2) * dim + d0, w, true);
                for (int64_t k0 = 0; k0 < w; k0 += kColumnBlock) {
                    const int64_t k1 = std::min(w, k0 + kColumnBlock);
                    T* dzc = rows.begin(dz + c * dim + d0 + k0);  // columns k0 .. k1-1
                    C part = 0;
#pragma omp simd reduction(+ : part)
                    for (int64_t d = k0; d < k1; ++d) {
                        const C zd = load(zc, d);
                        g[d] = scale * load(gc, d) + a_next * g[d];
                        C total = g[d];
                        part += g[d] * (zd - e_prev[d]);
                        if constexpr (bidirectional) {
                            total += hc[d];
                            part += hc[d] * (zd - r[d]);
                            r[d] = pc * zd + (1 - pc) * r[d];
                        }
                        store(dzc, d - k0, pc * total);
                    }
                    rows.done(k1 - k0);
                    dp_part[((d0 + k0) / kColumnBlock) * num_chunks + c] = part;
                }
            }
        }
    };
    for_each_task<T>(cu, nseq, num_chunks, dim, task);
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
