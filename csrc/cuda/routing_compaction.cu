// Compaction on CUDA: chunk_id from the boundary mask in a single pass, chunk_cu_seqlens, and the
// copy of the boundary rows; and the fused kernel that computes p and the mask and compacts them
// in the same pass (route_index).
//
// chunk_id[t] = (boundaries at or before t) - 1. Each block takes the next tile of tokens (tile
// numbers come from an atomic counter, in the order blocks start, so a block only ever waits for
// blocks that are already running). Inside a tile, a warp ballot counts each warp's boundaries
// and the counts of the block's warps are prefix-summed in shared memory. Across tiles, a
// decoupled look-back: a tile publishes its count at once, and its inclusive prefix once known; a
// later tile sums the counts it finds going back until it meets a published prefix.
#include "cuda/routing_kernels.h"
#include "cuda/routing_pairs.cuh"

namespace mmhnet {
namespace routing_cuda {
namespace {

// A tile's status word: flag in the high half, count in the low half.
constexpr unsigned long long kHasCount = 1ull << 32;
constexpr unsigned long long kHasPrefix = 2ull << 32;

// The block's tile number, in the order blocks start. Every thread must call it.
__device__ int64_t claim_tile(unsigned int* tile_counter, unsigned int& tile_shared) {
    if (threadIdx.x == 0) tile_shared = atomicAdd(tile_counter, 1u);
    __syncthreads();
    return tile_shared;
}

// Count of the true flags of threads 0..threadIdx.x of the block (inclusive); block_total gets
// the block's count. Every thread of the block (kWarps full warps) must call it.
template <int kWarps>
__device__ int block_inclusive_count(bool flag, int* warp_counts, int& block_total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned ballot = __ballot_sync(0xffffffffu, flag);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, all = 0;
    for (int w = 0; w < kWarps; ++w) {
        before += w < warp ? warp_counts[w] : 0;
        all += warp_counts[w];
    }
    __syncthreads();  // warp_counts is rewritten by the next call
    block_total = all;
    return before + __popc(ballot & ((1u << lane) - 1u)) + (flag ? 1 : 0);
}

// The decoupled look-back, run by one thread per tile: returns the number of boundaries in the
// tiles before ``tile``, and publishes the tile's own count and then its inclusive prefix.
__device__ int tile_exclusive_prefix(int64_t tile, int count, unsigned long long* status) {
    if (tile == 0) {
        atomicExch(&status[0], kHasPrefix | static_cast<unsigned>(count));
        return 0;
    }
    atomicExch(&status[tile], kHasCount | static_cast<unsigned>(count));
    int exclusive = 0;
    for (int64_t i = tile - 1; i >= 0; --i) {
        unsigned long long word;
        do {
            word = atomicAdd(&status[i], 0ull);  // an atomic read, coherent in L2
        } while ((word >> 32) == 0);
        exclusive += static_cast<int>(word & 0xffffffffull);
        if ((word >> 32) == 2) break;
    }
    atomicExch(&status[tile], kHasPrefix | static_cast<unsigned>(exclusive + count));
    return exclusive;
}

// chunk_index: kRounds rounds of one token per thread.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRounds = 4;
constexpr int kTile = kThreads * kRounds;

__global__ void chunk_id_kernel(const bool* mask, int64_t total, int32_t* chunk_id,
                                unsigned long long* status, unsigned int* tile_counter) {
    __shared__ unsigned int tile_shared;
    __shared__ int warp_counts[kWarps];
    __shared__ int exclusive_shared;
    const int64_t tile = claim_tile(tile_counter, tile_shared);
    const int64_t base = tile * kTile;

    int local[kRounds];  // inclusive count of boundaries within the tile, per round
    int running = 0;     // boundaries in the tile's earlier rounds
    for (int r = 0; r < kRounds; ++r) {
        const int64_t t = base + r * kThreads + threadIdx.x;
        int round_total;
        local[r] = running + block_inclusive_count<kWarps>(t < total && mask[t], warp_counts,
                                                           round_total);
        running += round_total;
    }
    if (threadIdx.x == 0) exclusive_shared = tile_exclusive_prefix(tile, running, status);
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

// route_index: each warp computes p for kTokensPerWarp consecutive tokens (one warp-reduced
// cosine each, as the boundary kernel), then the block scans the tile's kRouteTile flags. The
// tile is small so that short inputs still spread over many warps.
constexpr int kRouteWarps = 8;
constexpr int kTokensPerWarp = 8;
constexpr int kRouteTile = kRouteWarps * kTokensPerWarp;
static_assert(kRouteTile <= kRouteWarps * 32, "one flag per thread in the tile scan");

// The first i in [0, nseq] with cu[i] > value (nseq + 1 if none).
__device__ int64_t first_offset_above(const int32_t* cu, int64_t nseq, int64_t value) {
    int64_t lo = 0, hi = nseq + 1;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (cu[mid] > value)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

template <class T>
__global__ void route_index_kernel(const T* q, const T* k, const int32_t* cu, int64_t nseq,
                                   int64_t total, int64_t dim, compute_t<T>* p, bool* mask,
                                   int32_t* chunk_id, int32_t* chunk_cu,
                                   unsigned long long* status, unsigned int* tile_counter) {
    using C = compute_t<T>;
    __shared__ unsigned int tile_shared;
    __shared__ bool flags[kRouteTile];
    __shared__ int32_t ids[kRouteTile];
    __shared__ int warp_counts[kRouteWarps];
    __shared__ int exclusive_shared;
    const int64_t tile = claim_tile(tile_counter, tile_shared);
    const int64_t base = tile * kRouteTile;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    for (int i = 0; i < kTokensPerWarp; ++i) {
        const int j = warp * kTokensPerWarp + i;
        const int64_t t = base + j;
        bool flag = false;
        if (t < total) {  // uniform across the warp
            const C pt = boundary_probability(q, k, cu, nseq, t, dim);
            flag = pt > C(0.5);
            if (lane == 0) {
                p[t] = pt;
                mask[t] = flag;
            }
        }
        if (lane == 0) flags[j] = flag;
    }
    __syncthreads();

    int count;
    const int local = block_inclusive_count<kRouteWarps>(
        threadIdx.x < kRouteTile && flags[threadIdx.x], warp_counts, count);
    if (threadIdx.x == 0) exclusive_shared = tile_exclusive_prefix(tile, count, status);
    __syncthreads();
    if (threadIdx.x < kRouteTile) {
        const int32_t id = exclusive_shared + local - 1;
        ids[threadIdx.x] = id;
        if (base + threadIdx.x < total) chunk_id[base + threadIdx.x] = id;
    }
    __syncthreads();

    // chunk_cu[i] = chunk_id[cu[i] - 1] + 1 for the offsets whose token cu[i] - 1 lies in this
    // tile; the offsets equal to 0 (0 chunks before them) are tile 0's.
    const int64_t end = min(base + kRouteTile, total);
    const int64_t first = tile == 0 ? 0 : first_offset_above(cu, nseq, base);
    for (int64_t i = first + threadIdx.x; i <= nseq && cu[i] <= end; i += blockDim.x)
        chunk_cu[i] = cu[i] > 0 ? ids[cu[i] - 1 - base] + 1 : 0;
}

// Zeroed status words of ``tiles`` tiles followed by the tile counter.
class TileStatus {
  public:
    TileStatus(int64_t tiles, cudaStream_t stream, const char* op)
        : tiles_(tiles), scratch_((tiles + 1) * sizeof(unsigned long long), stream, op) {
        check(cudaMemsetAsync(words(), 0, (tiles + 1) * sizeof(unsigned long long), stream), op);
    }
    unsigned long long* words() const { return scratch_.as<unsigned long long>(); }
    unsigned int* counter() const { return reinterpret_cast<unsigned int*>(words() + tiles_); }

  private:
    int64_t tiles_;
    StreamScratch scratch_;
};

}  // namespace

void chunk_index(uintptr_t mask, uintptr_t cu, int64_t nseq, int64_t total, uintptr_t chunk_id,
                 uintptr_t chunk_cu, uintptr_t stream_addr) {
    const char* op = "routing_chunk_index";
    cudaStream_t stream = as_stream(stream_addr);
    const int64_t tiles = ceil_div(total, kTile);
    if (tiles > 0) {
        TileStatus status(tiles, stream, op);
        chunk_id_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(
            ptr<const bool>(mask), total, ptr<int32_t>(chunk_id), status.words(),
            status.counter());
        check_launch(op);
    }
    const int64_t n_offsets = nseq + 1;
    chunk_offsets_kernel<<<static_cast<unsigned>(ceil_div(n_offsets, 256)), 256, 0, stream>>>(
        ptr<const int32_t>(cu), n_offsets, ptr<const int32_t>(chunk_id), ptr<int32_t>(chunk_cu));
    check_launch(op);
}

void route_index(uintptr_t q, uintptr_t k, uintptr_t cu, int64_t nseq, int64_t total, int64_t dim,
                 int dtype, uintptr_t p, uintptr_t mask, uintptr_t chunk_id, uintptr_t chunk_cu,
                 uintptr_t stream_addr) {
    const char* op = "routing_route_index";
    cudaStream_t stream = as_stream(stream_addr);
    if (total == 0) {  // every offset is 0, and so is every chunk offset
        check(cudaMemsetAsync(ptr<int32_t>(chunk_cu), 0, (nseq + 1) * sizeof(int32_t), stream), op);
        return;
    }
    const int64_t tiles = ceil_div(total, kRouteTile);
    TileStatus status(tiles, stream, op);
    dispatch(dtype, op, [&](auto tag) {
        using T = decltype(tag);
        route_index_kernel<T><<<static_cast<unsigned>(tiles), kRouteWarps * 32, 0, stream>>>(
            ptr<const T>(q), ptr<const T>(k), ptr<const int32_t>(cu), nseq, total, dim,
            ptr<compute_t<T>>(p), ptr<bool>(mask), ptr<int32_t>(chunk_id), ptr<int32_t>(chunk_cu),
            status.words(), status.counter());
    });
    check_launch(op);
}

void compact_rows(uintptr_t x, uintptr_t mask, uintptr_t chunk_id, int64_t total,
                  int64_t num_chunks, int64_t row_bytes, uintptr_t out, uintptr_t stream) {
    copy_rows(x, out, total, row_bytes, 0, false, total, chunk_id, false, num_chunks, mask,
              false, stream);
}

}  // namespace routing_cuda
}  // namespace mmhnet
