// Row gathers, the deterministic segment sum, and the confidence gradient of chunk_scatter, on
// CPU.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/routing_common.h"
#include "cpu/routing_kernels.h"

namespace mmhnet {
namespace routing {
namespace {

constexpr int64_t kColumnBlock = 64;

template <class T>
void segment_sum_impl(const T* src, uintptr_t seg_id, bool seg_is64, const int64_t* order,
                      int64_t n, int64_t num_segments, int64_t dim, bool dense, T* out) {
    using C = compute_t<T>;
    // runs of equal ids: run r covers positions [begin[r], begin[r + 1])
    std::vector<int64_t> begin;
    for (int64_t j = 0; j < n; ++j)
        if (j == 0 || load_index(seg_id, seg_is64, j) != load_index(seg_id, seg_is64, j - 1))
            begin.push_back(j);
    begin.push_back(n);
    const int64_t runs = static_cast<int64_t>(begin.size()) - 1;
    if (!dense) {
        // zero only the segments no run writes (all-zero bits are 0.0 in every float dtype)
        std::vector<uint8_t> written(static_cast<size_t>(num_segments), 0);
        for (int64_t r = 0; r < runs; ++r) {
            const int64_t s = load_index(seg_id, seg_is64, begin[r]);
            if (s >= 0 && s < num_segments) written[static_cast<size_t>(s)] = 1;
        }
        const size_t row_bytes = static_cast<size_t>(dim) * sizeof(T);
#pragma omp parallel for schedule(static) if (num_segments * dim >= kMinParallelWork)
        for (int64_t s = 0; s < num_segments; ++s)
            if (!written[static_cast<size_t>(s)]) std::memset(out + s * dim, 0, row_bytes);
    }
    const int64_t col_blocks = (dim + kColumnBlock - 1) / kColumnBlock;
    // each (run, column block) is summed by one thread, rows in order: deterministic
#pragma omp parallel for collapse(2) schedule(dynamic, 16) if (n * dim >= kMinParallelWork)
    for (int64_t r = 0; r < runs; ++r) {
        for (int64_t cb = 0; cb < col_blocks; ++cb) {
            int64_t s = load_index(seg_id, seg_is64, begin[r]);
            if (s < 0 || s >= num_segments) continue;
            int64_t d0 = cb * kColumnBlock, d1 = std::min(dim, d0 + kColumnBlock);
            C acc[kColumnBlock] = {};
            for (int64_t j = begin[r]; j < begin[r + 1]; ++j) {
                const T* row = src + (order ? order[j] : j) * dim;
                for (int64_t d = d0; d < d1; ++d) acc[d - d0] += load(row, d);
            }
            for (int64_t d = d0; d < d1; ++d) store(out + s * dim, d, acc[d - d0]);
        }
    }
}

template <class T>
void confidence_grad_impl(const T* dz, const T* zc, uintptr_t chunk_id, bool id_is64,
                          const uint8_t* mask, int64_t total, int64_t num_chunks, int64_t dim,
                          compute_t<T>* dp) {
    using C = compute_t<T>;
#pragma omp parallel for schedule(static) if (total * dim >= kMinParallelWork)
    for (int64_t t = 0; t < total; ++t) {
        int64_t c = load_index(chunk_id, id_is64, t);
        C acc = 0;
        if (c >= 0 && c < num_chunks) {
            const T* g = dz + t * dim;
            const T* z = zc + c * dim;
#pragma omp simd reduction(+ : acc)
            for (int64_t d = 0; d < dim; ++d) acc += load(g, d) * load(z, d);
        }
        dp[t] = mask[t] ? acc : -acc;
    }
}

}  // namespace

void gather_rows(uintptr_t src_addr, uintptr_t index, bool index_is64, uintptr_t keep_addr,
                 int64_t n, int64_t rows, int64_t row_bytes, uintptr_t out_addr) {
    const char* src = ptr<const char>(src_addr);
    const uint8_t* keep = ptr<const uint8_t>(keep_addr);
    char* out = ptr<char>(out_addr);
    advise_huge_pages(out_addr, n * row_bytes);
#pragma omp parallel for schedule(static) if (n * row_bytes >= 4 * kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) {
        int64_t r = load_index(index, index_is64, i);
        char* dst = out + i * row_bytes;
        if ((keep == nullptr || keep[i]) && r >= 0 && r < rows)
            std::memcpy(dst, src + r * row_bytes, static_cast<size_t>(row_bytes));
        else
            std::memset(dst, 0, static_cast<size_t>(row_bytes));
    }
}

void segment_sum(uintptr_t src, uintptr_t seg_id, bool seg_is64, uintptr_t order, int64_t n,
                 int64_t num_segments, int64_t dim, int dtype, bool dense, uintptr_t out) {
    dispatch(dtype, "routing_segment_sum", [&](auto tag) {
        using T = decltype(tag);
        advise_huge_pages(out, num_segments * dim * static_cast<int64_t>(sizeof(T)));
        segment_sum_impl<T>(ptr<const T>(src), seg_id, seg_is64, ptr<const int64_t>(order), n,
                            num_segments, dim, dense, ptr<T>(out));
    });
}

void confidence_grad(uintptr_t dz, uintptr_t z_chunks, uintptr_t chunk_id, bool id_is64,
                     uintptr_t mask, int64_t total, int64_t num_chunks, int64_t dim, int dtype,
                     uintptr_t dp) {
    dispatch(dtype, "routing_confidence_grad", [&](auto tag) {
        using T = decltype(tag);
        confidence_grad_impl<T>(ptr<const T>(dz), ptr<const T>(z_chunks), chunk_id, id_is64,
                                ptr<const uint8_t>(mask), total, num_chunks, dim,
                                ptr<compute_t<T>>(dp));
    });
}

}  // namespace routing
}  // namespace mmhnet
