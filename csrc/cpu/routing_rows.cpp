// Row gathers and the deterministic segment sum (with, for chunk_scatter's backward, the
// confidence gradient in the same pass), on CPU.
#include <algorithm>
#include <vector>

#include "cpu/routing_common.h"
#include "cpu/routing_kernels.h"

namespace mmhnet {
namespace routing {
namespace {

constexpr int64_t kColumnBlock = 64;

// What a segment sum over chunk_scatter's gradient also computes in the same pass (null: nothing):
// dp[j] = +-src[j] . z_chunks[seg_id[j]], + where mask[j] (the confidence gradient).
template <class T>
struct Confidence {
    const T* z_chunks = nullptr;
    const uint8_t* mask = nullptr;
    compute_t<T>* dp = nullptr;
};

// Columns per task: whole rows when there are enough runs to share out among the threads (and
// always with the confidence, whose dot products need whole rows); else column groups, a
// multiple of kColumnBlock, so that there are about four tasks per thread.
int64_t segment_task_columns(int64_t dim, int64_t runs, bool whole_rows) {
    const int64_t threads = max_threads();
    if (dim == 0 || whole_rows || runs >= 4 * threads) return std::max<int64_t>(dim, 1);
    const int64_t blocks = (dim + kColumnBlock - 1) / kColumnBlock;
    const int64_t groups = std::min(blocks, (4 * threads + runs - 1) / std::max<int64_t>(runs, 1));
    return (blocks + groups - 1) / groups * kColumnBlock;
}

template <class T>
void segment_sum_impl(const T* src, uintptr_t seg_id, bool seg_is64, const int64_t* order,
                      int64_t n, int64_t num_segments, int64_t dim, bool dense, T* out,
                      Confidence<T> conf) {
    using C = compute_t<T>;
    // runs of equal ids: run r covers positions [begin[r], begin[r + 1])
    std::vector<int64_t> begin;
    for (int64_t j = 0; j < n; ++j)
        if (j == 0 || load_index(seg_id, seg_is64, j) != load_index(seg_id, seg_is64, j - 1))
            begin.push_back(j);
    begin.push_back(n);
    const int64_t runs = static_cast<int64_t>(begin.size()) - 1;
    const bool stream = streams(num_segments * dim * static_cast<int64_t>(sizeof(T)));
    if (!dense) {
        // zero only the segments no run writes (all-zero bits are 0.0 in every float dtype)
        std::vector<uint8_t> written(static_cast<size_t>(num_segments), 0);
        for (int64_t r = 0; r < runs; ++r) {
            const int64_t s = load_index(seg_id, seg_is64, begin[r]);
            if (s >= 0 && s < num_segments) written[static_cast<size_t>(s)] = 1;
        }
        const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(T));
        parallel_ranges(num_segments, num_segments * dim, [&](int64_t lo, int64_t hi) {
            for (int64_t s = lo; s < hi; ++s)
                if (!written[static_cast<size_t>(s)])
                    write_bytes(out + s * dim, nullptr, row_bytes, stream);
        });
    }
    const int64_t width = segment_task_columns(dim, runs, conf.dp != nullptr);
    // (one task per run when dim is 0: the confidence gradient is still written, as 0)
    const int64_t col_tasks = std::max<int64_t>(1, (dim + width - 1) / width);
    // each (run, column group) is summed by one thread, rows in order: deterministic
#pragma omp parallel if (n * dim >= kMinParallelWork)
    {
        std::vector<C> acc(static_cast<size_t>(width));
        RowOutput<T> sums(stream);
#pragma omp for collapse(2) schedule(dynamic, 8) nowait
        for (int64_t r = 0; r < runs; ++r) {
            for (int64_t ct = 0; ct < col_tasks; ++ct) {
                const int64_t s = load_index(seg_id, seg_is64, begin[r]);
                const bool valid = s >= 0 && s < num_segments;
                const int64_t d0 = ct * width, w = std::min(dim, d0 + width) - d0;
                const T* z = valid && conf.dp ? conf.z_chunks + s * dim : nullptr;
                C* a = acc.data();
                std::fill_n(a, w, C(0));
                for (int64_t j = begin[r]; j < begin[r + 1]; ++j) {
                    const T* row = src + (order ? order[j] : j) * dim + d0;
                    if (z) {
                        C dot = 0;
#pragma omp simd reduction(+ : dot)
                        for (int64_t d = 0; d < w; ++d) {
                            const C v = load(row, d);
                            a[d] += v;
                            dot += v * load(z, d);
                        }
                        conf.dp[j] = conf.mask[j] ? dot : -dot;
                    } else {
#pragma omp simd
                        for (int64_t d = 0; d < w; ++d) a[d] += load(row, d);
                        if (conf.dp) conf.dp[j] = 0;
                    }
                }
                if (valid) {
                    sums.write(out + s * dim + d0, w, [&](T* o, int64_t j0, int64_t m) {
                        for (int64_t j = 0; j < m; ++j) store(o, j, a[j0 + j]);
                    });
                }
            }
        }
        streaming_fence();
    }
}

}  // namespace

void gather_rows(uintptr_t src_addr, uintptr_t index, bool index_is64, uintptr_t keep_addr,
                 int64_t n, int64_t rows, int64_t row_bytes, uintptr_t out_addr) {
    const char* src = ptr<const char>(src_addr);
    const uint8_t* keep = ptr<const uint8_t>(keep_addr);
    char* out = ptr<char>(out_addr);
    advise_huge_pages(out_addr, n * row_bytes);
    const bool stream = streams(n * row_bytes);
    // (work in elements of 4 bytes, as kMinParallelWork counts them)
    parallel_ranges(n, n * row_bytes / 4, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) {
            const int64_t r = load_index(index, index_is64, i);
            const bool copy = (keep == nullptr || keep[i]) && r >= 0 && r < rows;
            write_bytes(out + i * row_bytes, copy ? src + r * row_bytes : nullptr, row_bytes,
                        stream);
        }
    });
}

void segment_sum(uintptr_t src, uintptr_t seg_id, bool seg_is64, uintptr_t order, int64_t n,
                 int64_t num_segments, int64_t dim, int dtype, bool dense, uintptr_t out) {
    dispatch(dtype, "routing_segment_sum", [&](auto tag) {
        using T = decltype(tag);
        advise_huge_pages(out, num_segments * dim * static_cast<int64_t>(sizeof(T)));
        segment_sum_impl<T>(ptr<const T>(src), seg_id, seg_is64, ptr<const int64_t>(order), n,
                            num_segments, dim, dense, ptr<T>(out), Confidence<T>{});
    });
}

void scatter_backward(uintptr_t dz, uintptr_t chunk_id, bool id_is64, int64_t total,
                      int64_t num_chunks, int64_t dim, int dtype, uintptr_t z_chunks,
                      uintptr_t mask, uintptr_t dz_chunks, uintptr_t dp) {
    dispatch(dtype, "routing_scatter_backward", [&](auto tag) {
        using T = decltype(tag);
        Confidence<T> conf;
        if (dp) conf = {ptr<const T>(z_chunks), ptr<const uint8_t>(mask), ptr<compute_t<T>>(dp)};
        segment_sum_impl<T>(ptr<const T>(dz), chunk_id, id_is64, nullptr, total, num_chunks, dim,
                            true, ptr<T>(dz_chunks), conf);
    });
}

}  // namespace routing
}  // namespace mmhnet
