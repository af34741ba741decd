// Compaction on CUDA: chunk_id from the boundary mask in a single pass, chunk_cu_seqlens, and the
// copy of the boundary rows.
//
// chunk_id[t] = (boundaries at or before t) - 1. Each block takes the next tile of kTile tokens
// (tile numbers come from an atomic counter, in the order blocks start, so a block only ever
// waits for blocks that are already running). Inside a tile, kRounds rounds of one token per
// thread: a warp ballot counts the warp's boundaries, the counts of the block's warps are
// prefix-summed in shared memory. Across tiles, a decoupled look-back: a tile publishes its
// count at once, and its inclusive prefix once known; a later tile sums the counts it finds
// going back until it meets a published prefix.
#include "cuda/routing_common.cuh"
#include "cuda/routing_kernels.h"

namespace mmhnet {
namespace routing_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRounds = 4;
constexpr int kTile = kThreads * kRounds;

// A tile's status word: flag in the high half, count in the low half.
constexpr unsigned long long kHasCount = 1ull << 32;
constexpr unsigned long long kHasPrefix = 2ull << 32;

__global__ void chunk_id_kernel(const bool* mask, int64_t total, int32_t* chunk_id,
                                unsigned long long* status, unsigned int* tile_counter) {
    __shared__ unsigned int tile_shared;
    __shared__ int warp_counts[kWarps];
    __shared__ int exclusive_shared;
    if (threadIdx.x == 0) tile_shared = atomicAdd(tile_counter, 1u);
    __syncthreads();
    const int64_t tile = tile_shared;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t base = tile * kTile;

    int local[kRounds];  // inclusive count of boundaries within the tile, per round
    int running = 0;     // boundaries in the tile's earlier rounds
    for (int r = 0; r < kRounds; ++r) {
        const int64_t t = base + r * kThreads + threadIdx.x;
        const bool flag = t < total && mask[t];
        const unsigned ballot = __ballot_sync(0xffffffffu, flag);
        if (lane == 0) warp_counts[warp] = __popc(ballot);
        __syncthreads();
        int before = 0, round_total = 0;
        for (int w = 0; w < kWarps; ++w) {
            before += w < warp ? warp_counts[w] : 0;
            round_total += warp_counts[w];
        }
        local[r] = running + before + __popc(ballot & ((1u << lane) - 1u)) + (flag ? 1 : 0);
        running += round_total;
        __syncthreads();  // warp_counts is rewritten by the next round
    }

    if (threadIdx.x == 0) {
        int exclusive = 0;
        if (tile == 0) {
            atomicExch(&status[0], kHasPrefix | static_cast<unsigned>(running));
        } else {
            atomicExch(&status[tile], kHasCount | static_cast<unsigned>(running));
            for (int64_t i = tile - 1; i >= 0; --i) {
                unsigned long long word;
                do {
                    word = atomicAdd(&status[i], 0ull);  // an atomic read, coherent in L2
                } while ((word >> 32) == 0);
                exclusive += static_cast<int>(word & 0xffffffffull);
                if ((word >> 32) == 2) break;
            }
            atomicExch(&status[tile], kHasPrefix | static_cast<unsigned>(exclusive + running));
        }
        exclusive_shared = exclusive;
    }
    __syncthreads();
    for (int r = 0; r < kRounds; ++r) {
        const int64_t t = base + r * kThreads + threadIdx.x;
        if (t < total) chunk_id[t] = exclusive_shared + local[r] - 1;
    }
}

__global__ void chunk_offsets_kernel(const int32_t* cu, int64_t n_offsets, const int32_t* chunk_id,
                                     int32_t* chunk_cu) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n_offsets) return;
    const int32_t offset = cu[i];
    chunk_cu[i] = offset > 0 ? chunk_id[offset - 1] + 1 : 0;
}

}  // namespace

void chunk_index(uintptr_t mask, uintptr_t cu, int64_t nseq, int64_t total, uintptr_t chunk_id,
                 uintptr_t chunk_cu, uintptr_t stream_addr) {
    const char* op = "routing_chunk_index";
    cudaStream_t stream = as_stream(stream_addr);
    const int64_t tiles = ceil_div(total, kTile);
    if (tiles > 0) {
        // status words of the tiles, then the tile counter
        StreamScratch scratch((tiles + 1) * sizeof(unsigned long long), stream, op);
        unsigned long long* status = scratch.as<unsigned long long>();
        check(cudaMemsetAsync(status, 0, (tiles + 1) * sizeof(unsigned long long), stream), op);
        chunk_id_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(
            ptr<const bool>(mask), total, ptr<int32_t>(chunk_id), status,
            reinterpret_cast<unsigned int*>(status + tiles));
        check_launch(op);
    }
    const int64_t n_offsets = nseq + 1;
    chunk_offsets_kernel<<<static_cast<unsigned>(ceil_div(n_offsets, 256)), 256, 0, stream>>>(
        ptr<const int32_t>(cu), n_offsets, ptr<const int32_t>(chunk_id), ptr<int32_t>(chunk_cu));
    check_launch(op);
}

void compact_rows(uintptr_t x, uintptr_t mask, uintptr_t chunk_id, int64_t total,
                  int64_t num_chunks, int64_t row_bytes, uintptr_t out, uintptr_t stream) {
    copy_rows(x, out, total, row_bytes, 0, false, total, chunk_id, false, num_chunks, mask,
              false, stream);
}

}  // namespace routing_cuda
}  // namespace mmhnet
