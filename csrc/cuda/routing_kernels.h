// Entry points of the CUDA routing kernels (mmhnet._C_cuda), bound in routing_bindings.cu.
//
// The contracts are those of csrc/cpu/routing_kernels.h (same arguments, device addresses), plus
// the CUDA stream as the last argument; every launch is asynchronous on that stream.
#pragma once

#include <cstdint>

namespace mmhnet {
namespace routing_cuda {

void boundaries_forward(uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq, int64_t total,
                        int64_t dim, int dtype, uintptr_t p, uintptr_t mask, uintptr_t stream);
void boundaries_backward(uintptr_t dp, uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq,
                         int64_t total, int64_t dim, int dtype, uintptr_t dq, uintptr_t dk,
                         uintptr_t stream);

// One pass over the mask (warp ballots, a block prefix sum and a decoupled look-back between
// blocks) gives chunk_id; a second tiny kernel reads chunk_cu off it.
void chunk_index(uintptr_t mask, uintptr_t cu, int64_t nseq, int64_t total, uintptr_t chunk_id,
                 uintptr_t chunk_cu, uintptr_t stream);
// boundaries_forward and chunk_index fused: one pass computes p, mask, chunk_id (warp ballots,
// a block prefix sum and the look-back over tiles of 64 tokens) and chunk_cu.
void route_index(uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq, int64_t total, int64_t dim,
                 int dtype, uintptr_t p, uintptr_t mask, uintptr_t chunk_id, uintptr_t chunk_cu,
                 uintptr_t stream);
void compact_rows(uintptr_t x, uintptr_t mask, uintptr_t chunk_id, int64_t total,
                  int64_t num_chunks, int64_t row_bytes, uintptr_t out, uintptr_t stream);
void gather_rows(uintptr_t src, uintptr_t index, bool index_is64, uintptr_t keep, int64_t n,
                 int64_t rows, int64_t row_bytes, uintptr_t out, uintptr_t stream);
void segment_sum(uintptr_t src, uintptr_t seg_id, bool seg_is64, uintptr_t order, int64_t n,
                 int64_t num_segments, int64_t dim, int dtype, bool dense, uintptr_t out,
                 uintptr_t stream);
void confidence_grad(uintptr_t dz, uintptr_t z_chunks, uintptr_t chunk_id, bool id_is64,
                     uintptr_t mask, int64_t total, int64_t num_chunks, int64_t dim, int dtype,
                     uintptr_t dp, uintptr_t stream);

// Shared by compact_rows and gather_rows: out row dst(i) = src row src(i) for i < n, where
// src(i) = src_index[i] (or i when src_index is 0) and dst(i) likewise; a row whose keep[i] is
// false or whose src(i) is outside [0, src_rows) is written as zeros when zero_dropped, else
// skipped; dst(i) outside [0, dst_rows) is skipped.
void copy_rows(uintptr_t src, uintptr_t dst, int64_t n, int64_t row_bytes, uintptr_t src_index,
               bool src_is64, int64_t src_rows, uintptr_t dst_index, bool dst_is64,
               int64_t dst_rows, uintptr_t keep, bool zero_dropped, uintptr_t stream);

}  // namespace routing_cuda
}  // namespace mmhnet
