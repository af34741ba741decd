// Units of work of the CPU scans and the parallel loop over them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>

#include "scan_params.h"

namespace mmhnet {
namespace cpu {

// A unit of work: heads [h0, h0 + nh) of one sequence of one batch row, token range
// [begin, begin + len). The heads of a unit advance block by block together, so each token's
// rows for these heads (adjacent in memory) are read and written together: one page of a
// (b, l, h, p) tensor per token, instead of one per token and head. Each head's arithmetic does
// not depend on the grouping, so results do not depend on the number of threads.
struct Unit {
    int64_t b, seq, row, h0, nh;  // row = b * nseq + seq: index into the per-row partial sums
    int64_t begin, len;
};

// Units: about two per thread (for balance), and few enough heads per unit that its scratch
// (bytes_per_head_token per head and token of the longest sequence) stays under kUnitScratch.
class UnitPlan {
  public:
    static constexpr int64_t kUnitScratch = int64_t(64) << 20;

    UnitPlan(const ScanParams& P, int threads, int64_t bytes_per_head_token) : P_(P) {
        const int64_t rows = P.batch * P.nseq;
        int64_t longest = P.seqlen;
        if (P.cu_seqlens) {
            longest = 0;
            for (int64_t s = 0; s < P.nseq; ++s) longest = std::max<int64_t>(longest, P.cu_seqlens[s + 1] - P.cu_seqlens[s]);
        }
        const int64_t fit = std::max<int64_t>(1, kUnitScratch / std::max<int64_t>(1, longest * bytes_per_head_token));
        const int64_t want = std::max<int64_t>(1, (2 * threads + rows - 1) / rows);  // units per row
        const int64_t per_row = std::max(std::min<int64_t>(P.nheads, want), (P.nheads + fit - 1) / fit);
        heads_ = (P.nheads + per_row - 1) / per_row;
        per_row_ = (P.nheads + heads_ - 1) / heads_;
    }

    int64_t size() const { return P_.batch * P_.nseq * per_row_; }

    Unit unit(int64_t id) const {
        Unit u;
        u.row = id / per_row_;
        u.h0 = (id % per_row_) * heads_;
        u.nh = std::min(heads_, P_.nheads - u.h0);
        u.seq = u.row % P_.nseq;
        u.b = u.row / P_.nseq;
        u.begin = P_.cu_seqlens ? P_.cu_seqlens[u.seq] : 0;
        u.len = P_.cu_seqlens ? P_.cu_seqlens[u.seq + 1] - u.begin : P_.seqlen;
        return u;
    }

  private:
    const ScanParams& P_;
    int64_t heads_, per_row_;
};

// Runs body(i) for i in [0, n) over the OpenMP threads, dynamically scheduled. The first
// exception thrown by a body is rethrown here, after the loop (none escapes the parallel region).
template <typename Body>
void parallel_for(int64_t n, Body body) {
    std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) {
        try {
            body(i);
        } catch (...) {
#pragma omp critical(mmhnet_scan_error)
            if (!error) error = std::current_exception();
        }
    }
    if (error) std::rethrow_exception(error);
}

}  // namespace cpu
}  // namespace mmhnet
