// Row copies (the gathers of chunk_scatter and token_gather, the compaction of chunk_gather) and
// the confidence gradient of chunk_scatter, on CUDA. Indices outside the tensors read or write
// nothing: the kernels never touch memory out of bounds.
#include "cuda/routing_common.cuh"
#include "cuda/routing_kernels.h"

namespace mmhnet {
namespace routing_cuda {
namespace {

constexpr int kCopyThreadsX = 64;  // threads along a row
constexpr int kCopyRows = 4;       // rows per block
constexpr int kWarpsPerBlock = 8;

// U is the copy unit: rows are moved as row_units units of sizeof(U) bytes.
template <class U>
__global__ void copy_rows_kernel(const U* src, U* dst, int64_t n, int64_t row_units,
                                 const void* src_index, bool src_is64, int64_t src_rows,
                                 const void* dst_index, bool dst_is64, int64_t dst_rows,
                                 const bool* keep, bool zero_dropped) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * kCopyRows + threadIdx.y;
    if (i >= n) return;
    const int64_t s = src_index ? load_index(src_index, src_is64, i) : i;
    const int64_t d = dst_index ? load_index(dst_index, dst_is64, i) : i;
    if (d < 0 || d >= dst_rows) return;
    const bool ok = (keep == nullptr || keep[i]) && s >= 0 && s < src_rows;
    if (!ok && !zero_dropped) return;
    U* out = dst + d * row_units;
    const U* in = src + s * row_units;
    for (int64_t u = threadIdx.x; u < row_units; u += kCopyThreadsX) {
        if (ok)
            out[u] = in[u];
        else
            out[u] = U{};
    }
}

template <class T>
__global__ void confidence_grad_kernel(const T* dz, const T* zc, const void* chunk_id,
                                       bool id_is64, const bool* mask, int64_t total,
                                       int64_t num_chunks, int64_t dim, compute_t<T>* dp) {
    using C = compute_t<T>;
    const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (t >= total) return;
    const int64_t c = load_index(chunk_id, id_is64, t);
    C acc = 0;
    if (c >= 0 && c < num_chunks)
        for (int64_t d = threadIdx.x & 31; d < dim; d += 32)
            acc += to_compute(dz[t * dim + d]) * to_compute(zc[c * dim + d]);
    acc = warp_sum(acc);
    if ((threadIdx.x & 31) == 0) dp[t] = mask[t] ? acc : -acc;
}

bool aligned(uintptr_t address, int64_t bytes, size_t unit) {
    return address % unit == 0 && bytes % static_cast<int64_t>(unit) == 0;
}

template <class U>
void launch_copy(uintptr_t src, uintptr_t dst, int64_t n, int64_t row_bytes, uintptr_t src_index,
                 bool src_is64, int64_t src_rows, uintptr_t dst_index, bool dst_is64,
                 int64_t dst_rows, uintptr_t keep, bool zero_dropped, cudaStream_t stream) {
    dim3 block(kCopyThreadsX, kCopyRows);
    dim3 grid(static_cast<unsigned>(ceil_div(n, kCopyRows)));
    copy_rows_kernel<U><<<grid, block, 0, stream>>>(
        ptr<const U>(src), ptr<U>(dst), n, row_bytes / static_cast<int64_t>(sizeof(U)),
        ptr<const void>(src_index), src_is64, src_rows, ptr<const void>(dst_index), dst_is64,
        dst_rows, ptr<const bool>(keep), zero_dropped);
}

}  // namespace

void copy_rows(uintptr_t src, uintptr_t dst, int64_t n, int64_t row_bytes, uintptr_t src_index,
               bool src_is64, int64_t src_rows, uintptr_t dst_index, bool dst_is64,
               int64_t dst_rows, uintptr_t keep, bool zero_dropped, uintptr_t stream_addr) {
    if (n == 0 || row_bytes == 0) return;
    cudaStream_t stream = as_stream(stream_addr);
    // the widest unit that divides the rows and the base addresses: 16-byte copies when it can
    auto fits = [&](size_t unit) { return aligned(src, row_bytes, unit) && aligned(dst, row_bytes, unit); };
    if (fits(16))
        launch_copy<uint4>(src, dst, n, row_bytes, src_index, src_is64, src_rows, dst_index,
                           dst_is64, dst_rows, keep, zero_dropped, stream);
    else if (fits(4))
        launch_copy<uint32_t>(src, dst, n, row_bytes, src_index, src_is64, src_rows, dst_index,
                              dst_is64, dst_rows, keep, zero_dropped, stream);
    else if (fits(2))
        launch_copy<uint16_t>(src, dst, n, row_bytes, src_index, src_is64, src_rows, dst_index,
                              dst_is64, dst_rows, keep, zero_dropped, stream);
    else
        launch_copy<uint8_t>(src, dst, n, row_bytes, src_index, src_is64, src_rows, dst_index,
                             dst_is64, dst_rows, keep, zero_dropped, stream);
    check_launch("routing_copy_rows");
}

void gather_rows(uintptr_t src, uintptr_t index, bool index_is64, uintptr_t keep, int64_t n,
                 int64_t rows, int64_t row_bytes, uintptr_t out, uintptr_t stream) {
    copy_rows(src, out, n, row_bytes, index, index_is64, rows, 0, false, n, keep, true, stream);
}

void confidence_grad(uintptr_t dz, uintptr_t z_chunks, uintptr_t chunk_id, bool id_is64,
                     uintptr_t mask, int64_t total, int64_t num_chunks, int64_t dim, int dtype,
                     uintptr_t dp, uintptr_t stream) {
    if (total == 0) return;
    dispatch(dtype, "routing_confidence_grad", [&](auto tag) {
        using T = decltype(tag);
        dim3 grid(static_cast<unsigned>(ceil_div(total, kWarpsPerBlock)));
        confidence_grad_kernel<T><<<grid, kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
            ptr<const T>(dz), ptr<const T>(z_chunks), ptr<const void>(chunk_id), id_is64,
            ptr<const bool>(mask), total, num_chunks, dim, ptr<compute_t<T>>(dp));
    });
    check_launch("routing_confidence_grad");
}

}  // namespace routing_cuda
}  // namespace mmhnet
