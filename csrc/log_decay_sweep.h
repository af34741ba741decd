// The gradient of the log-decays from the backward's per-step terms, shared by the CPU and CUDA
// scans (maths: scan_params.h). Per head and direction, in processing order k = 0 .. n-1:
//     g_k = g(log a_k) = sum_{k' >= k} dlog_k',   dlog_k = C_k.dC'_k - B_k.dB'_k,
// dC' and dB' without the step's own term, which cancels (scan_params.h).
// g is known exactly at k = n (0: no later step), at each anchor (an inner product of states),
// at k = 0 (0: the state before the first step is zero) and, in quasiseparable mode, at k = n-1
// (0: the last state feeds no output). Between two such points, hi above and lo below, the
// running sum taken down from hi drifts by the rounding errors of its terms; the drift it shows
// at lo is taken off in proportion to the terms summed, its expected share at each step for
// independent errors. g is then exact at both ends of every stretch: a sequence of one step
// gets g = 0 and dA = 0 exactly. Against plain restarts at the anchors this halves the float32
// error of dA and dt_bias on random inputs (benchmarks/RESULTS.md, "Scan gradient precision").
#pragma once

#include <cstdint>

#include "scan_params.h"

namespace mmhnet {

// dlog(k) -> double; anchor(k, value) -> true and the exact g_k for an anchor step k > 0, else
// false; visit(k, g_k) is called for k = n-1 down to 0.
template <typename Dlog, typename Anchor, typename Visit>
MMHNET_HOST_DEVICE inline void sweep_log_decay(int64_t n, bool quasi, const Dlog& dlog, const Anchor& anchor,
                                               const Visit& visit) {
    double g_hi = 0.0;
    for (int64_t hi = n; hi > 0;) {
        int64_t lo = hi - 1;
        double sum = 0.0, exact = 0.0;
        for (;; --lo) {
            sum += dlog(lo);
            if (lo == 0 || (quasi && lo == n - 1) || anchor(lo, exact)) break;
        }
        const double drift = (g_hi + sum - exact) / double(hi - lo);
        double run = g_hi;
        for (int64_t k = hi - 1; k > lo; --k) {
            run += dlog(k);
            visit(k, run - drift * double(hi - k));
        }
        visit(lo, exact);
        g_hi = exact;
        hi = lo;
    }
}

}  // namespace mmhnet
