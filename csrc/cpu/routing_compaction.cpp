// Compaction on CPU: prefix sum of the boundary mask (chunk_id, chunk_cu_seqlens) and the copy of
// the boundary rows into x_chunks.
#include "cpu/routing_common.h"
#include "cpu/routing_kernels.h"

namespace mmhnet {
namespace routing {

void chunk_index(uintptr_t mask_addr, uintptr_t cu_addr, int64_t nseq, int64_t total,
                 uintptr_t chunk_id_addr, uintptr_t chunk_cu_addr) {
    const uint8_t* mask = ptr<const uint8_t>(mask_addr);
    const int32_t* cu = ptr<const int32_t>(cu_addr);
    int32_t* chunk_id = ptr<int32_t>(chunk_id_addr);
    int32_t* chunk_cu = ptr<int32_t>(chunk_cu_addr);
    // a sequential scan: one pass over T bytes is cheaper than splitting it across threads
    int32_t seen = 0;
    for (int64_t t = 0; t < total; ++t) {
        seen += mask[t] != 0;
        chunk_id[t] = seen - 1;
    }
    for (int64_t s = 0; s <= nseq; ++s) chunk_cu[s] = cu[s] > 0 ? chunk_id[cu[s] - 1] + 1 : 0;
}

void compact_rows(uintptr_t x_addr, uintptr_t mask_addr, uintptr_t chunk_id_addr, int64_t total,
                  int64_t num_chunks, int64_t row_bytes, uintptr_t out_addr) {
    const char* x = ptr<const char>(x_addr);
    const uint8_t* mask = ptr<const uint8_t>(mask_addr);
    const int32_t* chunk_id = ptr<const int32_t>(chunk_id_addr);
    char* out = ptr<char>(out_addr);
    advise_huge_pages(out_addr, num_chunks * row_bytes);
    const bool stream = streams(num_chunks * row_bytes);
    // (work in elements of 4 bytes, as kMinParallelWork counts them)
    parallel_ranges(total, total * row_bytes / 4, [&](int64_t lo, int64_t hi) {
        for (int64_t t = lo; t < hi; ++t) {
            const int64_t c = chunk_id[t];
            if (mask[t] && c >= 0 && c < num_chunks)
                write_bytes(out + c * row_bytes, x + t * row_bytes, row_bytes, stream);
        }
    });
}

}  // namespace routing
}  // namespace mmhnet
