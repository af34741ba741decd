// Entry points of the CPU routing kernels (mmhnet._C), bound in routing_bindings.cpp.
//
// Every tensor is a contiguous buffer passed by address. Shapes: T tokens, C chunks, D columns.
// `dtype` codes the storage dtype of the float rows (routing_common.h: 0 float32, 1 float64,
// 2 float16, 3 bfloat16); per-token floats (p, dp, the outputs of means and confidence) are in
// the compute type (double for float64 storage, else float). Masks are bytes (torch.bool).
// Index tensors are int32, or int64 where a flag `*_is64` says so; cu_seqlens are int32.
#pragma once

#include <cstdint>

namespace mmhnet {
namespace routing {

// p (T,) compute type, mask (T,) from q, k (T, D), and the (T, 3) compute type rows
// stats = (|q_t|, |k_t|, q_t . k_{t-1}) (0 for t = 0) that the backward reuses.
void boundaries_forward(uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq, int64_t total,
                        int64_t dim, int dtype, uintptr_t p, uintptr_t mask, uintptr_t stats);
// dq, dk (T, D) from dp (T,) compute type and the forward's stats.
void boundaries_backward(uintptr_t dp, uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq,
                         int64_t total, int64_t dim, int dtype, uintptr_t stats, uintptr_t dq,
                         uintptr_t dk);

// chunk_id (T,) int32 = inclusive prefix sum of mask - 1; chunk_cu (nseq+1,) int32 = boundaries
// before each offset. cu values must lie in [0, T].
void chunk_index(uintptr_t mask, uintptr_t cu, int64_t nseq, int64_t total, uintptr_t chunk_id,
                 uintptr_t chunk_cu);
// out[chunk_id[t]] = x[t] where mask[t]; rows are copied as `row_bytes` bytes.
void compact_rows(uintptr_t x, uintptr_t mask, uintptr_t chunk_id, int64_t total,
                  int64_t num_chunks, int64_t row_bytes, uintptr_t out);
// out[i] = src[index[i]] (N rows), 0 where keep (nullable) is false or index is outside [0, R).
void gather_rows(uintptr_t src, uintptr_t index, bool index_is64, uintptr_t keep, int64_t n,
                 int64_t rows, int64_t row_bytes, uintptr_t out);
// out[s] = sum of src[order[j]] (src[j] when order is 0) over the j with seg_id[j] == s;
// seg_id non-decreasing; order int64. dense: every segment has a row, else absent ones are 0.
void segment_sum(uintptr_t src, uintptr_t seg_id, bool seg_is64, uintptr_t order, int64_t n,
                 int64_t num_segments, int64_t dim, int dtype, bool dense, uintptr_t out);
// chunk_scatter's backward in one pass over dz (T, D): dz_chunks[c] = sum of dz[t] over
// chunk_id[t] == c (chunk_id non-decreasing, every chunk present) and, unless dp is 0,
// dp[t] = +-sum_d dz[t, d] z_chunks[chunk_id[t], d] (+ where mask[t]); dp compute type.
void scatter_backward(uintptr_t dz, uintptr_t chunk_id, bool id_is64, int64_t total,
                      int64_t num_chunks, int64_t dim, int dtype, uintptr_t z_chunks,
                      uintptr_t mask, uintptr_t dz_chunks, uintptr_t dp);

// EMA over the chunks of each sequence; p (C,) compute type.
void ema_forward(uintptr_t z, uintptr_t p, uintptr_t cu, int64_t nseq, int64_t num_chunks,
                 int64_t dim, int dtype, bool bidirectional, uintptr_t out);
// dz (C, D) storage dtype; dp (C,) compute type.
void ema_backward(uintptr_t dout, uintptr_t z, uintptr_t p, uintptr_t cu, int64_t nseq,
                  int64_t num_chunks, int64_t dim, int dtype, bool bidirectional, uintptr_t dz,
                  uintptr_t dp);

// out (2,) compute type = [mean(mask), mean(p)], p (T,) compute type of `dtype`.
void mask_p_means(uintptr_t mask, uintptr_t p, int64_t total, int dtype, uintptr_t out);

}  // namespace routing
}  // namespace mmhnet
