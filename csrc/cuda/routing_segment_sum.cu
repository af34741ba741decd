// Deterministic segment sum on CUDA (the backward of chunk_scatter; token_scatter after a stable
// sort): out[s] = sum of the rows j with seg_id[j] == s, seg_id non-decreasing. No atomics, so
// every run gives the same bits.
//
// Pass 1: a block takes kRows consecutive rows, one thread per column, and walks the rows in
// order. A segment that begins and ends inside the block is written to out. A segment cut by the
// block's edge leaves a partial sum: head[b] for the one continuing from the previous block (the
// whole block when it lies inside one segment), tail[b] for the one continuing into the next.
// Pass 2: for each block whose last segment starts in it and continues, tail[b] + head[b+1] + ...
// up to the block where the segment ends, in block order.
#include "cuda/routing_common.cuh"
#include "cuda/routing_kernels.h"

namespace mmhnet {
namespace routing_cuda {
namespace {

constexpr int kRows = 64;
constexpr int kColumns = 128;

__device__ __forceinline__ int64_t seg_at(const void* seg, bool is64, int64_t j) {
    return load_index(seg, is64, j);
}

template <class T>
__global__ void segment_blocks_kernel(const T* src, const void* seg, bool seg64,
                                      const int64_t* order, int64_t n, int64_t num_segments,
                                      int64_t dim, T* out, compute_t<T>* head,
                                      compute_t<T>* tail) {
    using C = compute_t<T>;
    const int64_t b = blockIdx.x;
    const int64_t d = static_cast<int64_t>(blockIdx.y) * kColumns + threadIdx.x;
    if (d >= dim) return;
    const int64_t first = b * kRows;
    const int64_t last = min(n, first + kRows) - 1;
    C acc = 0;
    int64_t run_start = first;
    for (int64_t j = first; j <= last; ++j) {
        const int64_t s = seg_at(seg, seg64, j);
        acc += to_compute(src[(order ? order[j] : j) * dim + d]);
        if (j < last && seg_at(seg, seg64, j + 1) == s) continue;
        const bool open_start = run_start == first && first > 0 && seg_at(seg, seg64, first - 1) == s;
        const bool open_end = j == last && last + 1 < n && seg_at(seg, seg64, last + 1) == s;
        if (open_start)
            head[b * dim + d] = acc;
        else if (open_end)
            tail[b * dim + d] = acc;
        else if (s >= 0 && s < num_segments)
            store_as(out, s * dim + d, acc);
        acc = 0;
        run_start = j + 1;
    }
}

template <class T>
__global__ void segment_carry_kernel(const void* seg, bool seg64, int64_t n, int64_t num_segments,
                                     int64_t dim, int64_t n_blocks, T* out,
                                     const compute_t<T>* head, const compute_t<T>* tail) {
    using C = compute_t<T>;
    const int64_t b = blockIdx.x;
    const int64_t d = static_cast<int64_t>(blockIdx.y) * kColumns + threadIdx.x;
    if (d >= dim) return;
    const int64_t first = b * kRows;
    const int64_t last = min(n, first + kRows) - 1;
    const int64_t s = seg_at(seg, seg64, last);
    const bool continues = last + 1 < n && seg_at(seg, seg64, last + 1) == s;
    const bool starts_here = seg_at(seg, seg64, first) != s || first == 0 ||
                             seg_at(seg, seg64, first - 1) != s;
    if (!continues || !starts_here) return;
    C acc = tail[b * dim + d];
    for (int64_t nb = b + 1; nb < n_blocks; ++nb) {
        acc += head[nb * dim + d];
        const int64_t nb_last = min(n, (nb + 1) * kRows) - 1;
        if (!(nb_last + 1 < n && seg_at(seg, seg64, nb_last + 1) == s)) break;
    }
    if (s >= 0 && s < num_segments) store_as(out, s * dim + d, acc);
}

}  // namespace

void segment_sum(uintptr_t src, uintptr_t seg_id, bool seg_is64, uintptr_t order, int64_t n,
                 int64_t num_segments, int64_t dim, int dtype, bool dense, uintptr_t out,
                 uintptr_t stream_addr) {
    const char* op = "routing_segment_sum";
    cudaStream_t stream = as_stream(stream_addr);
    dispatch(dtype, op, [&](auto tag) {
        using T = decltype(tag);
        using C = compute_t<T>;
        if (!dense)  // all-zero bits are 0.0 in every float dtype
            check(cudaMemsetAsync(ptr<void>(out), 0, num_segments * dim * sizeof(T), stream), op);
        if (n == 0 || dim == 0) return;
        const int64_t n_blocks = ceil_div(n, kRows);
        StreamScratch partials(2 * n_blocks * dim * sizeof(C), stream, op);
        C* head = partials.as<C>();
        C* tail = head + n_blocks * dim;
        dim3 grid(static_cast<unsigned>(n_blocks), static_cast<unsigned>(ceil_div(dim, kColumns)));
        segment_blocks_kernel<T><<<grid, kColumns, 0, stream>>>(
            ptr<const T>(src), ptr<const void>(seg_id), seg_is64, ptr<const int64_t>(order), n,
            num_segments, dim, ptr<T>(out), head, tail);
        check_launch(op);
        segment_carry_kernel<T><<<grid, kColumns, 0, stream>>>(
            ptr<const void>(seg_id), seg_is64, n, num_segments, dim, n_blocks, ptr<T>(out),
            head, tail);
        check_launch(op);
    });
}

}  // namespace routing_cuda
}  // namespace mmhnet
