// EMA over the chunks of each sequence (ema_smooth), forward and backward, on CPU.
//
//   e_c = p_c z_c + a_c e_{c-1},  r_c = p_c z_c + a_c r_{c+1},  a = 1 - p;  out = e or (e + r)/2
// Backward (de = dout, or de = dr = dout / 2 when bidirectional):
//   G_c = de_c + a_{c+1} G_{c+1},  H_c = dr_c + a_{c-1} H_{c-1}
//   dz_c = p_c (G_c + H_c),  dp_c = sum_d G_c (z_c - e_{c-1}) + H_c (z_c - r_{c+1})
//
// One task per (sequence, group of at most kMaxTaskColumns columns). Rows are walked in blocks
// of kBlock chunks; inside a block, one tile of kTile columns at a time, so a tile's recurrence
// states stay in registers (or, where the compiler spills them, in L1) while the block's rows
// stay in L1/L2.
// The left-to-right recurrences (e, and H in the bidirectional backward) are needed while walking
// right to left: a first sweep keeps only their value entering every block, and the right-to-left
// sweep recomputes them block by block into a tile-sized buffer. So nothing of size (C, D) is
// written besides the output, and z and dout are read twice.
// dp is summed per tile of kTile columns and then over the tiles in a fixed order, so results do
// not depend on the thread count.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/routing_common.h"
#include "cpu/routing_kernels.h"

