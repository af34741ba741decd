// Prefetch lists for the CPU scans: the cache lines of the rows the next piece of work reads
// and writes, handed to rank1_scan_block, which issues them spread over its steps.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_rank1_scan.h"
#include "cpu_scan_operands.h"
#include "scan_params.h"

namespace mmhnet {
namespace cpu {

// The cache lines a block should prefetch for the next piece of work (Prefetches).
class PrefetchList {
  public:
    void clear() {
        read_.clear();
        write_.clear();
    }

    // The rows of steps [k_first, k_first + count) (clipped to the order) of a tensor.
    template <typename T>
    void rows(const Rows<T>& r, const Order& o, int64_t k_first, int64_t count, int64_t inner, bool write) {
        if (!r.present()) return;
        std::vector<const void*>& dst = write ? write_ : read_;
        const int64_t end = std::min(k_first + count, o.len);
        for (int64_t k = std::max<int64_t>(k_first, 0); k < end; ++k) {
            const T* row = r.row(o.token(k));
            if (r.inner_stride == 1) {
                const auto first = reinterpret_cast<uintptr_t>(row) / 64;
                const auto last = (reinterpret_cast<uintptr_t>(row + inner) - 1) / 64;
                for (uintptr_t line = first; line <= last; ++line) dst.push_back(reinterpret_cast<const void*>(line * 64));
            } else {
                for (int64_t i = 0; i < inner; ++i) dst.push_back(row + i * r.inner_stride);
            }
        }
    }

    Prefetches get() const {
        Prefetches p;
        p.read = read_.data();
        p.nread = static_cast<int64_t>(read_.size());
        p.write = write_.data();
        p.nwrite = static_cast<int64_t>(write_.size());
        return p;
    }

  private:
    std::vector<const void*> read_, write_;
};

// The next piece of work after (head hl, block [k0, k0 + nb)) when a unit's heads advance block by
// block.
struct NextWork {
    int64_t hl, k0;
    bool new_block;

    NextWork(int64_t hl_now, int64_t k0_now, int64_t nb_now, int64_t nh) {
        new_block = hl_now + 1 == nh;
        hl = new_block ? 0 : hl_now + 1;
        k0 = new_block ? k0_now + nb_now : k0_now;
    }
};

// Prefetch the B and C rows of a block for the groups of a unit.
template <typename T>
inline void prefetch_bc_rows(PrefetchList& pf, const ScanParams& P, const Unit& u, const Order& o, bool rev,
                             int64_t k0) {
    const int64_t g0 = P.group_of(u.h0), g1 = P.group_of(u.h0 + u.nh - 1);
    for (int64_t g = g0; g <= g1; ++g) {
        const HeadParams<T> hp(P, u.b, g * (P.nheads / P.ngroups), rev);
        pf.rows(hp.B, o, k0, kBlockSteps, P.dstate, false);
        pf.rows(hp.C, o, k0, kBlockSteps, P.dstate, false);
    }
}

}  // namespace cpu
}  // namespace mmhnet