namespace mmhnet {
namespace routing {
namespace {

constexpr int64_t kTile = 64;  // columns whose states live in registers; dp partial sums
static_assert(kTile <= RowOutput<float>::kBlock, "a tile's row must fit RowOutput's block");
constexpr int64_t kMaxTaskColumns = 256;  // a task's block of rows stays in L1/L2
constexpr int64_t kBlock = 32;            // chunks between stored states

// Columns per task, a multiple of kTile: at most kMaxTaskColumns, fewer when there are too few
// sequences to give every thread about two tasks.
int64_t task_columns(int64_t dim, int64_t nseq) {
    const int64_t threads = max_threads();
    const int64_t tiles = std::max<int64_t>(1, (dim + kTile - 1) / kTile);
    const int64_t splits = std::min(tiles, std::max<int64_t>(1, (2 * threads + nseq - 1) / nseq));
    return std::min((tiles + splits - 1) / splits * kTile, kMaxTaskColumns);
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

// Calls tile(d, n) for the tiles of columns [d0, d0 + w): n is a compile-time kTile for the full
// tiles (so their loops unroll and their states can stay in registers) and the remainder for the
// last.
template <class F>
inline void for_each_tile(int64_t d0, int64_t w, F&& tile) {
    int64_t d = d0;
    for (; d + kTile <= d0 + w; d += kTile) tile(d, std::integral_constant<int64_t, kTile>{});
    if (d < d0 + w) tile(d, d0 + w - d);
}

// Prefetches columns [d0, d0 + w) of `row` when it lies in the task's chunks [first, end): the
// sweeps ask for the row one block ahead while their first tile runs.
template <class T>
inline void prefetch_block_row(const T* x, int64_t row, int64_t first, int64_t end, int64_t dim,
                               int64_t d0, int64_t w) {
    if (row >= first && row < end) prefetch(x + row * dim + d0, w);
}

// One EMA step on a tile: s = p z + (1 - p) s.
template <class T, class C, class N>
inline void ema_step(C* s, const T* z, C p, N n) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] = p * load(z, j) + (1 - p) * s[j];
}

template <class C, class N>
inline void copy_tile(C* dst, const C* src, N n) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dst[j] = src[j];
}

template <class T, bool bidirectional>
void forward(const T* z, const compute_t<T>* p, const int32_t* cu, int64_t nseq,
             int64_t num_chunks, int64_t dim, T* out) {
    using C = compute_t<T>;
    auto task = [&](int64_t first, int64_t end, int64_t d0, int64_t w, RowOutput<T>& rows) {
        const int64_t nblocks = (end - first + kBlock - 1) / kBlock;
        std::vector<C> e(static_cast<size_t>(w), C(0));
        std::vector<C> entering(bidirectional ? static_cast<size_t>(nblocks * w) : 0);
        for (int64_t b = 0; b < nblocks; ++b) {
            const int64_t b0 = first + b * kBlock, b1 = std::min(end, b0 + kBlock);
            if constexpr (bidirectional) std::copy(e.begin(), e.end(), entering.begin() + b * w);
            for_each_tile(d0, w, [&](int64_t d, auto n) {
                C s[kTile];
                copy_tile(s, e.data() + (d - d0), n);
                for (int64_t c = b0; c < b1; ++c) {
                    if (d == d0) {
                        prefetch_block_row(z, c + kBlock, first, end, dim, d0, w);
                        if (!bidirectional && !rows.streamed() && c + kBlock < end)
                            prefetch(out + (c + kBlock) * dim + d0, w, true);
                    }
                    ema_step(s, z + c * dim + d, p[c], n);
                    if constexpr (!bidirectional)
                        rows.write(out + c * dim + d, n, [&](T* o, int64_t, int64_t m) {
                            for (int64_t j = 0; j < m; ++j) store(o, j, s[j]);
                        });
                }
                copy_tile(e.data() + (d - d0), s, n);
            });
        }
        if constexpr (bidirectional) {
            std::vector<C> r(static_cast<size_t>(w), C(0));
            std::vector<C> eb(static_cast<size_t>(kBlock * kTile));  // e_c of one tile's rows
            for (int64_t b = nblocks - 1; b >= 0; --b) {
                const int64_t b0 = first + b * kBlock, b1 = std::min(end, b0 + kBlock);
                for_each_tile(d0, w, [&](int64_t d, auto n) {
                    C s[kTile];
                    copy_tile(s, entering.data() + b * w + (d - d0), n);
                    for (int64_t c = b0; c < b1; ++c) {
                        if (d == d0) {  // the rows the next (left) block recomputes from
                            prefetch_block_row(z, c - kBlock, first, end, dim, d0, w);
                            if (!rows.streamed()) prefetch(out + c * dim + d0, w, true);
                        }
                        ema_step(s, z + c * dim + d, p[c], n);
                        copy_tile(eb.data() + (c - b0) * kTile, s, n);
                    }
                    copy_tile(s, r.data() + (d - d0), n);
                    for (int64_t c = b1 - 1; c >= b0; --c) {
                        ema_step(s, z + c * dim + d, p[c], n);
                        const C* ec = eb.data() + (c - b0) * kTile;
                        rows.write(out + c * dim + d, n, [&](T* o, int64_t, int64_t m) {
#pragma omp simd
                            for (int64_t j = 0; j < m; ++j) store(o, j, (ec[j] + s[j]) / 2);
                        });
                    }
                    copy_tile(r.data() + (d - d0), s, n);
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
    const int64_t tiles = (dim + kTile - 1) / kTile;
    constexpr C scale = bidirectional ? C(0.5) : C(1);
    constexpr int64_t kStates = bidirectional ? 2 : 1;  // e, and H
    std::vector<C> dp_part(static_cast<size_t>(num_chunks * tiles));  // [chunk][tile]
    auto task = [&](int64_t first, int64_t end, int64_t d0, int64_t w, RowOutput<T>& rows) {
        const int64_t nblocks = (end - first + kBlock - 1) / kBlock;
        // running e (and H) per column, [state][column], and their values entering each block
        std::vector<C> left(static_cast<size_t>(kStates * w), C(0));
        std::vector<C> entering(static_cast<size_t>(nblocks * kStates * w));
        // one step left to right on a tile: e_{c-1} -> e_c and H_{c-1} -> H_c
        auto left_step = [&](int64_t c, int64_t d, auto n, C* e, C* h) {
            ema_step(e, z + c * dim + d, p[c], n);
            if constexpr (bidirectional) {
                const C a_prev = c > first ? 1 - p[c - 1] : C(0);
                const T* gc = dout + c * dim + d;
#pragma omp simd
                for (int64_t j = 0; j < n; ++j) h[j] = scale * load(gc, j) + a_prev * h[j];
            }
        };
        for (int64_t b = 0; b < nblocks; ++b) {
            const int64_t b0 = first + b * kBlock, b1 = std::min(end, b0 + kBlock);
            std::copy(left.begin(), left.end(), entering.begin() + b * kStates * w);
            for_each_tile(d0, w, [&](int64_t d, auto n) {
                C e[kTile], h[kTile];
                copy_tile(e, left.data() + (d - d0), n);
                if constexpr (bidirectional) copy_tile(h, left.data() + w + (d - d0), n);
                for (int64_t c = b0; c < b1; ++c) {
                    if (d == d0) {
                        prefetch_block_row(z, c + kBlock, first, end, dim, d0, w);
                        if constexpr (bidirectional)
                            prefetch_block_row(dout, c + kBlock, first, end, dim, d0, w);
                    }
                    left_step(c, d, n, e, h);
                }
                copy_tile(left.data() + (d - d0), e, n);
                if constexpr (bidirectional) copy_tile(left.data() + w + (d - d0), h, n);
            });
        }
        // right to left: G and r per column, and per row of a block e_{c-1} (and H_c) of a tile
        std::vector<C> right(static_cast<size_t>(2 * w), C(0));
        std::vector<C> rec(static_cast<size_t>(kBlock * kStates * kTile));
        for (int64_t b = nblocks - 1; b >= 0; --b) {
            const int64_t b0 = first + b * kBlock, b1 = std::min(end, b0 + kBlock);
            const C* enter = entering.data() + b * kStates * w;
            for_each_tile(d0, w, [&](int64_t d, auto n) {
                C e[kTile], h[kTile];
                copy_tile(e, enter + (d - d0), n);
                if constexpr (bidirectional) copy_tile(h, enter + w + (d - d0), n);
                for (int64_t c = b0; c < b1; ++c) {
                    if (d == d0) {  // the rows the next (left) block recomputes from
                        prefetch_block_row(z, c - kBlock, first, end, dim, d0, w);
                        prefetch_block_row(dout, c - kBlock, first, end, dim, d0, w);
                        if (!rows.streamed()) prefetch(dz + c * dim + d0, w, true);
                    }
                    C* rc = rec.data() + (c - b0) * kStates * kTile;
                    copy_tile(rc, e, n);  // e_{c-1}
                    left_step(c, d, n, e, h);
                    if constexpr (bidirectional) copy_tile(rc + kTile, h, n);  // H_c
                }
                C g[kTile], r[kTile];
                copy_tile(g, right.data() + (d - d0), n);
                if constexpr (bidirectional) copy_tile(r, right.data() + w + (d - d0), n);
                for (int64_t c = b1 - 1; c >= b0; --c) {
                    const C pc = p[c];
                    const C a_next = c + 1 < end ? 1 - p[c + 1] : C(0);
                    const C* e_prev = rec.data() + (c - b0) * kStates * kTile;
                    const C* hc = e_prev + kTile;  // read when bidirectional
                    const T* zc = z + c * dim + d;
                    const T* gc = dout + c * dim + d;
                    T* dzc = rows.begin(dz + c * dim + d);
                    C part = 0;
#pragma omp simd reduction(+ : part)
                    for (int64_t j = 0; j < n; ++j) {
                        const C zj = load(zc, j);
                        g[j] = scale * load(gc, j) + a_next * g[j];
                        C total = g[j];
                        part += g[j] * (zj - e_prev[j]);
                        if constexpr (bidirectional) {
                            total += hc[j];
                            part += hc[j] * (zj - r[j]);
                            r[j] = pc * zj + (1 - pc) * r[j];
                        }
                        store(dzc, j, pc * total);
                    }
                    rows.done(n);
                    dp_part[c * tiles + d / kTile] = part;
                }
                copy_tile(right.data() + (d - d0), g, n);
                if constexpr (bidirectional) copy_tile(right.data() + w + (d - d0), r, n);
            });
        }
    };
    for_each_task<T>(cu, nseq, num_chunks, dim, task);
#pragma omp parallel for schedule(static) if (num_chunks * tiles >= kMinParallelWork)
    for (int64_t c = 0; c < num_chunks; ++c) {
        C acc = 0;
        for (int64_t t = 0; t < tiles; ++t) acc += dp_part[c * tiles + t];
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
